"""The CLI commands: each parses its options, calls the library, and formats the answer."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import typer

from hashsearch.cli.common import (
    MAX_BITS,
    MIN_BITS,
    BackboneOpt,
    BatchOpt,
    CacheOpt,
    InputSizeOpt,
    KeepDuplicatesOpt,
    LabelsOpt,
    MaxPixelsOpt,
    SkipListOpt,
    WeightsOpt,
    bits_list,
    check_bits,
    cluster_hint,
    given,
    make_backbone,
    make_hasher,
    plural,
    show,
    split_list,
)


def _labels(value: str) -> str:
    """--labels: a mode, or an existing labels file."""
    from hashsearch.data.sources import LABEL_MODES

    if value in LABEL_MODES or Path(value).expanduser().is_file():
        return value
    raise typer.BadParameter(
        f"--labels {show(value)}: give one of {', '.join(LABEL_MODES)}, or an existing labels file (name<TAB>label per line)"
    )


def _report(report, skip_list: Path | None) -> None:
    """Print what a build or an add did; write the skip list if asked (before saving, so that a
    failed save still leaves it)."""
    for line in report.summary(keep_option="--keep-duplicates").splitlines():
        typer.echo(show(line))  # already printable; this keeps it so whatever a reason holds
    if skip_list is not None:
        n = report.write_skip_list(skip_list)
        typer.echo(f"wrote {show(skip_list)}: {plural(n, 'file')} not indexed, with the reason for each")


def _rerank_store(value: str) -> str:
    """--rerank-store: a spec `hashsearch.index.rerank_store.create_rerank_store` accepts."""
    from hashsearch.index.rerank_store import create_rerank_store

    try:
        create_rerank_store(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    return value


def _check_writable(skip_list: Path | None) -> None:
    """Fail before the long feature step, not after it, when the skip list cannot be written."""
    if skip_list is not None:
        try:
            with open(skip_list, "a"):
                pass
        except OSError as e:
            raise typer.BadParameter(f"--skip-list {show(skip_list)}: cannot write it ({e.strerror or e})") from None


def _check_out(out: Path, overwrite: bool = False) -> None:
    """Fail before the long steps, not after them, when --out cannot be a collection folder, or is
    an existing collection and --overwrite was not given."""
    from hashsearch.collection import Collection

    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"--out {show(out)} is a file; give a new collection folder")
    if (out / "CURRENT").is_file() and not overwrite:
        live = Collection.live_generation(out)
        raise typer.BadParameter(
            f"--out {show(out)} is an existing collection{'' if live else ' (damaged)'}; add images to it with "
            f"`hashsearch add {show(out)} SOURCE`, give a new folder, or replace it with --overwrite"
        )
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise typer.BadParameter(f"--out {show(out)}: {show(parent)} is a file, not a folder")
            break


def _rerank_store_problem(e) -> str:
    """A `RerankStoreError` in --rerank-store's terms: the number of images indexed, not of "features"."""
    spec, n, dim = e.spec, e.n, e.dim
    if spec.startswith("pca-"):
        return (
            f"--rerank-store {spec}: pca-N keeps at most as many components as there are images indexed ({n:,}) "
            f"and feature dimensions ({dim:,}); choose pca-{min(n, dim)} or less, or full"
        )
    if spec.startswith("pq-"):
        m = int(spec.split("-", 1)[1])
        if dim and dim % m:
            return f"--rerank-store {spec}: M must divide the feature dimension, {dim:,}; choose another pq-M, or int8"
        return (
            f"--rerank-store {spec}: pq-M fits its codebooks on at least 256 images, and {n:,} were indexed; "
            "choose int8, pca-N or full for fewer images"
        )
    return f"--rerank-store {spec}: {e}"


ModelOpt = typer.Option(
    None,
    "--model",
    help="A trained model file (`hashsearch train`): its backbone, weights and hasher are used, and "
    "--method, --bits, --backbone, --input-size and --weights are not.",
)


def _load_model(path: Path | None, cache_dir: Path | None):
    """The trained model at `path` (None: none), its backbone ready (weights unpacked into the cache)."""
    if path is None:
        return None
    from hashsearch.model import TrainedModel

    model = TrainedModel.load(path)
    model.backbone(cache_dir)
    return model


def _save(coll, path: Path) -> None:
    """Save, saying on failure that the features are cached (a rerun computes none of them again)."""
    from hashsearch.collection import CollectionError

    try:
        coll.save(path)
    except (CollectionError, OSError) as e:
        raise CollectionError(
            f"{e}; the features computed are in the feature cache: run the command again once the problem is "
            "fixed, and none of them is computed again"
        ) from None


