"""Option parsing and output helpers shared by the CLI commands (no logic of their own beyond parsing)."""

from __future__ import annotations

import typer

from hashsearch.backbones import DEFAULT_BACKBONE, create_backbone
from hashsearch.data.decode import DEFAULT_MAX_PIXELS
from hashsearch.data.sources import plural as plural  # re-exported: the commands import it from here
from hashsearch.data.sources import printable

#: Code lengths the commands accept, as the README states them.
MIN_BITS, MAX_BITS = 8, 128


def given(ctx: typer.Context, name: str) -> bool:
    """Whether the option `name` (its parameter name) was given on the command line or by environment,
    not left at its default."""
    src = ctx.get_parameter_source(name)
    return src is not None and src.name not in ("DEFAULT", "DEFAULT_MAP")


def split_list(value: str, cast=str) -> list:
    """'a,b, c' -> ['a', 'b', 'c'] (with `cast` applied); commas inside brackets stay,
    so 'itq,dfeh[lambda_q=0,lambda_b=0]' is two methods."""
    import re

    try:
        return [cast(v.strip()) for v in re.split(r",(?![^\[]*\])", value) if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected a comma-separated list, got {value!r}") from None


def check_bits(values: list[int], option: str = "--bits") -> list[int]:
    """Code lengths in [MIN_BITS, MAX_BITS], or a BadParameter naming the one that is not."""
    for b in values:
        if not MIN_BITS <= b <= MAX_BITS:
            raise typer.BadParameter(
                f"{option} {b}: code lengths from {MIN_BITS} to {MAX_BITS} bits are supported (e.g. 16, 32, 48, 64)"
            )
    return values


def bits_list(value: str) -> list[int]:
    """A comma-separated list of code lengths, each checked (`check_bits`)."""
    try:
        values = [int(v) for v in split_list(value)]
    except ValueError:
        raise typer.BadParameter(f"--bits expects comma-separated whole numbers, got {value!r}") from None
    return check_bits(values)


def make_backbone(name: str, input_size: int, weights: str | None):
    try:
        return create_backbone(name, input_size=input_size, weights=weights)
    except (ValueError, FileNotFoundError) as e:
        raise typer.BadParameter(str(e)) from None


def parse_spec(spec: str) -> tuple[str, dict]:
    """A method spec as `index`, `eval`, `bench` and `train` read it (`parse_method`): a registered
    name, optionally with parameters, ``itq`` or ``itq[n_iter=20]``, checked against the
    parameters the method takes; returns (name, parameters). n_bits and seed come from --bits and --seed.

    Raises
    ------
    ValueError
        An unknown method or a malformed spec (parse_method's message), n_bits or seed in the
        brackets, or a parameter the method does not take (the message lists those it takes).
    """
    import inspect

    from hashsearch.experiments.runner import parse_method
    from hashsearch.hashing import hashers

    name, params = parse_method(spec)
    takes = [p for p in inspect.signature(hashers.get(name)).parameters if p not in ("n_bits", "seed")]
    if set(params) & {"n_bits", "seed"}:
        raise ValueError(f"method spec {spec!r}: give the code length with --bits and the seed with --seed")
    if unknown := [k for k in params if k not in takes]:
        raise ValueError(
            f"method spec {spec!r}: {name} has no parameter {', '.join(unknown)}; "
            f"it takes {', '.join(takes) if takes else 'none besides --bits and --seed'}"
        )
    return name, params


def make_hasher(spec: str, bits: int, seed: int):
    """An unfitted hasher from a method spec as `hashsearch eval` and `bench` read them
    (`parse_spec`): a registered name, optionally with parameters, ``itq`` or ``dpsh[epochs=5]``;
    n_bits and seed come from --bits and --seed.

    Raises
    ------
    ValueError
        An unknown method or a malformed spec (parse_method's message, as eval gives it), a
        parameter the method does not take (the message lists those it takes), or a method that
        needs networks of its own (RITQ, DHFI: `Hasher.feature_backbones`), which only `train` trains.
    """
    from hashsearch.experiments.runner import parse_method
    from hashsearch.hashing import create_hasher, hashers

    name, _ = parse_method(spec)
    if nets := [n for n in hashers.get(name).feature_backbones if n is not None]:
        raise ValueError(
            f"--method {name} hashes features of a network of its own ({', '.join(nets)}), trained from "
            f"labelled images, which this command does not train: train a model with `hashsearch train "
            f"LABELLED_FOLDER --method {name} --out model.hsm`, then `hashsearch index SOURCE --model model.hsm`"
        )
    name, params = parse_spec(spec)
    return create_hasher(name, n_bits=bits, seed=seed, **params)


def show(name) -> str:
    """A file name or key as one readable line (bytes that are not UTF-8 as \\xNN, see `printable`)."""
    return printable(str(name))


BackboneOpt = typer.Option(DEFAULT_BACKBONE, "--backbone", help="Feature extractor (see `hashsearch list`).")
InputSizeOpt = typer.Option(128, "--input-size", help="Backbone input resolution in pixels.")
WeightsOpt = typer.Option(
    None, "--weights", help="A local weights file for the backbone (default: the packaged ImageNet weights)."
)
CacheOpt = typer.Option(
    None,
    "--cache-dir",
    help="Cache folder of features and exported ONNX models (default $HASHSEARCH_CACHE or ~/.cache/hashsearch).",
)
BatchOpt = typer.Option(64, "--batch-size", min=1, help="Images per backbone batch.")
MaxPixelsOpt = typer.Option(
    DEFAULT_MAX_PIXELS,
    "--max-pixels",
    min=1,
    help=f"Largest image decoded, in pixels (width x height; default {DEFAULT_MAX_PIXELS:,}); larger files are skipped and reported.",
)
LabelsOpt = typer.Option(
    "auto",
    "--labels",
    help="How images get labels: auto (class folders; a list file's own labels), folder (the first folder below "
    "the source: photos/cat/2023/x.jpg is 'cat'), parent (the folder holding the file), none, or a labels "
    "file (name<TAB>label per line). See docs/folders.md.",
)
KeepDuplicatesOpt = typer.Option(
    False,
    "--keep-duplicates",
    help="Index files whose bytes equal another's (default: skip and count them).",
)
SkipListOpt = typer.Option(
    None,
    "--skip-list",
    help="Write every file not indexed, with the reason, to this TSV file (names escaped: \\t, \\n, \\\\, \\xNN).",
)


def cluster_hint(hasher, n_classes: int, spec: str, command: str) -> str | None:
    """A hint line when an unsupervised method clustered labelled images (n_clusters left at its
    default, not in `spec`'s brackets) into a number of clusters other than their `n_classes`,
    naming the spec to give `command`; None otherwise.

    Measured on flowers12 (12 species, 64 bits, `hashsearch eval --data flowers12 -m SPEC --bits 64
    --seed S`, seeds 0-2): bihalf-spectral's mAP 0.8349 with n_clusters=12, 0.8135 with the default
    10, 0.8206 with n_clusters=auto (which chose 10 to 19 clusters on 864 of its photos).
    """
    made = getattr(hasher, "n_clusters_", None) or hasher.get_params().get("n_clusters")
    if n_classes < 2 or "n_clusters" not in hasher.get_params() or made == n_classes:
        return None
    if "n_clusters" in parse_spec(spec)[1]:
        return None  # the user's own choice
    better = f"{spec[:-1]},n_clusters={n_classes}]" if spec.endswith("]") else f"{spec}[n_clusters={n_classes}]"
    return (
        f"hint: the images have {n_classes} classes and {hasher.name} made {made} clusters of them (its default "
        f"n_clusters); as many clusters as classes ranked better on flowers12 (12 species, 64 bits: mAP 0.8349 "
        f"with 12, 0.8135 with the default 10): {command} with -m '{better}'"
    )
