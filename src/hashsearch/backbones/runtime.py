"""Feature extractors: a backbone run by an inference runtime, behind one interface.

`FeatureExtractor` is what the pipeline and the query path call: ``extract(pixels) -> features``
on the uint8 crops of `Preprocess.crop`, with `feature_dim` and the feature-cache key
`cache_key`. Two runtimes implement it: `OnnxExtractor` (ONNX Runtime, fp32 or int8; the
default) and `TorchExtractor` (the backbone's PyTorch module, the reference and the fallback).
Training fine-tunes the PyTorch module; extraction only runs it forward, and ONNX Runtime does
that several times faster on a CPU. `make_extractor(backbone, runtime="onnx")` exports the
backbone's PyTorch module to ONNX once per (backbone, weights sha256, resolution), caches the
file under ``<cache>/onnx/``, and checks the export against PyTorch on the first real images it
extracts (the max abs difference is logged and must be below `EXPORT_TOLERANCE`). If onnxruntime
cannot be imported, one `RuntimeFallbackWarning` says so and PyTorch extracts instead.

Feature-cache keys. fp32 ONNX and PyTorch compute the same function in the same precision; the
export check bounds their difference on real images by `EXPORT_TOLERANCE`, well below the float16
spacing in which a collection stores its features, so they share `Backbone.cache_key`. int8 features differ by far more (quantization error ~1e-2), so an int8
extractor's key adds ``-int8-<digest of the calibration images and onnxruntime version>``: int8
features never mix with fp32 ones, nor with those of another calibration set.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

import numpy as np

from hashsearch.backbones.base import Backbone, Preprocess

log = logging.getLogger(__name__)

#: Largest max abs difference allowed between ONNX and PyTorch features at export.
EXPORT_TOLERANCE = 1e-4
#: ONNX opset used for export (the TorchScript exporter; no onnxscript needed).
OPSET = 17
#: The input name of `pixel_input_model`'s front: (n, s, s, 3) uint8 crops.
PIXELS = "pixels"
#: The runtimes `make_extractor` accepts.
RUNTIMES = ("onnx", "torch")
#: Default number of calibration images for int8 static quantization.
DEFAULT_CALIBRATION = 256


class RuntimeFallbackWarning(UserWarning):
    """ONNX Runtime was asked for but cannot be used; PyTorch extracts instead."""


_warned_fallback = False


def onnxruntime_available() -> str | None:
    """None if onnxruntime imports; otherwise why not (for the fallback warning)."""
    try:
        import onnxruntime  # noqa: F401
    except Exception as e:  # ImportError, or OSError from a missing shared library
        return f"{type(e).__name__}: {e}"
    return None


class FeatureExtractor:
    """Pixels -> features: one backbone run by one inference runtime.

    Subclasses implement `extract` (and `forward`); the pipeline, `Collection.extractor` and the
    service call only what is defined here.

    Attributes
    ----------
    runtime : str
        "onnx" or "torch".
    backbone : Backbone
        The network whose features these are.
    preprocess : Preprocess
        The backbone's preprocessing; `extract` takes the uint8 crops of `preprocess.crop`.
    feature_dim : int
        Length of each feature vector.
    cache_key : str
        Names the features it makes in the feature cache: same key, same features
        (`Backbone.cache_key`, plus the int8 model's tag for an int8 extractor).
    int8 : bool
        Whether it runs an int8-quantized model (`int8_model` names the file).
    portable : bool
        Whether `worker_model` gives a model that other processes (worker processes, Ray
        actors) can run; False keeps inference in the process that holds the extractor.
    """

    runtime: ClassVar[str] = "?"
    portable: ClassVar[bool] = False
    int8: bool = False
    backbone: Backbone
    preprocess: Preprocess
    feature_dim: int
    cache_key: str

    def extract(self, pixels: np.ndarray) -> np.ndarray:  # pragma: no cover - every runtime overrides
        """Features of (n, s, s, 3) uint8 crops (`Preprocess.crop`) as (n, feature_dim) float32."""
        raise NotImplementedError

    def forward(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - every runtime overrides
        """Features of a preprocessed (n, 3, s, s) float32 batch as (n, feature_dim) float32."""
        raise NotImplementedError

    @property
    def ready(self) -> bool:
        """Whether `extract` and `worker_model` can run without sample images first (an ONNX
        model not yet exported needs a few real crops to check its export against PyTorch)."""
        return True

    @property
    def int8_model(self) -> Path | None:
        """The int8 model file this extractor runs (None unless `int8`)."""
        return None

    def worker_model(self, check_pixels: np.ndarray | None = None) -> bytes | None:
        """The model for inference in another process on uint8 crops (`portable` runtimes), or
        None. `check_pixels`: a few real (n, s, s, 3) uint8 crops, needed when not `ready`."""
        return None

    def describe(self) -> str:  # pragma: no cover - every runtime overrides
        """One line: backbone, input size, runtime."""
        raise NotImplementedError


class TorchExtractor(FeatureExtractor):
    """Extract with the backbone's PyTorch module (the reference; used for training too)."""

    runtime = "torch"

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone
        self.preprocess = backbone.preprocess
        self.feature_dim = backbone.feature_dim
        self.cache_key = backbone.cache_key

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Features of a preprocessed (n, 3, s, s) float32 batch."""
        return self.backbone.forward(batch)

    def extract(self, pixels: np.ndarray) -> np.ndarray:
        """Features of (n, s, s, 3) uint8 crops (`Preprocess.crop`), normalised here."""
        return self.forward(self.preprocess.normalize(pixels))

    def describe(self) -> str:
        return f"{self.backbone.name} {self.preprocess.input_size}px on PyTorch"


class OnnxExtractor(FeatureExtractor):
    """Extract with ONNX Runtime from an exported (and optionally int8-quantized) ONNX file.

    Parameters
    ----------
    backbone : Backbone
        The network to export.
    cache_dir : path, optional
        The hashsearch cache folder; ONNX files go to ``<cache_dir>/onnx``.
    threads : int, optional
        ONNX Runtime intra-op threads (default: its own choice, all cores).
    """

    runtime = "onnx"
    portable = True

    def __init__(self, backbone: Backbone, cache_dir: str | Path | None = None, threads: int | None = None) -> None:
        from hashsearch.paths import cache_dir as default_cache_dir

        self.backbone = backbone
        self.preprocess = backbone.preprocess
        self.feature_dim = backbone.feature_dim
        self.threads = threads
        self.folder = Path(cache_dir or default_cache_dir()) / "onnx"
        self.int8 = False
        self.cache_key = backbone.cache_key
        self._session = None  # on uint8 crops (`extract`)
        self._float_session = None  # on normalised float batches (`forward`)
        self._model_path = self.folder / f"{backbone.cache_key}-opset{OPSET}.onnx"
        self.max_abs_diff: float | None = None

    # -- export -------------------------------------------------------------------------------
    @property
    def fp32_path(self) -> Path:
        """Where the fp32 ONNX file of this backbone is cached."""
        return self.folder / f"{self.backbone.cache_key}-opset{OPSET}.onnx"

    def export(self, check_batch: np.ndarray) -> Path:
        """Export to ONNX (if not cached) and check it against PyTorch on `check_batch`.

        `check_batch` is a few real preprocessed images; the max abs difference is logged and
        a difference above `EXPORT_TOLERANCE` raises (the file is then not kept).
        """
        path = self.fp32_path
        if path.exists():
            return path
        import torch

        self.folder.mkdir(parents=True, exist_ok=True)
        # A fresh module: the cached one may hold tensors made under inference_mode, which
        # the tracer cannot use.
        module = self.backbone.torch_module().eval()
        x = torch.from_numpy(np.ascontiguousarray(check_batch[:4], np.float32))
        buf = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's tracer chatter
            torch.onnx.export(
                module,
                x,
                buf,
                input_names=["images"],
                output_names=["features"],
                dynamic_axes={"images": {0: "n"}, "features": {0: "n"}},
                opset_version=OPSET,
                dynamo=False,
            )
        model = buf.getvalue()
        session = onnx_session(model, self.threads)
        got = session.run(None, {"images": x.numpy()})[0]
        want = self.backbone.forward(x.numpy())
        diff = float(np.abs(got - want).max())
        self.max_abs_diff = diff
        msg = (
            f"exported {self.backbone.cache_key} to ONNX: max abs difference from PyTorch on "
            f"{len(x)} real images = {diff:.2e} (tolerance {EXPORT_TOLERANCE:.0e})"
        )
        log.info(msg)
        print(msg, file=sys.stderr)  # stderr: `hashsearch search --json` prints only JSON
        if not diff < EXPORT_TOLERANCE:
            raise RuntimeError(msg + "; the export is wrong, use runtime='torch'")
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(model)
        tmp.replace(path)  # atomic: concurrent exporters never see half a file
        return path

    # -- int8 ---------------------------------------------------------------------------------
    def quantize(self, calibration: np.ndarray, calibration_id: str) -> Path:
        """Switch to an int8 model made by static quantization calibrated on `calibration`.

        `calibration` holds preprocessed images of the user's own collection; `calibration_id`
        names them (a digest of their content), so that the int8 file and the feature-cache key
        change when the calibration set does.
        """
        import onnxruntime
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        if len(calibration) == 0:
            raise ValueError("int8 quantization needs at least one calibration image, got 0")
        fp32 = self.export(calibration[:4])
        tag = hashlib.sha256(f"{calibration_id}|ort{onnxruntime.__version__}|rr".encode()).hexdigest()[:12]
        key = f"{self.backbone.cache_key}-int8-{tag}"
        path = self.folder / f"{key}.onnx"  # `<key>.onnx`: a collection reads the key back from the name
        if not path.exists():
            pre = self.folder / f"{key}.pre{os.getpid()}.onnx"
            tmp = self.folder / f"{key}.tmp{os.getpid()}.onnx"
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)

            class Reader(CalibrationDataReader):
                def __init__(self, data: np.ndarray, batch: int = 16) -> None:
                    self.batches = iter([data[i : i + batch] for i in range(0, len(data), batch)])

                def get_next(self):
                    b = next(self.batches, None)
                    return None if b is None else {"images": np.ascontiguousarray(b, np.float32)}

            quantize_static(
                str(pre),
                str(tmp),
                Reader(calibration),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                # 7-bit weights: u8 x s8 products saturate on AVX2 CPUs without VNNI (seen
                # here: feature cosine to fp32 fell to 0.56 without it).
                reduce_range=True,
            )
            tmp.replace(path)
            pre.unlink(missing_ok=True)
        return self.use_int8_model(path, key)

    def use_int8_model(self, path: str | Path, key: str) -> Path:
        """Switch to the int8 model in `path`, whose features are cached under `key` (what
        `quantize` made; a collection built with int8 keeps a copy, so that the features of its
        queries and additions are extracted by the same model: see `Collection.extractor`)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"int8 ONNX model {path} is missing; restore it, or rebuild with int8")
        self._model_path = path
        self.int8 = True
        self.cache_key = key
        self._session = self._float_session = None
        return path

    @property
    def model_path(self) -> Path:
        """The ONNX file this extractor runs (the fp32 export, or the int8 model)."""
        return self._model_path

    @property
    def int8_model(self) -> Path | None:
        """The int8 model file this extractor runs (None unless `int8`)."""
        return self._model_path if self.int8 else None

    # -- inference ----------------------------------------------------------------------------
    @property
    def exported(self) -> bool:
        """Whether the model this extractor runs is on disk (else the first `extract` exports it)."""
        return self._model_path.exists()

    @property
    def ready(self) -> bool:
        """Whether the model is exported (else `extract` and `worker_model` export it on real crops)."""
        return self.exported

    def model_bytes(self, check_batch: np.ndarray | None = None) -> bytes:
        """The ONNX model this extractor runs (exported on `check_batch` if not yet)."""
        if not self.exported:
            if check_batch is None:
                raise RuntimeError("the ONNX file is not exported yet: pass real images in check_batch")
            self.export(check_batch)
        return self._model_path.read_bytes()

    def pixel_model_bytes(self, check_pixels: np.ndarray | None = None) -> bytes:
        """The model behind a front that takes uint8 crops (`pixel_input_model`); exported on
        `check_pixels` (a few real crops) if not yet."""
        check = None if check_pixels is None else self.preprocess.normalize(check_pixels[:4])
        return pixel_input_model(self.model_bytes(check), self.preprocess)

    def worker_model(self, check_pixels: np.ndarray | None = None) -> bytes:
        """`pixel_model_bytes`: the model on uint8 crops, for sessions in other processes."""
        return self.pixel_model_bytes(check_pixels)

    def extract(self, pixels: np.ndarray) -> np.ndarray:
        """Features of (n, s, s, 3) uint8 crops (`Preprocess.crop`), normalised inside the graph
        (exports on first use). What the pipelines run: the same features as
        ``forward(preprocess.normalize(pixels))``, bit for bit, in less time."""
        if self._session is None:
            self._session = onnx_session(self.pixel_model_bytes(pixels), self.threads)
        out = self._session.run(None, {PIXELS: np.ascontiguousarray(pixels, np.uint8)})[0]
        return out.astype(np.float32, copy=False)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Features of a preprocessed (n, 3, s, s) float32 batch (exports on first use)."""
        if self._float_session is None:
            self._float_session = onnx_session(self.model_bytes(batch), self.threads)
        out = self._float_session.run(None, {"images": np.ascontiguousarray(batch, np.float32)})[0]
        return out.astype(np.float32, copy=False)

    def describe(self) -> str:
        kind = "int8" if self.int8 else "fp32"
        return f"{self.backbone.name} {self.preprocess.input_size}px on ONNX Runtime {kind}"


def pixel_input_model(model: bytes, preprocess: Preprocess) -> bytes:
    """`model` (input "images": normalised (n, 3, s, s) float32) behind a front that takes the
    uint8 crops of `Preprocess.crop`, input `PIXELS` of shape (n, s, s, 3).

    The front is `Preprocess.normalize` as graph nodes: Transpose to channels first (in uint8),
    Cast, Mul by float32(1/255), Sub mean, Div std, the same float32 operations in the same order,
    so the features are bit-identical (tested). ONNX Runtime runs it on its own threads, inside the
    inference call, instead of a serial numpy pass in the process that runs inference. Works on
    the fp32 and the int8 model alike.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load_from_string(model)
    graph = m.graph
    (images,) = [i for i in graph.input if i.name == "images"]
    s = preprocess.input_size

    def per_channel(values, name):
        # One value for all three channels (EfficientNet's) as a scalar: ONNX Runtime moves the
        # front's transpose past these ops for an int8 model's channels-last convolutions, and
        # broadcasting over a last axis of 3 there is several times slower than a scalar.
        v = np.array(values, np.float32)
        return numpy_helper.from_array(v[0] if (v == v[0]).all() else v.reshape(1, 3, 1, 1), name)

    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(np.float32(1.0 / 255.0)), "pixels_scale"),
            per_channel(preprocess.mean, "pixels_mean"),
            per_channel(preprocess.std, "pixels_std"),
        ]
    )
    front = [
        helper.make_node("Transpose", [PIXELS], ["pixels_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", ["pixels_nchw"], ["pixels_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["pixels_float", "pixels_scale"], ["pixels_scaled"]),
        helper.make_node("Sub", ["pixels_scaled", "pixels_mean"], ["pixels_centred"]),
        helper.make_node("Div", ["pixels_centred", "pixels_std"], ["images"]),
    ]
    for node in reversed(front):
        graph.node.insert(0, node)
    graph.input.remove(images)
    graph.input.insert(0, helper.make_tensor_value_info(PIXELS, TensorProto.UINT8, ["n", s, s, 3]))
    return m.SerializeToString()


def onnx_session(model: bytes | str, threads: int | None):
    """An ONNX Runtime CPU session with full graph optimisation."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def make_extractor(
    backbone: Backbone,
    runtime: str = "onnx",
    *,
    cache_dir: str | Path | None = None,
    threads: int | None = None,
) -> FeatureExtractor:
    """The feature extractor for `backbone` on `runtime` ("onnx" or "torch").

    "onnx" falls back to PyTorch, with one RuntimeFallbackWarning per process, when
    onnxruntime cannot be imported. int8 is switched on afterwards with
    `OnnxExtractor.quantize` (see `hashsearch.pipeline.steps.calibrate`).
    """
    global _warned_fallback
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime == "onnx":
        why = onnxruntime_available()
        if why is None:
            return OnnxExtractor(backbone, cache_dir=cache_dir, threads=threads)
        if not _warned_fallback:
            warnings.warn(
                f"onnxruntime cannot be loaded ({why}); extracting features with PyTorch instead, which is "
                "several times slower. Install it with `pip install onnxruntime`, or pass "
                "runtime='torch' (--runtime torch) to silence this warning.",
                RuntimeFallbackWarning,
                stacklevel=2,
            )
            _warned_fallback = True
    return TorchExtractor(backbone)


def calibration_digest(digests: Iterable[str]) -> str:
    """A name for a calibration set: the sha256 of its images' content digests, sorted."""
    return hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()