def _open_collection(path: Path, cache_dir: Path | None = None):
    """`Collection.open(path)`, with a model file (`hashsearch train`'s .hsm) given in its place named as one; a
    model's weights are unpacked into `cache_dir` (the command's --cache-dir)."""
    from hashsearch.collection import Collection

    if _is_model_file(path):
        raise typer.BadParameter(
            f"{show(path)} is a model file (from `hashsearch train`), not a collection; make a collection "
            f"with it by `hashsearch index FOLDER --model {show(path)} --out NAME.hsx`, and give NAME.hsx here"
        )
    return Collection.open(path, cache_dir=cache_dir)


def _refuse_fixed_by_model(ctx: typer.Context, model: Path | None, flags: dict[str, str]) -> None:
    """With --model, refuse the options the model fixes (parameter name -> flag) that were given on the
    command line (or by environment): one error naming them. Their defaults are not refused."""
    if model is None:
        return
    fixed = [flag for name, flag in flags.items() if given(ctx, name)]
    if fixed:
        raise typer.BadParameter(
            f"--model {show(model)} fixes {', '.join(fixed)} (the model's own method, code length, backbone and "
            f"input size are used); leave {'it' if len(fixed) == 1 else 'them'} out, or drop --model"
        )


#: index's method when none is given, by the number of images (`hashsearch.hashing.unsupervised.choose_index_method`):
#: ITQ on small folders, bihalf-spectral on large ones (benchmarks/results/unsupervised-small.md); both learn
#: without labels, since most folders people index have none (issue 22). Shown in --help; "-m bihalf-spectral"
#: given on the command line is fitted whatever the size.
DEFAULT_INDEX_METHOD = "bihalf-spectral"
#: `hashsearch.hashing.unsupervised.ITQ_BELOW`, for --help (hashing imports torch: not at start-up; a test checks it).
_ITQ_BELOW = 320

#: The options of index that a model file fixes (eval's --seed is its split's, not the hasher's).
_MODEL_FIXES = {
    "method": "--method",
    "bits": "--bits",
    "seed": "--seed",
    "backbone": "--backbone",
    "input_size": "--input-size",
    "weights": "--weights",
}


