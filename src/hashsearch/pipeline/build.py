"""Build a collection from an image source, add images to one, and extract the features of query images."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from hashsearch.backbones import Backbone
from hashsearch.backbones.runtime import FeatureExtractor, TorchExtractor
from hashsearch.collection import Collection
from hashsearch.data.decode import DEFAULT_MAX_PIXELS
from hashsearch.data.sources import ImageRecord, ImageSource, Listing, SkipReport, escape_name, plural, printable
from hashsearch.hashing import Hasher
from hashsearch.pipeline.local import extract_features
from hashsearch.pipeline.steps import Extracted


@dataclass
class IndexReport:
    """What a build or an add did: counts, the files not indexed and why, time per stage.

    Every file of the source that was not indexed is in exactly one of: `skipped` (could not be
    listed, read or decoded), `duplicates` (the same bytes as an image kept or already in the
    collection), `listing.not_images` (not an image by its extension) or `listing.hidden`.

    Attributes
    ----------
    duplicates : list of (key, original)
        Each file left out as a duplicate, with what it duplicates: the key of the copy kept,
        or ``"id N (key)"`` of the collection's entry.
    listing : Listing or None
        What listing the source found and how it read the labels (None when the caller passed
        its own `records`).
    """

    n_indexed: int = 0
    n_cached: int = 0
    n_computed: int = 0
    skipped: SkipReport = field(default_factory=SkipReport)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    listing: Listing | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self, limit: int = 5, keep_option: str = "keep_duplicates=True") -> str:
        """A few lines: counts and times; the labels; the files skipped, duplicated, left out.
        `keep_option` is how the reader asks to keep duplicates (the command line: "--keep-duplicates")."""
        t = ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items())
        # Files left out by name are counted here too, so that the counts cover every line below.
        by_name = 0 if self.listing is None else len(self.listing.not_images) + len(self.listing.hidden)
        lines = [
            f"indexed {plural(self.n_indexed, 'image')} ({plural(self.n_computed, 'feature')} computed, "
            f"{self.n_cached:,} from the cache); {plural(len(self.skipped), 'file')} skipped; "
            f"{plural(len(self.duplicates), 'duplicate')} skipped; "
            + (f"{by_name:,} left out by name (not an image, or hidden); " if by_name else "")
            + t
        ]
        if self.listing is not None:
            lines.append(self.listing.labels.summary(limit))
        if len(self.skipped):
            lines.append(self.skipped.summary(limit))
        if self.duplicates:
            n = len(self.duplicates)
            head = "; ".join(f"{printable(k)} (same bytes as {printable(o)})" for k, o in self.duplicates[:limit])
            more = f"; and {n - limit:,} more" if n > limit else ""
            lines.append(f"{plural(n, 'duplicate')} skipped (keep them with {keep_option}): {head}{more}")
        if self.listing is not None and self.listing.left_out(limit):
            lines.append(self.listing.left_out(limit))
        return "\n".join(lines)

    def not_indexed(self) -> list[tuple[str, str]]:
        """(key, reason) of every file of the source that was not indexed (see the class docstring)."""
        rows = list(self.skipped.skipped)
        rows += [(k, f"duplicate: the same bytes as {o}") for k, o in self.duplicates]
        if self.listing is not None:
            rows += [(k, "not an image (by extension)") for k in self.listing.not_images]
            rows += [(k, "hidden") for k in self.listing.hidden]
        return rows

    def write_skip_list(self, path: str | os.PathLike) -> int:
        """Write `not_indexed()` to `path` as TSV (a "key<TAB>reason" header, then one row per
        file); names are written with `escape_name` (reversible with `unescape_name`), so a name
        holding a tab, a newline or bytes that are not UTF-8 stays one field. Returns the rows written."""
        rows = self.not_indexed()
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write("key\treason\n")
            f.writelines(f"{escape_name(k)}\t{escape_name(r)}\n" for k, r in rows)
        return len(rows)


def _extractor(engine: str):
    """The extraction function of an engine (`extract_features` or `extract_features_ray`)."""
    if engine == "local":
        return extract_features
    if engine == "ray":
        from hashsearch.pipeline.ray_engine import extract_features_ray

        return extract_features_ray
    raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")


ENGINES = ("local", "ray")


def _start(source: ImageSource, records: Sequence[ImageRecord] | None) -> tuple[list[ImageRecord], IndexReport]:
    """The records to extract, and a report that starts with what listing the source found."""
    report = IndexReport()
    if records is None:
        records = source.records()
        report.listing = source.listing()
        report.skipped.skipped += report.listing.problems
    return list(records), report


def _drop_duplicates(ex: Extracted, report: IndexReport, existing: dict[str, str] | None = None) -> Extracted:
    """`ex` without the files whose bytes equal an earlier file's, or a collection entry's
    (`existing`: digest -> description); each one left out is recorded in `report.duplicates`."""
    existing = existing or {}
    first: dict[str, str] = {}
    keep = []
    for i, (record, digest) in enumerate(zip(ex.records, ex.digests)):
        if digest in existing:
            report.duplicates.append((record.key, existing[digest]))
        elif digest in first:
            report.duplicates.append((record.key, first[digest]))
        else:
            first[digest] = record.key
            keep.append(i)
    if len(keep) == len(ex.records):
        return ex
    ex.records = [ex.records[i] for i in keep]
    ex.digests = [ex.digests[i] for i in keep]
    ex.features = ex.features[keep]
    return ex


def _count_labels(report: IndexReport, ex: Extracted) -> None:
    """The report's class counts and unlabelled images: of the images indexed (the listing counted
    every image listed, those skipped or dropped as duplicates too)."""
    if report.listing is not None:
        counts: dict[str, int] = {}
        for r in ex.records:
            if r.label is not None:
                counts[r.label] = counts.get(r.label, 0) + 1
        indexed = {r.key for r in ex.records}
        labels = report.listing.labels
        report.listing.labels = dataclasses.replace(
            labels, counts=dict(sorted(counts.items())), unlabelled=[u for u in labels.unlabelled if u[0] in indexed]
        )


def _unlabelled_error(method: str, report: IndexReport, n: int) -> ValueError:
    """The error of a supervised method given images without any label, saying what was seen."""
    seen = f" (labels: {report.listing.labels.layout})" if report.listing is not None else ""
    return ValueError(
        f"method {method!r} learns from labels, but none of the {n:,} images has one{seen}; put each class's "
        "images in a folder of its own (photos/cat/..., photos/dog/...), write 'path<TAB>label' lines in a "
        "list file, pass a labels file (--labels FILE, labels=path), or use an unsupervised method "
        "(itq, lsh, pcah, pca-rr; deep, trained without labels: bihalf-spectral, bihalf, greedyhash-unsup, ssdh)"
    )


def build_collection(
    source: ImageSource,
    backbone: Backbone,
    hasher: Hasher | Callable[[int], Hasher],
    *,
    records: Sequence[ImageRecord] | None = None,
    index: str = "flat",
    index_options: dict | None = None,
    store_features: bool = True,
    rerank_store: str = "full",
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    keep_duplicates: bool = False,
    progress: bool = True,
    engine: str = "local",
    **extract,
) -> tuple[Collection, IndexReport]:
    """Extract features of `source`, fit `hasher` on them (unless already fitted), index them.

    A supervised hasher is fitted on the labelled images; the collection holds them all.
    `engine` is "local" (worker processes that decode and extract) or "ray" (Ray Data;
    pass `address=` for a cluster); `extract` goes to the engine (runtime, int8, workers, ...).
    Entries are stored relative to `source.root`.

    Parameters
    ----------
    hasher : Hasher or callable
        The hasher, or a function ``(n_images) -> Hasher`` called once the images to index are
        known (after skips and duplicates): how `hashsearch index` picks its default by size.
    index_options : dict, optional
        Parameters of the index back end, e.g. ``{"uri": "http://host:19530"}`` for "milvus".
    rerank_store : str
        How the collection keeps each image's feature for re-ranking: "full" (float16), "pca-N",
        "int8" or "pq-M" (`hashsearch.index.rerank_store`), fitted on the features indexed.
    max_pixels : int
        Largest width * height decoded (default 64 Mpx); a larger image is skipped and reported.
    keep_duplicates : bool
        Keep files whose bytes equal an earlier file's (default: the first copy, by key, is
        indexed; the others are reported in `IndexReport.duplicates`).

    Raises
    ------
    ValueError
        An unknown index back end, engine or re-rank store (before any work); no readable image in the source;
        a supervised method and no labelled image.
    """
    from hashsearch.index import index_backends

    if not (isinstance(index, str) and index.startswith("faiss:")):
        index_backends.get(index)  # an unknown back end is refused before the features, not after
    if store_features:
        from hashsearch.index.rerank_store import create_rerank_store

        create_rerank_store(rerank_store)  # so is an unknown re-rank store
    extractor = _extractor(engine)
    records, report = _start(source, records)
    t = time.perf_counter()
    ex = extractor(
        source,
        backbone,
        records,
        cache_dir=cache_dir,
        batch_size=batch_size,
        progress=progress,
        max_pixels=max_pixels,
        **extract,
    )
    report.timings["features"] = time.perf_counter() - t
    report.skipped.skipped += ex.report.skipped
    report.n_cached, report.n_computed = ex.n_cached, ex.n_computed
    if not keep_duplicates:
        ex = _drop_duplicates(ex, report)
    _count_labels(report, ex)
    if not ex.records:
        raise ValueError(_no_image(source, report))
    if not isinstance(hasher, Hasher):
        hasher = hasher(len(ex.records))
    if not hasattr(hasher, "n_features_in_"):
        t = time.perf_counter()
        X, y = ex.features, None
        if hasher.supervised:
            labelled = [i for i, r in enumerate(ex.records) if r.label is not None]
            if not labelled:
                raise _unlabelled_error(hasher.name, report, len(ex.records))
            X = ex.features[labelled]
            y = np.array([ex.records[i].label for i in labelled])
        hasher.fit(X, y)
        report.timings["fit"] = time.perf_counter() - t
    t = time.perf_counter()
    coll = Collection.create(
        backbone,
        hasher,
        index=index,
        index_options=index_options,
        store_features=store_features,
        int8_model=ex.int8_model,
        rerank_store=rerank_store,
    )
    coll.add(ex.features, [r.key for r in ex.records], [r.label for r in ex.records], ex.digests, root=source.root)
    report.timings["index"] = time.perf_counter() - t
    report.n_indexed = len(ex.records)
    return coll, report


def add_images(
    coll: Collection,
    source: ImageSource,
    *,
    records: Sequence[ImageRecord] | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    keep_duplicates: bool = False,
    progress: bool = True,
    **extract,
) -> tuple[np.ndarray, IndexReport]:
    """Extract the features of `source`'s images as the collection's were (`Collection.extractor`:
    its backbone, and its int8 model if it has one) and add them with its hasher; returns
    (new ids (int64), report).

    By default a file whose bytes equal an image already in the collection, or an earlier file
    of the source, is not added (`IndexReport.duplicates` names what it duplicates);
    ``keep_duplicates=True`` adds it. `max_pixels` as in `build_collection`; `extract` goes to
    `extract_features` (workers, ...). Nothing is added (and `coll.dirty` stays as it was) when
    no new image is left.
    """
    records, report = _start(source, records)
    t = time.perf_counter()
    ex = extract_features(
        source,
        coll.backbone,
        records,
        cache_dir=cache_dir,
        batch_size=batch_size,
        progress=progress,
        max_pixels=max_pixels,
        extractor=coll.extractor(cache_dir),
        **extract,
    )
    report.timings["features"] = time.perf_counter() - t
    report.skipped.skipped += ex.report.skipped
    report.n_cached, report.n_computed = ex.n_cached, ex.n_computed
    if not keep_duplicates:
        found = coll.ids_by_digest(ex.digests)
        entries = dict(zip(found.values(), coll.entries(list(found.values()))))
        existing = {d: f"id {i} ({(entries.get(i) or {}).get('key', '?')})" for d, i in found.items()}
        ex = _drop_duplicates(ex, report, existing)
    _count_labels(report, ex)
    if not ex.records:
        return np.zeros(0, np.int64), report
    ids = coll.add(
        ex.features, [r.key for r in ex.records], [r.label for r in ex.records], ex.digests, root=source.root
    )
    report.n_indexed = len(ids)
    return ids, report


def _no_image(source: ImageSource, report: IndexReport) -> str:
    """Why a build has nothing to index: the source named, what was looked for, and what was found."""
    from hashsearch.data.sources import IMAGE_EXTENSIONS, FolderSource, ListSource, TarSource

    exts = ", ".join(sorted(IMAGE_EXTENSIONS))
    if isinstance(source, FolderSource):
        where = f"folder {printable(str(source.folder))} (looked for files ending {exts}, any case, in it and below)"
    elif isinstance(source, TarSource):
        where = f"archive {printable(str(source.path))} (looked for members ending {exts}, any case)"
    elif isinstance(source, ListSource):
        where = f"list file {printable(str(source.path))} (looked for the files it names, one a line)"
    else:
        where = f"the source {source!r}"
    found = report.skipped.summary()
    if report.listing is not None and report.listing.left_out():
        found += "; " + report.listing.left_out()
    return f"no readable image in {where}: {found}"


def extract_queries(
    backbone: Backbone, images: Sequence[Image.Image], extractor: FeatureExtractor | None = None
) -> np.ndarray:
    """Features (n, feature_dim) float32 of decoded query images (not cached: queries are usually one-off).

    `extractor` runs the backbone: a collection's queries take `Collection.extractor()` (ONNX
    Runtime, and the collection's int8 model if it was built with one); default: the PyTorch module.
    """
    if not images:
        return np.zeros((0, backbone.feature_dim), np.float32)
    crops = np.stack([backbone.preprocess.crop(im) for im in images])
    # The collection's own extraction path: uint8 crops in (ONNX normalises them in its graph).
    return (extractor or TorchExtractor(backbone)).extract(crops)