def index(
    ctx: typer.Context,
    source: str = typer.Argument(
        ..., help="A folder (recursive), a .tar/.tar.gz archive, or a list file of paths [TAB label]."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="The collection folder to write (e.g. photos.hsx)."),
    method: str = typer.Option(
        DEFAULT_INDEX_METHOD,
        "--method",
        "-m",
        show_default=False,
        help="Hashing method (see `hashsearch list`), with parameters as eval takes them, e.g. 'dpsh[epochs=5]'. "
        f"Default, by size, both without labels (labels, if any, are kept, not learned from): itq below "
        f"{_ITQ_BELOW} images, bihalf-spectral from {_ITQ_BELOW} on; index names its choice. On folders of "
        "flowers12 photos smaller than that, bihalf-spectral ranked no better than ITQ and fitted 15-41 times "
        "slower (benchmarks/results/unsupervised-small.md); on more it ranks best of the unsupervised methods: at 64 bits mAP@ALL 0.4105 vs ITQ's 0.3111 on cifar10-1k "
        "and 0.8223 vs 0.7142 on flowers12, fitted on the images searched as index does "
        "(benchmarks/results/unsupervised-database.md). bihalf-spectral assumes about 10 kinds of image: set "
        "yours with -m 'bihalf-spectral[n_clusters=K]'. It trains for at least 2,000 steps (56 s vs ITQ's 7 s "
        "for 59,000 images), shown stage by stage.",
    ),
    bits: int = typer.Option(64, "--bits", "-b", help=f"Code length in bits, {MIN_BITS} to {MAX_BITS}."),
    seed: int = typer.Option(0, "--seed"),
    backend: str = typer.Option("flat", "--backend", help="Index back end (see `hashsearch list`)."),
    uri: str | None = typer.Option(
        None,
        "--uri",
        help="With --backend milvus: a Milvus server (http://HOST:19530; its token from HASHSEARCH_MILVUS_TOKEN) "
        "or a Milvus Lite .db file; default a Milvus Lite database inside the collection.",
    ),
    no_features: bool = typer.Option(False, "--no-features", help="Do not store features (disables --rerank)."),
    rerank_store: str = typer.Option(
        "full",
        "--rerank-store",
        callback=_rerank_store,
        help="How each image's feature is kept for --rerank: full (float16, 2 bytes a dimension), pca-N "
        "(N float16), int8 (1 byte a dimension) or pq-M (M bytes; faiss). See docs/scale.md.",
    ),
    backbone: str = BackboneOpt,
    input_size: int = InputSizeOpt,
    weights: str | None = WeightsOpt,
    cache_dir: Path | None = CacheOpt,
    batch_size: int = BatchOpt,
    engine: str = typer.Option("local", "--engine", help="local (worker processes on this machine) or ray (Ray Data)."),
    address: str | None = typer.Option(
        None, "--address", help="With --engine ray: a Ray cluster (auto, ray://HOST:10001); default a local Ray."
    ),
    runtime: str = typer.Option("onnx", "--runtime", help="Inference runtime for feature extraction: onnx or torch."),
    int8: bool = typer.Option(
        False, "--int8", help="Quantize the backbone to int8 (ONNX), calibrated on 256 of your images."
    ),
    labels: str = LabelsOpt,
    max_pixels: int = MaxPixelsOpt,
    keep_duplicates: bool = KeepDuplicatesOpt,
    skip_list: Path | None = SkipListOpt,
    model: Path | None = ModelOpt,
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace the collection at --out if there is one (refused without it: to grow a collection, "
        "use `hashsearch add`). Images uploaded through the service stay in <out>/uploads, no longer indexed.",
    ),
):
    """Index a collection of images: features, hash codes, and a searchable index.

    Without --model or --method, ITQ (below 320 images) or bihalf-spectral is fitted on the images' own
    features, without labels.
    With --model, the images go through a trained model's backbone and hasher (no labels needed,
    nothing is fitted), and the collection keeps a copy of the model.
    """
    from hashsearch.collection import RerankStoreError
    from hashsearch.data.sources import open_source
    from hashsearch.pipeline import build_collection

    if address and engine != "ray":
        raise typer.BadParameter(f"--address {address!r} needs --engine ray (got --engine {engine!r})")
    if uri and backend != "milvus":
        raise typer.BadParameter(f"--uri {show(uri)} needs --backend milvus (got --backend {show(backend)})")
    _refuse_fixed_by_model(ctx, model, _MODEL_FIXES)
    check_bits([bits])
    if no_features and rerank_store != "full":
        raise typer.BadParameter(f"--rerank-store {show(rerank_store)} needs stored features; drop --no-features")
    _check_out(out, overwrite)
    _check_writable(skip_list)
    trained = _load_model(model, cache_dir)
    chosen: list[str] = []
    if trained is not None:
        bb, hasher = trained.backbone(cache_dir), trained.hasher
        method, bits, input_size = hasher.name, hasher.n_bits, bb.preprocess.input_size
    else:
        from hashsearch.hashing.unsupervised import choose_index_method, few_images

        fixed = make_hasher(method, bits, seed) if given(ctx, "method") else None  # a bad spec fails at once

        def hasher(n_images: int):  # fitted once the images are known: the default by size, and a warning
            if fixed is not None:
                h = fixed
            else:
                name, why = choose_index_method(n_images)
                chosen.append(name)
                typer.echo(f"method: {why} (choose another with -m)", err=True)
                h = make_hasher(name, bits, seed)
            if warning := few_images(n_images, h.n_bits, h.name):
                typer.echo(f"warning: {warning}", err=True)
            return h

        bb = make_backbone(backbone, input_size, weights)
    stages = logging.StreamHandler(sys.stderr)  # a line per stage of a deep fit, and its progress
    stages.setFormatter(logging.Formatter("%(message)s"))
    fit_log = logging.getLogger("hashsearch.hashing.deep")
    fit_log.addHandler(stages)
    fit_log.setLevel(logging.INFO)
    try:
        coll, report = build_collection(
            open_source(source, _labels(labels)),
            bb,
            hasher,
            index=backend,
            index_options={"uri": uri} if uri else None,
            store_features=not no_features,
            rerank_store=rerank_store,
            cache_dir=cache_dir,
            batch_size=batch_size,
            engine=engine,
            runtime=runtime,
            int8=int8,
            max_pixels=max_pixels,
            keep_duplicates=keep_duplicates,
            **({"address": address} if address else {}),
        )
    except RerankStoreError as e:
        raise typer.BadParameter(_rerank_store_problem(e)) from None
    finally:
        fit_log.removeHandler(stages)
    method = chosen[0] if chosen else method
    if trained is not None:
        coll.use_model(trained)
    _report(report, skip_list)
    if trained is not None and report.listing is not None:
        _note_unseen_classes(trained, report.listing.labels.counts)
    if trained is None and report.listing is not None:
        hint = cluster_hint(coll.hasher, len(report.listing.labels.counts), chosen[0] if chosen else method, "index")
        if hint is not None:
            typer.echo(hint, err=True)
    replaced = (out / "CURRENT").is_file()
    _save(coll, out)
    typer.echo(
        f"{'replaced' if replaced else 'wrote'} {show(out)}: {plural(len(coll), 'entry', 'entries')}, {method} "
        f"{bits} bits, {bb.name} at {input_size}px" + (f", model {trained.id[:12]}" if trained is not None else "")
    )
    uploads = out / "uploads"
    n_up = sum(1 for p in uploads.iterdir() if p.is_file() and not p.name.startswith(".")) if uploads.is_dir() else 0
    if replaced and n_up:
        typer.echo(
            f"note: {plural(n_up, 'image')} uploaded through the service {'stays' if n_up == 1 else 'stay'} in "
            f"{show(uploads)}, no longer indexed; add them with `hashsearch add {show(out)} {show(uploads)}`",
            err=True,
        )


def _note_unseen_classes(model, counts: dict[str, int]) -> None:
    """A note on stderr when the folder's labels name classes the model was not trained on."""
    unseen, n_trained = model.unseen_classes(counts)
    if not unseen:
        return
    shown = ", ".join(map(show, unseen[:6])) + (f" and {len(unseen) - 6:,} more" if len(unseen) > 6 else "")
    typer.echo(
        f"note: {plural(len(unseen), 'class', 'classes')} of this folder ({shown}) {'is' if len(unseen) == 1 else 'are'} "
        f"not among the {n_trained:,} the model was trained on; its codes of classes it never saw rank less "
        "well (benchmarks/results/unseen-classes.md: on 3 held-out CIFAR-10 classes, supervised methods 0.61-0.70 "
        "mAP, ITQ without labels 0.67); train on images of them too, or index without --model",
        err=True,
    )


def query_features(coll, queries: list[Path], max_pixels: int, cache_dir: Path | None):
    """`search`'s query features: each file decoded as the collection's images were
    (`Collection.decode`) and extracted by its extractor, as the HTTP API does.

    Returns (features (n_answered, d) float32, indices of the queries answered, {index: why} of
    those that could not be read or decoded).
    """
    from hashsearch.data.decode import DecodeError
    from hashsearch.pipeline import extract_queries

    images, answered, errors = [], [], {}
    for qi, q in enumerate(queries):
        try:
            images.append(coll.decode(q.read_bytes(), show(q), max_pixels))
            answered.append(qi)
        except IsADirectoryError:
            errors[qi] = f"a folder, not an image file: give the images in it (e.g. {show(q / '*.jpg')})"
        except OSError as e:
            errors[qi] = f"cannot read the file ({e.strerror or e})"
        except DecodeError as e:
            errors[qi] = e.reason
    feats = extract_queries(coll.backbone, images, coll.extractor(cache_dir) if images else None)
    return feats, answered, errors


def search(
    collection: Path = typer.Argument(..., help="A collection folder written by `hashsearch index`."),
    queries: list[Path] = typer.Argument(..., help="Query image file(s)."),
    k: int = typer.Option(
        10, "-k", min=1, help="Neighbours to return (with --radius: at most this many of those within it)."
    ),
    rerank: int | None = typer.Option(
        None, "--rerank", min=1, help="Coarse-to-fine: re-rank up to this many Hamming candidates by feature distance."
    ),
    radius: int | None = typer.Option(
        None, "--radius", min=0, help="Hamming radius (lookup, or the candidate radius with --rerank)."
    ),
    label: str | None = typer.Option(None, "--label", help="Only results with this label."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    cache_dir: Path | None = CacheOpt,
    max_pixels: int = MaxPixelsOpt,
):
    """Find the nearest indexed images of each query image (its features extracted as the collection's were).

    A query that cannot be read or decoded is reported on stderr (and, with --json, as an entry
    with an "error") and the others are answered; the exit code is 1 only when no query could be.
    """
    coll = _open_collection(collection, cache_dir)
    if radius is not None and radius > coll.n_bits:
        raise typer.BadParameter(
            f"--radius {radius}: a Hamming radius is at most the code length, and {show(collection)} has "
            f"{coll.n_bits}-bit codes; give 0 to {coll.n_bits}"
        )
    if rerank and not coll.store_features:
        raise typer.BadParameter(
            f"--rerank {rerank}: {show(collection)} keeps no features (indexed with --no-features), which "
            "re-ranking needs; search without --rerank, or index again without --no-features"
        )
    if label is not None and not coll.has_label(label):
        from hashsearch.collection import NO_LABEL

        labels = sorted(k for k in coll.info()["labels"] if k != NO_LABEL)
        shown = ", ".join(map(show, labels[:20])) + (f" and {len(labels) - 20:,} more" if len(labels) > 20 else "")
        meant = [k for k in labels if k.casefold() == label.casefold()]  # labels compare exactly; case counts
        raise typer.BadParameter(
            f"--label {show(label)}: no image of {show(collection)} has this label"
            + (f" (did you mean --label {show(meant[0])}? labels compare exactly)" if meant else "")
            + "; "
            + (f"its labels: {shown}" if labels else "its images have no labels")
        )
    feats, answered, errors = query_features(coll, queries, max_pixels, cache_dir)
    for qi, why in errors.items():
        typer.echo(f"error: query {show(queries[qi])}: {why}", err=True)
    found = []
    if answered:
        found = coll.search_records(
            feats,
            k,
            rerank=rerank,
            radius=radius,
            label=label,
        )
    out = []
    for qi, q in enumerate(queries):
        if qi in errors:
            out.append({"query": str(q), "error": errors[qi]})
            continue
        hits = [
            {
                "rank": r + 1,
                "id": h["id"],
                "distance": h["rerank_distance"] if rerank else h["hamming"],
                "hamming": h["hamming"],
                "key": h["key"],
                "path": h["path"],
                "label": h["label"],
            }
            for r, h in enumerate(found[answered.index(qi)])
        ]
        out.append({"query": str(q), "results": hits})
    if as_json:
        typer.echo(json.dumps(out, indent=1))  # ASCII: a name that is not UTF-8 as \udcXX (os.fsencode gives its bytes)
    else:
        kind = "re-rank (L2)" if rerank else "hamming"
        for item in out:
            if "error" in item:
                continue
            typer.echo(f"query {show(item['query'])}")
            if item["results"]:
                typer.echo(f"  {'rank':>4} {kind:>12} {'label':<12} path")
            for h in item["results"]:
                dist = f"{h['distance']:.3f}" if rerank else f"{int(h['distance'])}"
                label = "(no label)" if h["label"] is None else show(h["label"])
                typer.echo(f"  {h['rank']:>4} {dist:>12} {label:<12} {show(h['path'])}")
            if radius is not None and len(item["results"]) == k:  # a lookup cut at k: say so
                typer.echo(f"  (the first {k:,} within Hamming radius {radius}; more may lie there: -k sets how many)")
            if not item["results"]:  # say why, not an empty table
                why = [f"within Hamming radius {radius}"] if radius is not None else []
                why += [f"labelled {show(label)}"] if label is not None else []
                more = "; a larger --radius finds more" if radius is not None and radius < coll.n_bits else ""
                typer.echo(f"  no image {' '.join(why) or 'in the collection'}{more}")
    if not answered:
        raise typer.Exit(1)


def _is_model_file(path: Path) -> bool:
    """Whether `path` is, or is named as, a model file of `hashsearch train`: a zip holding model.json,
    or any file named *.hsm (a damaged one then fails to load with a message that says so)."""
    import zipfile

    if not path.is_file():
        return False
    if path.suffix.lower() == ".hsm":
        return True
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return "model.json" in z.namelist()


def _size(n: int) -> str:
    """Bytes for a person: '164 B', '45.1 KiB', '18.2 MiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def _params(hasher) -> str:
    """A hasher's own parameters as a spec's brackets write them ('n_iter=50'), n_bits and seed left out;
    epochs=None (a number chosen from the data) with the epochs run ("epochs=auto, 500 run")."""
    params = hasher.get_params()
    if params.get("epochs", 0) is None and getattr(hasher, "epochs_run_", None):
        params["epochs"] = f"auto, {hasher.epochs_run_} run"
    return ", ".join(f"{k}={v}" for k, v in params.items() if k not in ("n_bits", "seed"))


def _model_lines(model, record: dict) -> list[tuple[str, str]]:
    """(field, text) rows of `info`'s summary of a trained model (its file, or a collection's copy)."""
    data = record.get("data") or {}
    classes = data.get("classes") or []
    rows = [("method", f"{model.hasher.name}{f' ({p})' if (p := _params(model.hasher)) else ''}")]
    mode = record.get("mode")
    if mode:
        rows.append(
            ("training", f"{mode} mode" + (f" on protocol {record['protocol']}" if record.get("protocol") else ""))
        )
    if data:
        rows.append(
            (
                "trained on",
                f"{plural(data.get('images', 0), 'image')} of {plural(len(classes), 'class', 'classes')} "
                f"({plural(data.get('train', 0), 'training image')}, {data.get('validation', 0):,} held out for "
                f"validation) from {show(data.get('source'))}",
            )
        )
    if record.get("val_map") is not None:
        rows.append(("validation", f"mAP {record['val_map']:.4f}"))
    return rows


def _print_rows(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        typer.echo(f"{k:<{width}}  {v}")


def info(
    collection: Path = typer.Argument(
        ..., help="A collection folder (`hashsearch index`) or a model file (`hashsearch train`).", metavar="PATH"
    ),
    as_json: bool | None = typer.Option(
        None,
        "--json/--text",
        help="--json: every field as JSON (for scripts); --text: a short summary. Default: the summary on a "
        "terminal, JSON when the output goes to a pipe or a file.",
        show_default=False,
    ),
):
    """Describe a collection (images, code length, method, backbone, model, labels, sizes on disk)
    or a model file (method, code length, backbone, training data, validation mAP)."""
    if as_json is None:
        as_json = not sys.stdout.isatty()
    if _is_model_file(collection):
        from hashsearch.model import TrainedModel

        model = TrainedModel.load(collection)
        r = dict(model.record)
        if as_json:
            data = dict(r.get("data") or {})
            digests = data.pop("image_digests", None)  # thousands of lines: counted, not listed
            if digests is not None:
                data["image_digests"] = len(digests)
            typer.echo(
                json.dumps(
                    {
                        "kind": "model",
                        "file": str(collection),
                        "id": model.id,
                        "n_bits": model.n_bits,
                        "method": model.hasher.name,
                        "hasher_params": model.hasher.get_params(),
                        "backbone": model.backbone_name,
                        "input_size": model.preprocess.input_size,
                        "size_bytes": collection.stat().st_size,
                        "training": {**r, "data": data},
                    },
                    indent=1,
                )
            )
            return
        rows = [
            ("model", f"{show(collection)}: a trained model (`hashsearch train`), id {model.id[:12]}"),
            ("code length", f"{model.n_bits} bits"),
            *_model_lines(model, r),
            ("backbone", f"{model.backbone_name} at {model.preprocess.input_size} px"),
            ("on disk", _size(collection.stat().st_size)),
        ]
        if r.get("created_at"):
            rows.append(("created", r["created_at"]))
        _print_rows(rows)
        return

    coll = _open_collection(collection)
    info = coll.info()
    # Unlabelled entries under "(no label)" (json.dumps would write a None key as "null").
    info["labels"] = {"(no label)" if k is None else k: v for k, v in info.get("labels", {}).items()}
    if as_json:  # "kind" as for a model file, so that a script can tell which it was given
        typer.echo(json.dumps({"kind": "collection", "path": str(collection), **info}, indent=1))
        return
    labels = sorted(info["labels"].items(), key=lambda kv: (-kv[1], kv[0]))
    shown = ", ".join(f"{show(k)} {v:,}" for k, v in labels[:6]) + (
        f" and {len(labels) - 6:,} more" if len(labels) > 6 else ""
    )
    n_labels = sum(1 for k, _ in labels if k != "(no label)")
    rows = [
        ("collection", f"{show(collection)}: a searchable collection (`hashsearch index`)"),
        (
            "images",
            f"{info['count']:,}"
            + (f" ({plural(n_labels, 'label')}: {shown})" if n_labels else " (no labels)" if labels else ""),
        ),
        ("code length", f"{info['n_bits']} bits"),
    ]
    if coll.model is not None:
        method, *trained = _model_lines(coll.model, coll.model.record)
        rows += [method, ("model", f"{coll.model.id[:12]} (from `hashsearch train`; a copy is inside the collection)")]
        rows += trained
    else:
        p = _params(coll.hasher)
        rows.append(("method", f"{info['method']}{f' ({p})' if p else ''}, fitted on the images indexed"))
    rows.append(
        (
            "backbone",
            f"{info['backbone']} at {info['input_size']} px" + (", int8" if info["encoding"] == "int8" else ""),
        )
    )
    rows.append(
        (
            "index",
            f"{info['index']}; features for --rerank: "
            + (info["rerank_store"] if info["store_features"] else "none (--no-features)"),
        )
    )
    gen = coll.path / coll.generation if coll.path is not None and coll.generation else None
    if gen is not None:
        parts: dict[str, int] = {}
        for f in gen.rglob("*"):
            if f.is_file() and f.name != "manifest.json":
                rel = f.relative_to(gen).as_posix()
                what = next(
                    (w for prefix, w in _DISK_PARTS if rel.startswith(prefix)),
                    "other",
                )
                parts[what] = parts.get(what, 0) + f.stat().st_size
        order = list(dict.fromkeys(w for _, w in _DISK_PARTS)) + ["other"]
        rows.append(
            (
                "on disk",
                f"{_size(sum(parts.values()))} ("
                + ", ".join(f"{k} {_size(parts[k])}" for k in order if parts.get(k))
                + ")",
            )
        )
    if coll.model is not None and coll.model.record.get("created_at"):
        rows.append(("model created", coll.model.record["created_at"]))
    if coll.manifest.get("saved_at"):
        rows.append(("saved", f"{coll.manifest['saved_at']} (generation {coll.manifest.get('generation', '?')})"))
    for i, s in enumerate(info["sources"]):
        rows.append(
            (
                "" if i else "images from",
                f"{show(s['root'])} ({plural(s['count'], 'image')}){'' if s['exists'] else ', missing: see relocate'}",
            )
        )
    _print_rows(rows)


#: `info`'s parts of a collection on disk: file name prefix in a generation -> what it holds.
_DISK_PARTS = (
    ("index", "codes"),
    ("features", "features"),
    ("feature_ids", "features"),
    ("rerank_store", "features"),
    ("entries", "names and labels"),
    ("model.hsm", "model"),
    ("hasher", "hasher"),
)


def add(
    collection: Path = typer.Argument(...),
    source: str = typer.Argument(..., help="Images to add (folder, archive or list file)."),
    cache_dir: Path | None = CacheOpt,
    batch_size: int = BatchOpt,
    labels: str = LabelsOpt,
    max_pixels: int = MaxPixelsOpt,
    keep_duplicates: bool = KeepDuplicatesOpt,
    skip_list: Path | None = SkipListOpt,
    model: Path | None = typer.Option(
        None,
        "--model",
        help="A trained model file: refused unless it is the model that built the collection (which is used anyway).",
    ),
):
    """Add images to a collection, through its own backbone and hasher (and its trained model, if it has one).

    Files whose bytes equal an image already in the collection (or an earlier file of the
    source) are skipped and counted, unless --keep-duplicates; when nothing new is left, the
    collection is not written.
    """
    from hashsearch.data.sources import open_source
    from hashsearch.pipeline import add_images

    _check_writable(skip_list)
    coll = _open_collection(collection, cache_dir)
    trained = _load_model(model, cache_dir)
    if trained is not None:
        coll.check_model(trained.id, f"the codes of {show(model)}")
    ids, report = add_images(
        coll,
        open_source(source, _labels(labels)),
        cache_dir=cache_dir,
        batch_size=batch_size,
        max_pixels=max_pixels,
        keep_duplicates=keep_duplicates,
    )
    _report(report, skip_list)
    if not len(ids):
        typer.echo(f"added nothing; {plural(len(coll), 'entry', 'entries')} as before (the collection was not written)")
        return
    _save(coll, collection)
    typer.echo(
        f"added {plural(len(ids), 'entry', 'entries')} "
        + (f"(id {ids.min()}); " if ids.min() == ids.max() else f"(ids {ids.min()}..{ids.max()}); ")
        + f"{plural(len(coll), 'entry', 'entries')} now"
    )


def remove(
    collection: Path = typer.Argument(..., help="A collection folder."),
    ids: list[int] = typer.Argument(
        ..., help="Entry ids to remove (`hashsearch search --json` or GET /entries lists them)."
    ),
    ignore_missing: bool = typer.Option(
        False, "--ignore-missing", help="Remove the ids that exist and only name the others (exit code 0)."
    ),
):
    """Remove entries from a collection by id.

    All or nothing: when an id is not in the collection, nothing is removed, the unknown ids are
    named in one line, and the exit code is 1 (a typo does not silently remove the others). With
    --ignore-missing, the ids that exist are removed and the unknown ones are named on stderr.
    """

    coll = _open_collection(collection)
    wanted = list(dict.fromkeys(ids))
    possible = [i for i in wanted if 0 <= i < 2**63]  # ids are non-negative int64
    found = {i for i, e in zip(possible, coll.entries(possible)) if e is not None}
    missing = [i for i in wanted if i not in found]
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (f", ... ({len(missing):,} in all)" if len(missing) > 5 else "")
        what = f"no entry has the {'id' if len(missing) == 1 else 'ids'} {shown} ({len(missing):,} of the {len(wanted):,} given)"
        if not ignore_missing:
            typer.echo(
                f"error: {what}; nothing was removed: give existing ids (`hashsearch search --json` or GET "
                "/entries lists them), or add --ignore-missing to remove the others",
                err=True,
            )
            raise typer.Exit(1)
        typer.echo(f"note: {what}; removing the others (--ignore-missing)", err=True)
    n = coll.remove(sorted(found)) if found else 0
    if n:
        _save(coll, collection)
    typer.echo(
        f"removed {plural(n, 'entry', 'entries')}; {plural(len(coll), 'entry', 'entries')} now"
        + ("" if n else " (the collection was not written)")
    )


def relocate(
    collection: Path = typer.Argument(..., help="A collection folder."),
    old: Path = typer.Argument(..., help="Where the images were (a folder the collection read from, or one above it)."),
    new: Path = typer.Argument(..., help="Where they are now."),
):
    """Repoint a collection whose image folder moved: entries under OLD are read under NEW.

    `hashsearch info` lists the folders a collection reads from and whether each exists.
    """

    coll = _open_collection(collection)
    n = coll.relocate(old, new)
    if not n:
        folders = ", ".join(show(s["root"]) for s in coll.sources()) or "none"
        raise typer.BadParameter(f"no entry lies under {show(old)}; the collection reads from: {folders}")
    _save(coll, collection)
    typer.echo(f"relocated {plural(n, 'entry', 'entries')} from {show(old)} to {show(new)}")
    for s in coll.sources():
        if not s["exists"]:
            typer.echo(
                f"warning: {show(s['root'])} ({plural(s['count'], 'entry', 'entries')}) does not exist", err=True
            )


def eval(
    ctx: typer.Context,
    protocol: str | None = typer.Option(None, "--protocol", "-p", help="A named protocol (see `hashsearch list`)."),
    data: str | None = typer.Option(
        None, "--data", help="Your own labelled folder/archive/list, split per class instead of --protocol."
    ),
    queries_per_class: int | None = typer.Option(
        None,
        "--queries-per-class",
        min=1,
        help="With --data: queries drawn from each class. Default: 100, or a fifth of the smallest class when "
        "that is fewer.",
        show_default=False,
    ),
    train_per_class: int | None = typer.Option(
        None,
        "--train-per-class",
        min=1,
        help="With --data: training images drawn from each class (not with --model: a trained model needs none). "
        "Default: 500, or what the smallest class keeps after its queries when that is fewer.",
        show_default=False,
    ),
    method: str = typer.Option("lsh,pcah,pca-rr,itq,dlbhc", "--method", "-m", help="Comma-separated methods."),
    bits: str = typer.Option(
        "16,32,48,64", "--bits", "-b", help=f"Comma-separated code lengths, each {MIN_BITS} to {MAX_BITS}."
    ),
    seed: int = typer.Option(0, "--seed"),
    out: Path | None = typer.Option(None, "--out", help="Write <out>.md, <out>.json and plots."),
    backbone: str = BackboneOpt,
    input_size: int = InputSizeOpt,
    weights: str | None = WeightsOpt,
    cache_dir: Path | None = CacheOpt,
    batch_size: int = BatchOpt,
    labels: str = typer.Option(
        "auto",
        "--labels",
        help="With --data: how images get labels (as `index --labels`); images without one are left out and named.",
    ),
    max_pixels: int = MaxPixelsOpt,
    model: Path | None = typer.Option(
        None,
        "--model",
        help="Evaluate a trained model file (its backbone and hasher; --method and --bits are not used).",
    ),
):
    """Evaluate hashing methods on a seeded split: mAP, tie-aware mAP, P@k, precision within radius 2.

    Each method is fitted on the split's training images. With --model, a trained model is
    evaluated as it is: --data is split into queries and database only (no training images).
    """
    from hashsearch.experiments.jobs import run_and_report

    if (protocol is None) == (data is None):
        raise typer.BadParameter("give exactly one of --protocol NAME or --data PATH")

    flags = {"queries_per_class": "--queries-per-class", "train_per_class": "--train-per-class", "labels": "--labels"}
    if protocol is not None and (unused := [f for name, f in flags.items() if given(ctx, name)]):
        raise typer.BadParameter(
            f"--protocol {show(protocol)} draws its own split, so {', '.join(unused)} (for --data) would not be used; "
            f"leave {'it' if len(unused) == 1 else 'them'} out, or evaluate your own images with --data PATH"
        )
    if model is not None:
        from hashsearch.experiments.training import evaluate_model

        _refuse_fixed_by_model(ctx, model, {k: v for k, v in _MODEL_FIXES.items() if k != "seed"})  # eval: the split's
        if given(ctx, "train_per_class"):
            raise typer.BadParameter(
                f"--train-per-class {train_per_class}: --model {show(model)} is trained, so the evaluation draws no "
                "training images (queries and database only); leave --train-per-class out"
            )
        evaluate_model(
            _load_model(model, cache_dir),
            protocol=protocol,
            data=data,
            queries_per_class=queries_per_class,
            seed=seed,
            out=out,
            cache_dir=cache_dir,
            batch_size=batch_size,
            command=_command_line(),
            labels=_labels(labels),
            max_pixels=max_pixels,
        )
        return
    run_and_report(
        protocol=protocol,
        data=data,
        queries_per_class=queries_per_class,
        train_per_class=train_per_class,
        methods=split_list(method),
        bits=bits_list(bits),
        seed=seed,
        out=out,
        backbone=make_backbone(backbone, input_size, weights),
        cache_dir=cache_dir,
        batch_size=batch_size,
        command=_command_line(),
        labels=_labels(labels),
        max_pixels=max_pixels,
    )


def demo(
    out: Path | None = typer.Option(
        None, "--out", help="Where to write the demo collection (default <cache>/demo.hsx)."
    ),
    cache_dir: Path | None = CacheOpt,
):
    """The main job on real data: CIFAR-10 (JPEG) `cifar10-demo` split, ITQ and DLBHC, index, queries."""
    from hashsearch.experiments.jobs import demo as run_demo
    from hashsearch.paths import cache_dir as default_cache

    run_demo(out=out or Path(cache_dir or default_cache()) / "demo.hsx", cache_dir=cache_dir)


def list_plugins():
    """List the registered methods, backbones, index back ends and protocols."""
    from hashsearch.backbones import list_backbones
    from hashsearch.data.protocols import list_protocols
    from hashsearch.hashing import hashers, list_hashers
    from hashsearch.index import list_indexes

    typer.echo(
        "methods:   " + ", ".join(f"{m}{' (supervised)' if hashers.get(m).supervised else ''}" for m in list_hashers())
    )
    typer.echo("backbones: " + ", ".join(list_backbones()))
    typer.echo("indexes:   " + ", ".join(list_indexes()))
    typer.echo("protocols: " + ", ".join(list_protocols()))


list_plugins.__name__ = "list"


def _command_line() -> str:
    import shlex
    import sys

    return "hashsearch " + " ".join(shlex.quote(show(a)) for a in sys.argv[1:])  # one printable line


ALL = [index, search, info, add, remove, relocate, eval, demo, list_plugins]
