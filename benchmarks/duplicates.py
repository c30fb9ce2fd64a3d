"""Near-duplicate groups: `hashsearch duplicates` against imagededup's and imagehash's hashes, in one run.

The set (generated once, under --data, default /tmp/hs-dups; never in the repository):

- originals: every flowers12 photo (960, 224 px, ../shared/datasets/flowers12-960.tar.gz), then
  CIFAR-10 (JPEG) training images upscaled 4x (32 -> 128 px, bicubic), saved as JPEG quality 95;
- each of `--groups` originals gets `--variants` copies, each made by one transformation drawn
  at random without repetition (parameters drawn uniformly in the ranges below);
- the rest of the `--images` are CIFAR-10 originals (upscaled as above) without a copy.

Transformations (the issue's list; one per copy):

    jpeg        re-encoded as JPEG, quality 20-90
    resize      scaled by 0.3-2x (bicubic)
    crop        5-20% of the width and of the height cut away (split at random between the sides)
    color       brightness and contrast each multiplied by 0.6-1.4 (Pillow ImageEnhance)
    hflip       mirrored left-right
    rot90       rotated by 90 degrees (either way)
    text        a line of text drawn over the photo (Pillow's default font, 8-14% of the height,
                white or black, at a random place)
    border      a solid border of 5-15% of the size on every side (random grey level)

Copies are saved as JPEG quality 90 (the `jpeg` copy at its own quality), under random names in
one folder, so nothing but the pixels says which photo a file came from. Ground truth: truth.csv
(file, group, transformation; originals have transformation "original", the singles group -1).

Scores (every method is scored on its groups: the pairs a method reports, joined as connected
components, as a user sees them):

- overall: pairwise precision, recall and F1 over all pairs of images in the same group;
- per transformation T: recall over the (original, T copy) pairs; precision over the pairs
  found that hold a T copy; F1 of the two.

Methods, all in one run on the same files:

- hashsearch: `build_collection` (efficientnet-lite0 features, cached; `--method`, `--bits`,
  the mih index) then `find_duplicates` (radius search, optional cosine check); time = features
  + fit + index + search. A line "hashsearch stages" splits it (features, fit, index, then
  find_duplicates' read, whiten, search, confirm, group, files) and counts the pairs found within
  the radius and kept by the check. A sweep of radius and similarity is printed for the record
  (--no-sweep skips it).
- imagededup 0.3.3 PHash, DHash, WHash, AHash: `encode_images` then `find_duplicates` at its
  default threshold (10) and, for the record, at the threshold that gives it the best F1 here;
  a line per method splits its time at 10 into encode and find_duplicates.
  Its CNN method is not run: it needs torchvision (no build of it for this CPU torch) and
  downloads MobileNet weights at run time, which this machine cannot.
- imagehash 4.3 phash and dhash (64 bits): hashes of every file, then every pair compared
  (imagehash has no search), at the threshold with the best F1 here and at 10.

Run:  flock /tmp/hashsearch-bench.lock nice -n 5 python benchmarks/duplicates.py --out benchmarks/results/duplicates.md

Small folders (--small SIZES, see small_folders()): folders of 30 to 800 real photos with a few
planted copies, the default threshold against the rules it was chosen from, per folder size, the
groups the narrow warning flags, and which image each keep rule keeps (the original or a copy):
      python benchmarks/duplicates.py --small 30,60,125,250,500,800 --out benchmarks/results/duplicates-small.md
With --codes-only-radii R1,R2,... the same folders are scored with codes only (no feature check), by
radius (see codes_only_sweep()); on the large set, a radius sweep with codes only is
--sweep-similarity none --sweep-radius 0,2,4,...
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import random
import sys
import tarfile
import time
import types
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import Report

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
TRANSFORMS = ("jpeg", "resize", "crop", "color", "hflip", "rot90", "text", "border")
PEERS = (
    "imagededup-PHash",
    "imagededup-DHash",
    "imagededup-WHash",
    "imagededup-AHash",
    "imagehash-phash",
    "imagehash-dhash",
)
THRESHOLDS = (0, 2, 4, 6, 8, 10, 12, 14, 16)


# -- the set --------------------------------------------------------------------------------------


def transform(im: Image.Image, name: str, rng: random.Random) -> tuple[Image.Image, int]:
    """One documented transformation of `im`; returns (image, JPEG quality to save it at)."""
    w, h = im.size
    if name == "jpeg":
        return im, rng.randint(20, 90)
    if name == "resize":
        s = rng.uniform(0.3, 2.0)
        return im.resize((max(8, round(w * s)), max(8, round(h * s))), Image.Resampling.BICUBIC), 90
    if name == "crop":
        fx, fy = rng.uniform(0.05, 0.20), rng.uniform(0.05, 0.20)
        lx, ty = rng.uniform(0, fx), rng.uniform(0, fy)
        box = (round(w * lx), round(h * ty), round(w * (1 - (fx - lx))), round(h * (1 - (fy - ty))))
        return im.crop(box), 90
    if name == "color":
        im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.6, 1.4))
        return ImageEnhance.Contrast(im).enhance(rng.uniform(0.6, 1.4)), 90
    if name == "hflip":
        return im.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 90
    if name == "rot90":
        return im.transpose(rng.choice([Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270])), 90
    if name == "text":
        im = im.copy()
        draw = ImageDraw.Draw(im)
        size = max(8, round(h * rng.uniform(0.08, 0.14)))
        font = ImageFont.load_default(size=size)
        text = rng.choice(["(c) hashsearch 2026", "SAMPLE", "my holiday", "DSC_0042", "do not copy"])
        x, y = rng.uniform(0, 0.5) * w, rng.uniform(0, 0.85) * h
        draw.text((x, y), text, fill=rng.choice([(255, 255, 255), (0, 0, 0)]), font=font)
        return im, 90
    if name == "border":
        b = rng.uniform(0.05, 0.15)
        bw, bh = round(w * b), round(h * b)
        grey = rng.randint(0, 255)
        out = Image.new("RGB", (w + 2 * bw, h + 2 * bh), (grey, grey, grey))
        out.paste(im, (bw, bh))
        return out, 90
    raise ValueError(f"unknown transformation {name!r}")


def _flowers() -> list[bytes]:
    with tarfile.open(DATASETS / "flowers12-960.tar.gz") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")), key=lambda m: m.name)
        return [tar.extractfile(m).read() for m in members]


def _cifar(n: int, rng: random.Random, first: str = "train") -> list[bytes]:
    """n CIFAR-10 images (JPEG bytes), drawn at random from its `first` part ("train": 50,000,
    "test": 10,000), then from the other part where n is larger than the first."""
    with tarfile.open(DATASETS / "cifar10-jpg.tar.gz") as tar:
        parts = {
            part: sorted(
                (m for m in tar.getmembers() if m.isfile() and m.name.startswith(part + "/")), key=lambda m: m.name
            )
            for part in ("train", "test")
        }
        a, b = parts[first], parts["test" if first == "train" else "train"]
        if n > len(a) + len(b):
            raise ValueError(
                f"{n:,} CIFAR-10 images asked for, the set has {len(a) + len(b):,}: use fewer --images or more --groups"
            )
        chosen = rng.sample(a, min(n, len(a))) + (rng.sample(b, n - len(a)) if n > len(a) else [])
        # Read in archive order (a gzip stream cannot seek back without decompressing from the start).
        data = {m.name: tar.extractfile(m).read() for m in sorted(chosen, key=lambda m: m.offset)}
        return [data[m.name] for m in chosen]


def _saver(images: Path, rng: random.Random):
    """save(image or JPEG bytes, quality=95) -> a new random file name under `images`, the file written there."""
    names: set[str] = set()

    def save(im: Image.Image | bytes, quality: int = 95) -> str:
        while True:
            name = f"img-{rng.getrandbits(40):010x}.jpg"
            if name not in names:
                names.add(name)
                break
        if isinstance(im, bytes):
            (images / name).write_bytes(im)
        else:
            im.save(images / name, quality=quality)
        return name

    return save


def _write_truth(truth: Path, rows: list, rng: random.Random) -> Path:
    """`rows` (file, group, transformation) shuffled with `rng` and written to `truth` (CSV with a header)."""
    rng.shuffle(rows)
    with open(truth, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "group", "transformation"])
        w.writerows(rows)
    return truth


def make_set(
    folder: Path, n_images: int, n_groups: int, n_variants: int, seed: int = 0, cifar_first: str = "train"
) -> Path:
    """Write the set into `folder`/images and its truth.csv (once: kept if truth.csv exists).
    `seed` draws the CIFAR-10 images and the transformations; `cifar_first` as in `_cifar`."""
    truth = folder / "truth.csv"
    if truth.exists():
        return truth
    rng = random.Random(seed)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    flowers = _flowers()
    n_single = n_images - n_groups * (1 + n_variants)
    if n_single < 0:
        raise ValueError(f"--images {n_images} < groups * (1 + variants) = {n_groups * (1 + n_variants)}")
    n_cifar = max(0, n_groups - len(flowers)) + n_single
    cifar = _cifar(n_cifar, rng, cifar_first)
    originals: list[tuple[str, Image.Image | bytes]] = [("flowers", b) for b in flowers[:n_groups]]
    originals += [("cifar", b) for b in cifar[: max(0, n_groups - len(flowers))]]
    singles = cifar[max(0, n_groups - len(flowers)) :]
    save = _saver(images, rng)

    def upscaled(data: bytes) -> Image.Image:
        im = Image.open(io.BytesIO(data)).convert("RGB")
        return im.resize((im.width * 4, im.height * 4), Image.Resampling.BICUBIC)

    rows = []
    for g, (kind, data) in enumerate(originals):
        im = Image.open(io.BytesIO(data)).convert("RGB") if kind == "flowers" else upscaled(data)
        rows.append((save(data if kind == "flowers" else im), g, "original"))
        for t in rng.sample(TRANSFORMS, n_variants):
            out, q = transform(im, t, rng)
            rows.append((save(out, q), g, t))
    for data in singles:
        rows.append((save(upscaled(data)), -1, "original"))
    return _write_truth(truth, rows, rng)


# -- scores ---------------------------------------------------------------------------------------


def _pairs(sizes: np.ndarray) -> int:
    sizes = np.asarray(sizes, np.int64)
    return int((sizes * (sizes - 1) // 2).sum())


def _pairs_with(sizes: np.ndarray, marked: np.ndarray) -> int:
    """Pairs holding at least one marked member, over groups of `sizes` with `marked` members each."""
    return _pairs(sizes) - _pairs(sizes - marked)


def score(pred: np.ndarray, group: np.ndarray, trans: list[str]) -> dict:
    """Pairwise precision/recall/F1 overall and per transformation; `pred` and `group` are a group
    number per image (true singles have distinct groups). Counted from the contingency table, so a
    large wrong group costs no time."""
    trans_arr = np.asarray(trans)
    _, pred_id = np.unique(pred, return_inverse=True)
    _, true_id = np.unique(group, return_inverse=True)
    cell_key = pred_id.astype(np.int64) * (true_id.max() + 1) + true_id
    _, cell_id = np.unique(cell_key, return_inverse=True)
    pred_sizes, true_sizes, cell_sizes = np.bincount(pred_id), np.bincount(true_id), np.bincount(cell_id)
    tp, n_pred, n_true = _pairs(cell_sizes), _pairs(pred_sizes), _pairs(true_sizes)
    out = {"overall": _prf(tp, n_pred, n_true)}
    # The original of each true group (singles are their own).
    is_orig = trans_arr == "original"
    orig_pred = np.full(true_id.max() + 1, -1)
    orig_pred[true_id[is_orig]] = pred_id[is_orig]
    for t in TRANSFORMS:
        is_t = trans_arr == t
        found = int((pred_id[is_t] == orig_pred[true_id[is_t]]).sum())
        r = found / is_t.sum() if is_t.any() else 1.0
        n_with = _pairs_with(pred_sizes, np.bincount(pred_id, weights=is_t, minlength=len(pred_sizes)).astype(np.int64))
        ok_with = _pairs_with(
            cell_sizes, np.bincount(cell_id, weights=is_t, minlength=len(cell_sizes)).astype(np.int64)
        )
        p = ok_with / n_with if n_with else 1.0
        out[t] = (p, r, 2 * p * r / (p + r) if p + r else 0.0)
    return out


def _prf(tp: int, n_pred: int, n_true: int) -> tuple[float, float, float]:
    p = tp / n_pred if n_pred else 1.0
    r = tp / n_true if n_true else 1.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def labels_from_pairs(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    from hashsearch.duplicates import group_labels

    return group_labels(n, np.asarray(i, np.int64), np.asarray(j, np.int64))


# -- peers ----------------------------------------------------------------------------------------


def _imagededup_hashing():
    """imagededup's hash methods, without importing its CNN module (it needs torchvision)."""
    import imagededup

    root = Path(imagededup.__file__).parent
    for sub in ("methods", "utils"):
        name = f"imagededup.{sub}"
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(root / sub)]
            sys.modules[name] = pkg
    from imagededup.methods import hashing

    return hashing


def _pairs_from_dup_map(dups: dict, index: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    pi, pj = [], []
    for f, others in dups.items():
        for o in others:
            o = o[0] if isinstance(o, tuple) else o
            a, b = index[f], index[o]
            if a < b:
                pi.append(a)
                pj.append(b)
    return np.asarray(pi, np.int64), np.asarray(pj, np.int64)


def _scored_pairs(dups: dict, index: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, distance) from imagededup's find_duplicates(scores=True) map, each pair once."""
    pi, pj, pd = [], [], []
    for f, others in dups.items():
        for o, dist in others:
            a, b = index[f], index[o]
            if a < b:
                pi.append(a)
                pj.append(b)
                pd.append(dist)
    return np.asarray(pi, np.int64), np.asarray(pj, np.int64), np.asarray(pd, np.int64)


def _all_pairs_within(hashes: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of 64-bit hashes (uint64, (n,)) within Hamming t, and its distance: all pairs
    compared, as imagehash users do (it has no search)."""
    pi, pj, pd = [], [], []
    step = max(16, (1 << 24) // max(1, len(hashes)))  # rows per block: about 128 MiB of XORs at once
    for a in range(0, len(hashes), step):
        d = np.bitwise_count(hashes[a : a + step, None] ^ hashes[None, :])
        qi, qj = np.nonzero(d <= t)
        keep = qj > qi + a
        pi.append((qi[keep] + a).astype(np.int32))  # int32 and uint8: at 100,000 images there are ~10^8 pairs
        pj.append(qj[keep].astype(np.int32))
        pd.append(d[qi[keep], qj[keep]].astype(np.uint8))
    return np.concatenate(pi), np.concatenate(pj), np.concatenate(pd)


def best_threshold(pairs_at, n, group, trans, thresholds):
    best = None
    for t in thresholds:
        s = score(labels_from_pairs(n, *pairs_at(t)), group, trans)
        if best is None or s["overall"][2] > best[1]["overall"][2]:
            best = (t, s)
    return best


# -- growth with the number of images -------------------------------------------------------------


def _sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _slope(sizes: list[int], secs: list[float]) -> float:
    """Exponent k of seconds ~ n^k between the two largest sizes."""
    return float(np.log(secs[-1] / max(secs[-2], 1e-9)) / np.log(sizes[-1] / sizes[-2]))


def scale(args, rep) -> None:
    """How hashsearch's stages after the features, and imagededup's search, grow with n.

    hashsearch: n feature vectors drawn (seeded) from a feature cache file of the backbone
    (--scale-features: real photos' features, as `hashsearch index` stores them), then the
    hasher's fit, its encode, and `duplicate_groups` at the default radius and similarity (whiten,
    search, confirm, group). imagededup: PHash's `find_duplicates` at its default threshold on n
    random 64-bit hashes (its brute force costs the same whatever the hashes). Each is then
    extrapolated to --scale-to images with the exponent measured between its two largest sizes
    (for hashsearch at least 1: a stage whose fixed cost hides its growth is taken as linear, which
    overestimates it; 2 for the search and the check, whose pairs grow as n^2): an estimate,
    printed as one.
    """
    import logging
    import sqlite3

    from hashsearch.duplicates import MIN_SIMILARITY, default_radius, duplicate_groups
    from hashsearch.hashing import create_hasher

    db = sqlite3.connect(f"file:{args.scale_features}?mode=ro", uri=True)
    vecs = [np.frombuffer(b, np.float32) for (b,) in db.execute("SELECT vec FROM features")]
    db.close()
    dim = max(len(v) for v in vecs)
    X = np.stack([v for v in vecs if len(v) == dim])
    sizes = [n for n in _sizes(args.scale) if n <= len(X)]
    rng = np.random.default_rng(0)
    radius = default_radius(args.bits)
    rep(
        f"growth: hashsearch's stages after the features on n of the {len(X):,} feature vectors of "
        f"{args.scale_features.name} ({args.method} {args.bits} bits, radius {radius}, similarity "
        f"{MIN_SIMILARITY}); imagededup PHash find_duplicates (t=10, {args.workers} workers) on n random hashes"
    )
    names = ("fit", "encode", "whiten", "search", "confirm", "group")
    rows = {k: [] for k in names}
    # Untimed: load the compiled kernels of both searches and of the check (once per process).
    x = X[:2000]
    codes = create_hasher(args.method, n_bits=args.bits, seed=0).fit(x).encode(x)
    for search in ("mih", "flat"):
        duplicate_groups(codes, radius, features=x, min_similarity=MIN_SIMILARITY, search=search)
    for n in sizes:
        x = X[np.sort(rng.choice(len(X), n, replace=False))]
        t = time.perf_counter()
        hasher = create_hasher(args.method, n_bits=args.bits, seed=0).fit(x)
        rows["fit"].append(time.perf_counter() - t)
        t = time.perf_counter()
        codes = hasher.encode(x)
        rows["encode"].append(time.perf_counter() - t)
        stats: dict = {}
        duplicate_groups(codes, radius, features=x, min_similarity=MIN_SIMILARITY, stats=stats)
        for k in ("whiten", "search", "confirm", "group"):
            rows[k].append(stats[k])
        within = stats["pairs within radius"]
        rep(
            f"  hashsearch n={n:>7,}: "
            + ", ".join(f"{k} {rows[k][-1]:.2f}" for k in names)
            + f" s; search by {stats['search method']}, pairs within radius {within:,} "
            f"({within / (n * (n - 1) / 2):.2%} of all), kept {stats['pairs kept']:,}"
        )
    logging.disable(logging.INFO)
    method = _imagededup_hashing().PHash(verbose=False)
    peer_sizes, peer_secs = _sizes(args.scale_peer), []
    for n in peer_sizes:
        hashes = rng.integers(0, 2**63, n, dtype=np.int64)
        enc = {f"img-{k}.jpg": f"{int(v):016x}" for k, v in enumerate(hashes)}
        t = time.perf_counter()
        method.find_duplicates(encoding_map=enc, max_distance_threshold=10, num_dist_workers=args.workers)
        peer_secs.append(time.perf_counter() - t)
        rep(f"  imagededup PHash find_duplicates n={n:>7,}: {peer_secs[-1]:.2f} s")
    logging.disable(logging.NOTSET)
    to = args.scale_to
    rep(
        f"estimate at {to:,} images: each stage as n^k from its time at the largest n, k measured between the "
        "two largest sizes, at least 1 (a fixed cost taken as linear), and 2 for search and confirm (their "
        "pairs grow as n^2: the share of all pairs within the radius stays put, above)"
    )
    total = 0.0
    for k in names:
        if len(sizes) >= 2:
            e = _slope(sizes, rows[k])
            used = 2.0 if k in ("search", "confirm") else max(e, 1.0)
            est = rows[k][-1] * (to / sizes[-1]) ** used
            total += est
            rep(f"  hashsearch {k:8s} measured k={e:5.2f}, used {used:.2f} -> {est:8.1f} s (estimate)")
    rep(f"  hashsearch after the features: {total:.1f} s (estimate), plus the features (linear in the images)")
    e = _slope(peer_sizes, peer_secs)
    est = peer_secs[-1] * (to / peer_sizes[-1]) ** e
    rep(f"  imagededup PHash find_duplicates k={e:4.2f} -> {est:8.1f} s (estimate), plus its encode (linear)")


# -- the run --------------------------------------------------------------------------------------


def index_folder(folder: Path, args):
    """hashsearch's collection of the images in `folder` (no labels): EfficientNet-Lite0 at 128 px,
    `args.method` at `args.bits`, a mih index, duplicates kept; returns (collection, report)."""
    from hashsearch.backbones import DEFAULT_BACKBONE, create_backbone
    from hashsearch.data.sources import open_source
    from hashsearch.hashing import create_hasher
    from hashsearch.pipeline import build_collection

    return build_collection(
        open_source(str(folder), "none"),
        create_backbone(DEFAULT_BACKBONE, input_size=128),
        create_hasher(args.method, n_bits=args.bits, seed=0),
        index="mih",
        cache_dir=args.cache_dir,
        keep_duplicates=True,
        progress=False,
        workers=args.workers,
    )


def hard_end(args, rep) -> None:
    """Recall at the hard end of two ranges, on real photos: --hard-end N flowers12 photos (every
    960/N-th), each with a JPEG quality-20 copy and a copy with 18% of its width and height cut
    away (9% a side), saved at quality 90, and nothing else. Precision here is over those 3N
    images only (look-alike photos of a species are the false pairs)."""
    from hashsearch.duplicates import cosine_of_pairs, duplicate_groups, near_pairs, whiten

    n_photos = args.hard_end
    folder = args.data / f"hard-{n_photos}"
    photos = _flowers()[:: max(1, 960 // n_photos)][:n_photos]
    names, trans, group = [], [], []
    folder.mkdir(parents=True, exist_ok=True)
    for k, data in enumerate(photos):
        im = Image.open(io.BytesIO(data)).convert("RGB")
        w, h = im.size
        (folder / f"p{k:03d}.jpg").write_bytes(data)
        im.save(folder / f"p{k:03d}-q20.jpg", quality=20)
        c = 0.09
        im.crop((round(w * c), round(h * c), round(w * (1 - c)), round(h * (1 - c)))).save(
            folder / f"p{k:03d}-crop.jpg", quality=90
        )
        for suffix, t in (("", "original"), ("-q20", "jpeg"), ("-crop", "crop")):
            names.append(f"p{k:03d}{suffix}.jpg")
            trans.append(t)
            group.append(k)
    group = np.asarray(group)
    coll, _ = index_folder(folder, args)
    ids = np.sort(coll.index.ids)
    row_of = np.array([names.index(os.path.basename(e["path"])) for e in coll.entries(ids.tolist())])
    codes, feats = coll.index.get_codes(ids), np.asarray(coll.features_of(ids), np.float32)
    n = len(names)
    rep(
        f"hard end: {n_photos} flowers12 photos, each with a JPEG quality-20 copy and an 18% crop (9% a side); "
        f"{args.method} {args.bits} bits, radius 16"
    )
    rep("rule, min_similarity -> recall of the q20 copies, of the crops; precision and F1 over all pairs")

    def line(name, groups_rows):
        p = np.arange(n) + 10**9
        for gi, rows_ in enumerate(groups_rows):
            p[row_of[rows_]] = gi
        sc = score(p, group, trans)
        o = sc["overall"]
        rep(f"  {name}: jpeg q20 {sc['jpeg'][1]:.3f}, crop 18% {sc['crop'][1]:.3f}; P {o[0]:.3f} F1 {o[2]:.3f}")

    from hashsearch.codes import hamming_distances
    from hashsearch.duplicates import unit_rows

    white = unit_rows(whiten(feats))
    coll_row = np.argsort(row_of)  # names index -> collection row
    for t in ("jpeg", "crop"):
        copies = [k for k in range(n) if trans[k] == t]
        a, b = coll_row[copies], coll_row[[k - (1 if t == "jpeg" else 2) for k in copies]]  # each copy, its original
        d = np.array([hamming_distances(codes[x : x + 1], codes[y : y + 1])[0, 0] for x, y in zip(a, b)])
        sim = np.einsum("nd,nd->n", white[a], white[b])
        rep(
            f"  {t} copies to their original: Hamming distance <= 16 for {np.mean(d <= 16):.3f} (median {np.median(d):.0f}); "
            f"whitened similarity median {np.median(sim):.3f}, >= 0.6 for {np.mean(sim >= 0.6):.3f}, >= 0.4 for {np.mean(sim >= 0.4):.3f}"
        )
    for ms in (0.6, 0.5, 0.45, 0.4):
        line(f"complete linkage, similarity {ms}", duplicate_groups(codes, 16, features=feats, min_similarity=ms))
    pi, pj, _ = near_pairs(codes, 16)
    keep = cosine_of_pairs(whiten(feats), pi, pj) >= 0.6
    labels = labels_from_pairs(n, pi[keep], pj[keep])
    line(
        "previous rule (connected components), similarity 0.6", [np.flatnonzero(labels == v) for v in np.unique(labels)]
    )


# -- small folders ---------------------------------------------------------------------------------


#: Raw (not whitened) cosine of the backbone's features at or above which two flowers12 photos
#: count as one photo: the set holds the same photo more than once (re-encoded, shifted, cropped,
#: mirrored; looked at by eye: pairs at 0.93-1.0 are mostly the same photo, at 0.90-0.93 some are).
SAME_PHOTO_COSINE = 0.9


def distinct_flowers(args) -> list[int]:
    """The flowers12 photos (indices into `_flowers()`) of which no two are the same photo: of each
    set of photos joined by a raw cosine of at least `SAME_PHOTO_COSINE`, the first only. The
    features are efficientnet-lite0's at 128 px (`index_folder` of all 960, cached)."""
    folder = args.data / "flowers12-all"
    flowers = _flowers()
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for k, data in enumerate(flowers):
            (folder / f"f{k:03d}.jpg").write_bytes(data)
    coll, _ = index_folder(folder, args)
    ids = np.sort(coll.index.ids)
    row = [int(os.path.basename(e["path"])[1:4]) for e in coll.entries(ids.tolist())]
    x = np.zeros((len(flowers), coll.features_of(ids[:1]).shape[1]), np.float32)
    x[row] = coll.features_of(ids)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    i, j = np.nonzero(np.triu(x @ x.T >= SAME_PHOTO_COSINE, k=1))
    labels = labels_from_pairs(len(flowers), i, j)
    _, first = np.unique(labels, return_index=True)
    return sorted(first.tolist())


def make_small(folder: Path, n_photos: int, seed: int, pool: list[int], share: float = 0.15) -> Path:
    """A small folder as a user has one: `n_photos` flowers12 photos drawn at random (`seed`) from
    `pool` (`distinct_flowers`), of which a `share` (at least 2) get 1-3 copies each, one
    transformation per copy (drawn without repetition, parameters as in `transform`), saved under
    random names in `folder`/images, with truth.csv (file, group, transformation: every photo is a
    group of its own). Written once."""
    truth = folder / "truth.csv"
    if truth.exists():
        return truth
    rng = random.Random(1_000_003 * seed + n_photos)
    flowers = _flowers()
    if n_photos > len(pool):
        raise ValueError(f"--small: at most {len(pool)} photos (distinct flowers12 photos), got {n_photos}")
    chosen = rng.sample(pool, n_photos)
    with_copies = set(rng.sample(range(n_photos), max(2, round(share * n_photos))))
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    save = _saver(images, rng)

    rows = []
    for g, k in enumerate(chosen):
        rows.append((save(flowers[k]), g, "original"))
        if g in with_copies:
            im = Image.open(io.BytesIO(flowers[k])).convert("RGB")
            for t in rng.sample(TRANSFORMS, rng.randint(1, 3)):
                out, q = transform(im, t, rng)
                rows.append((save(out, q), g, t))
    return _write_truth(truth, rows, rng)


def small_folder_data(folder: Path, n_photos: int, seed: int, pool: list[int], args) -> dict:
    """The folder of `make_small`, indexed as `hashsearch duplicates FOLDER` indexes it (itq 64
    bits fitted on the folder, efficientnet-lite0 at 128 px): codes, stored features, digests,
    paths and the truth, row for row. Kept in `folder`/data.npz once computed."""
    from hashsearch.types import Codes

    saved = folder / "data.npz"
    if not saved.exists():
        truth = make_small(folder, n_photos, seed, pool)
        with open(truth) as f:
            rows = list(csv.DictReader(f))
        pos = {r["file"]: k for k, r in enumerate(rows)}
        coll, _ = index_folder(folder / "images", args)
        ids = np.sort(coll.index.ids)
        entries = coll.entries(ids.tolist())
        order = np.array([pos[os.path.basename(e["path"])] for e in entries])
        np.savez(
            saved,
            codes=coll.index.get_codes(ids).data,
            n_bits=coll.n_bits,
            features=np.asarray(coll.features_of(ids), np.float32),
            digests=np.array([e["digest"] for e in entries]),
            paths=np.array([e["path"] for e in entries]),
            group=np.array([int(rows[k]["group"]) for k in order]),
            trans=np.array([rows[k]["transformation"] for k in order]),
        )
    z = np.load(saved)
    return {
        "codes": Codes(z["codes"], int(z["n_bits"])),
        "features": z["features"],
        "digests": z["digests"].tolist(),
        "paths": z["paths"].tolist(),
        "group": z["group"],
        "trans": z["trans"].tolist(),
    }


def _small_rules() -> dict:
    """The rules measured on small folders: name -> function(folder data) -> groups of rows.

    Thresholds only (the codes' radius is the default), one whitening each."""
    import math

    from hashsearch.duplicates import MIN_SIMILARITY, _groups, _to_unit, default_min_similarity, whiten

    def white(d, shrinkage=1.0):
        key = ("white", shrinkage)
        if key not in d:
            d[key] = _to_unit(whiten(d["features"], shrinkage=shrinkage))
        return d[key]

    def run(d, threshold, shrinkage=1.0):
        d.setdefault("thresholds", []).append(threshold)
        return _groups(d["codes"], 16, d["digests"], white(d, shrinkage), threshold, None, {})

    def null(d, z):
        # The folder's own similarities: all pairs (duplicates are a few of them), mean + z sd.
        w = white(d)
        s = (w @ w.T)[np.triu_indices(len(w), 1)]
        return max(MIN_SIMILARITY, float(s.mean() + z * s.std()))

    rules = {f"fixed {t}": (lambda t: lambda d: run(d, t))(t) for t in (0.4, 0.45, 0.5, 0.55)}
    for n0, a, cap in (
        (2000, 0.03, 0.55),
        (4000, 0.03, 0.55),
        (4000, 0.05, 0.5),
        (4000, 0.05, 0.55),
        (8000, 0.05, 0.5),
    ):
        rules[f"log n0={n0} a={a} cap={cap}"] = (
            lambda n0, a, cap: (
                lambda d: run(d, min(cap, MIN_SIMILARITY + a * max(0.0, math.log2(n0 / len(d["group"])))))
            )
        )(n0, a, cap)
    for sh in (2.0, 4.0):
        rules[f"shrinkage {sh:g}, 0.5"] = (lambda sh: lambda d: run(d, 0.5, sh))(sh)
    for z in (8, 10):
        rules[f"mean + {z} sd"] = (lambda z: lambda d: run(d, null(d, z)))(z)
    rules["default (default_min_similarity)"] = lambda d: run(d, default_min_similarity(len(d["group"])))
    return rules


def _small_score(d: dict, groups: list[np.ndarray]) -> dict:
    """P, R, F1 (pairwise), the groups found, the false ones (holding two different photos), the
    planted groups found exactly, and the weakest similarity to the kept image... of each group
    found, by whether it is false."""
    g = d["group"]
    pred = np.arange(len(g)) + 10**9
    for k, rows in enumerate(groups):
        pred[rows] = k
    p, r, f1 = score(pred, g, d["trans"])["overall"]
    truth = {}
    for row, v in enumerate(g.tolist()):
        truth.setdefault(v, set()).add(row)
    planted = {frozenset(v) for v in truth.values() if len(v) > 1}
    false = [rows for rows in groups if len(set(g[rows].tolist())) > 1]
    return {
        "p": p,
        "r": r,
        "f1": f1,
        "found": len(groups),
        "false": len(false),
        "exact": sum(frozenset(rows.tolist()) in planted for rows in groups),
        "planted": len(planted),
    }


def _default_groups(data, sizes, seeds):
    """The default's groups in each folder, as `hashsearch duplicates FOLDER` reports them: yields
    (folder data, rows, members, alike, kept), `alike` the members' whitened similarities and
    `kept` the library's choose_keep 'largest' given them, as find_duplicates gives them."""
    from hashsearch.duplicates import Member, _to_unit, choose_keep, file_info, whiten

    rule = _small_rules()["default (default_min_similarity)"]
    for n in sizes:
        for seed in seeds:
            d = data[n, seed]
            white = _to_unit(whiten(d["features"]))
            for rows in rule(d):
                members = [Member(int(r), "", None, d["paths"][r], "", **file_info(d["paths"][r])) for r in rows]
                alike = white[rows] @ white[rows].T
                yield d, rows, members, alike, choose_keep(members, "largest", alike)


def _narrow(data, sizes, seeds, rep, margins=(0.05, 0.1, 0.15)) -> None:
    """How many groups the default flags as passing narrowly (a member's similarity to the kept
    image less than a margin above the threshold, both rounded to 4 decimals as in
    `DuplicateReport.narrow_groups`), false groups and true ones apart: what `hashsearch
    duplicates` shows (the default threshold, keep=largest)."""
    from hashsearch.duplicates import default_min_similarity

    weakest = {True: [], False: []}
    for d, rows, members, alike, kept in _default_groups(data, sizes, seeds):
        k = members.index(kept)
        low = round(float(min(np.delete(alike[k], k))), 4)
        weakest[len(set(d["group"][rows].tolist())) > 1].append((low, default_min_similarity(len(d["group"]))))
    f, t_ = weakest[True], weakest[False]

    def flagged(w, m):
        return sum(low < round(t + m, 4) for low, t in w)

    rep(
        f"groups of the default whose weakest member (similarity to the image `largest` keeps) is less than m "
        f"above the threshold: false groups / true groups flagged, of {len(f)} / {len(t_)}: "
        + ", ".join(f"m={m}: {flagged(f, m)} / {flagged(t_, m)}" for m in margins)
    )


def _keep_rules() -> dict:
    """Rules that pick the image to keep in a group: name -> function(members, alike) -> member."""
    from dataclasses import replace

    from hashsearch.duplicates import choose_keep

    def px(m):
        return (m.width or 0) * (m.height or 0)

    def mean_alike(members, alike):  # as choose_keep's `largest` computes it
        return [round(float((alike[k].sum() - alike[k, k]) / (len(members) - 1)), 4) for k in range(len(members))]

    def most_alike(ms, a):
        mean = mean_alike(ms, a)
        return min(ms, key=lambda m: (-mean[ms.index(m)], -px(m), -(m.bytes or 0), m.id))

    def untimed(ms, a=None):
        # choose_keep as if every file had the same time (copies that kept their original's time):
        # make_small writes each original before its copies, so the files' times favour it by construction.
        kept = choose_keep([replace(m, mtime=None) for m in ms], "largest", a)
        return next(m for m in ms if m.id == kept.id)

    return {
        "largest, times ignored (choose_keep)": untimed,
        "largest (choose_keep, as the library)*": lambda ms, a: choose_keep(ms, "largest", a),
        "pixels, then bytes (largest to f8649ba)": lambda ms, a: untimed(ms),
        "most alike, then pixels, then bytes": most_alike,
        "pixels, then fewest bytes": lambda ms, a: min(ms, key=lambda m: (-px(m), m.bytes or 0, m.id)),
        "shortest-path (random names: chance)": lambda ms, a: choose_keep(ms, "shortest-path"),
    }


def _kept(data, sizes, seeds, rep) -> None:
    """Which image each rule of `_keep_rules` keeps, in the default's groups that hold exactly one
    original and at least one copy of it: the original, or else a copy (by transformation)."""
    rules = _keep_rules()
    counts = {name: dict.fromkeys(("original", "larger", *TRANSFORMS), 0) for name in rules}
    n_groups = 0
    for d, rows, members, alike, _ in _default_groups(data, sizes, seeds):
        trans, group = [d["trans"][r] for r in rows], d["group"][rows]
        orig = [k for k, t in enumerate(trans) if t == "original"]
        if len(orig) != 1 or not any(t != "original" and g == group[orig[0]] for t, g in zip(trans, group)):
            continue
        n_groups += 1
        original = members[orig[0]]
        for name, rule in rules.items():
            kept = rule(members, alike)
            c = counts[name]
            if kept is original:
                c["original"] += 1
            else:
                c[trans[members.index(kept)]] += 1
                c["larger"] += (kept.width or 0) * (kept.height or 0) > (original.width or 0) * (original.height or 0)
    rep(
        f"which image is kept, in the {n_groups} groups of the default that hold one original and a copy of it: "
        "the original (of the groups), or else a copy: how many of those have more pixels than the original "
        "(larger), and their transformations. Not oldest: make_small writes each original before its copies, "
        "so oldest keeps it by construction; for the same reason the rule marked * (largest as the library has "
        "it, the older file before bytes) is favoured here: read 'times ignored' for what largest does where the "
        "times say nothing"
    )
    rep(f"{'keep rule':40s} {'original':>8s} {'larger':>6s} " + " ".join(f"{t:>6s}" for t in TRANSFORMS))
    for name, c in counts.items():
        rep(
            f"{name:40s} {c['original']:>4d}/{n_groups:<3d} {c['larger']:>6d} "
            + " ".join(f"{c[t]:>6d}" for t in TRANSFORMS)
        )


def small_folders(args, rep) -> None:
    """Duplicates in small folders of real photos: the rules of `_small_rules`, per folder size, on
    the seeds the default was chosen on (--small-choice-seeds) and on others (--small-seeds)."""
    from hashsearch.duplicates import default_min_similarity

    sizes = _sizes(args.small)
    pool = distinct_flowers(args)
    rep(
        f"small folders: n photos drawn from the {len(pool)} distinct flowers12 photos (of 960: of each set of "
        f"photos at a raw feature cosine >= {SAME_PHOTO_COSINE} only one, the set holding the same photo more than "
        "once); 15% of them (at least 2) get 1-3 copies, one transformation each (as in the large set); "
        f"{args.method} {args.bits} bits fitted on the folder, radius 16, as `hashsearch duplicates FOLDER` does"
    )
    rep(
        "per size: F1 (pairwise, mean over the seeds), false groups (groups holding two different photos) of "
        "the groups found, planted groups found exactly (all their images, nothing else) of those planted; sums over the seeds"
    )
    rules = _small_rules()
    every = [
        (n, seed) for seeds in (args.small_choice_seeds, args.small_seeds) for seed in _sizes(seeds) for n in sizes
    ]
    for n, seed in every:
        make_small(args.data / "small" / f"small-{n}-seed{seed}", n, seed, pool)
    # Every copy's features in one extraction (cached by content); each folder is then indexed on its own.
    from hashsearch.backbones import DEFAULT_BACKBONE, create_backbone
    from hashsearch.data.sources import open_source
    from hashsearch.pipeline.local import extract_features

    if not all((args.data / "small" / f"small-{n}-seed{seed}" / "data.npz").exists() for n, seed in every):
        extract_features(
            open_source(str(args.data / "small"), "none"),
            create_backbone(DEFAULT_BACKBONE, input_size=128),
            cache_dir=args.cache_dir,
            progress=False,
            workers=args.workers,
        )
    for title, seeds in (
        ("choice seeds", _sizes(args.small_choice_seeds)),
        ("reported seeds", _sizes(args.small_seeds)),
    ):
        if not seeds:
            rep("")
            rep(f"{title}: none given")
            continue
        data = {}
        for n in sizes:
            for seed in seeds:
                folder = args.data / "small" / f"small-{n}-seed{seed}"
                data[n, seed] = small_folder_data(folder, n, seed, pool, args)
        images = {n: sum(len(data[n, s]["group"]) for s in seeds) for n in sizes}
        rep("")
        rep(
            f"{title} {','.join(map(str, seeds))}: images per size over the seeds "
            + ", ".join(f"{n}: {images[n]}" for n in sizes)
        )
        rep(f"{'rule':34s} " + " ".join(f"{n:>20d}" for n in sizes) + "  false missed  cost F1 mean")
        names = rules if title == "choice seeds" else [k for k in rules if k in args.small_report.split("|")]
        costs = {}
        for name in names:
            cells, n_false, n_missed, f1s = [], 0, 0, []
            for n in sizes:
                sc = [_small_score(data[n, s], rules[name](data[n, s])) for s in seeds]
                f1 = float(np.mean([x["f1"] for x in sc]))
                false, found = sum(x["false"] for x in sc), sum(x["found"] for x in sc)
                exact, planted = sum(x["exact"] for x in sc), sum(x["planted"] for x in sc)
                cells.append(f"{f1:.3f} {false:>2d}/{found:<3d} {exact:>3d}/{planted:<3d}")
                n_false += false
                n_missed += planted - exact
                f1s.append(f1)
            costs[name] = 3 * n_false + n_missed
            rep(
                f"{name:34s} "
                + " ".join(f"{c:>20s}" for c in cells)
                + f"  {n_false:>5d} {n_missed:>6d} {costs[name]:>5d} {np.mean(f1s):.3f}"
            )
        rep(
            f"lowest cost (3 x false groups + planted groups not found exactly) on the {title}: {min(costs, key=costs.get)}"
        )
        _narrow(data, sizes, seeds, rep)
        _kept(data, sizes, seeds, rep)
    rep("")
    rep(
        "default_min_similarity(n) at these sizes: "
        + ", ".join(f"{n}: {default_min_similarity(n):.3f}" for n in sizes + [1000, 2000, 4000, 10_000])
    )


def codes_only_sweep(args, rep) -> None:
    """Codes only (no feature check, as `hashsearch duplicates --codes-only` or a collection indexed
    with --no-features), by radius, in the small folders of `small_folders` (the seeds reported and
    the choice seeds apart): precision, recall, F1 (pairwise), the images put in a group (what
    --move-to --yes would touch: all but one per group), false groups and planted groups found
    exactly; and, for comparison, the default with the feature check at radius 16."""
    from hashsearch.duplicates import _groups, _to_unit, default_min_similarity, whiten

    sizes = _sizes(args.small)
    radii = _sizes(args.codes_only_radii)
    pool = distinct_flowers(args)
    rep(
        f"codes only (no feature check) in small folders: n flowers12 photos with 15% planted copies (make_small), "
        f"{args.method} {args.bits} bits fitted on the folder, complete linkage; sums over the folder sizes "
        f"{','.join(map(str, sizes))}"
    )
    rep(
        "columns: P R F1 (pairwise, pooled over the folders), images in a group / images, duplicates (images "
        "not kept) / images, false groups (holding two different photos) / groups found, planted groups found "
        "exactly / planted"
    )
    for title, seeds in (
        ("reported seeds", _sizes(args.small_seeds)),
        ("choice seeds", _sizes(args.small_choice_seeds)),
    ):
        data = {
            (n, s): small_folder_data(args.data / "small" / f"small-{n}-seed{s}", n, s, pool, args)
            for n in sizes
            for s in seeds
        }
        n_images = sum(len(d["group"]) for d in data.values())
        rep("")
        rep(f"{title} {','.join(map(str, seeds))}: {n_images} images in {len(data)} folders")
        rep(
            f"{'rule':28s} {'P':>6s} {'R':>6s} {'F1':>6s} {'in groups':>14s} {'duplicates':>14s} {'false':>9s} {'exact':>9s}"
        )
        rules = [(f"codes only, radius {r}", r, False) for r in radii] + [("default (features), radius 16", 16, True)]
        for name, radius, features in rules:
            pred_all, true_all, trans_all = [], [], []
            in_groups = dups = false = found = exact = planted = 0
            for d in data.values():
                white = _to_unit(whiten(d["features"])) if features else None
                ms = default_min_similarity(len(d["group"])) if features else None
                groups = _groups(d["codes"], radius, d["digests"], white, ms, None, {})
                sc = _small_score(d, groups)
                false, found = false + sc["false"], found + sc["found"]
                exact, planted = exact + sc["exact"], planted + sc["planted"]
                in_groups += sum(len(g) for g in groups)
                dups += sum(len(g) - 1 for g in groups)
                pred = np.arange(len(d["group"])) + 10**9
                for k, rows in enumerate(groups):
                    pred[rows] = k
                k = len(pred_all)  # each folder's group numbers apart from the others'
                pred_all.append(pred + 2 * 10**9 * k)
                true_all.append(d["group"] + 10**6 * k)
                trans_all.extend(d["trans"])
            p, r, f1 = score(np.concatenate(pred_all), np.concatenate(true_all), trans_all)["overall"]
            rep(
                f"{name:28s} {p:6.3f} {r:6.3f} {f1:6.3f} {in_groups:>6d}/{n_images:<7d} {dups:>6d}/{n_images:<7d} "
                f"{false:>4d}/{found:<4d} {exact:>4d}/{planted:<4d}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/hs-dups"))
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--groups", type=int, default=1_200)
    ap.add_argument("--variants", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="draws the CIFAR-10 images and the transformations")
    ap.add_argument(
        "--cifar-first",
        choices=("train", "test"),
        default="train",
        help="the CIFAR-10 part drawn from first (the other only when more images are needed); "
        "a set to choose defaults on: --seed 1 --cifar-first test (other photos than the report's set)",
    )
    ap.add_argument("--method", default="itq")
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2, help="processes/threads every method may use")
    ap.add_argument(
        "--cache-dir", type=Path, default=None, help="feature cache (default: a new one, so every feature is computed)"
    )
    ap.add_argument("--make-only", action="store_true", help="generate the set and stop")
    ap.add_argument(
        "--no-sweep",
        dest="sweep",
        action="store_false",
        help="skip hashsearch's radius/similarity sweep (its codes-only rows hold every pair within the radius)",
    )
    ap.add_argument(
        "--peers",
        default=",".join(PEERS),
        help=f"comma-separated peers to run, of {','.join(PEERS)} ('' for none)",
    )
    ap.add_argument("--sweep-radius", default="8,12,16,20", help="radii of hashsearch's sweep")
    ap.add_argument("--sweep-similarity", default="none,0.4,0.45,0.5,0.55,0.6,0.7", help="similarities of the sweep")
    ap.add_argument(
        "--no-peer-thresholds",
        dest="peer_thresholds",
        action="store_false",
        help="run each peer at its default threshold only (not also at the one best on this set)",
    )
    ap.add_argument(
        "--imagededup-sample",
        type=int,
        default=0,
        help="above this many images, time imagededup's search on this many queries and scale it (see _imagededup_sampled)",
    )
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--scale",
        default=None,
        help="comma-separated sizes: instead of the set, time how the stages after the features grow "
        "with n (see scale()); needs --scale-features",
    )
    ap.add_argument("--scale-features", type=Path, default=None, help="a feature cache file (.sqlite) to draw from")
    ap.add_argument("--scale-peer", default="1000,2000,4000,8000", help="sizes for imagededup's search")
    ap.add_argument(
        "--hard-end",
        type=int,
        default=0,
        help="instead of the set: N flowers12 photos with a JPEG q20 copy and an 18%% crop each (see hard_end())",
    )
    ap.add_argument("--scale-to", type=int, default=100_000, help="the size the estimates are for")
    ap.add_argument(
        "--small",
        default=None,
        help="comma-separated folder sizes: instead of the set, small folders of real photos (see small_folders())",
    )
    ap.add_argument("--small-seeds", default="0,1", help="seeds of the small folders reported")
    ap.add_argument("--small-choice-seeds", default="100,101", help="seeds the default was chosen on")
    ap.add_argument(
        "--small-report",
        default="fixed 0.4|fixed 0.5|default (default_min_similarity)",
        help="|-separated rules shown on the reported seeds (every rule is shown on the choice seeds)",
    )
    ap.add_argument(
        "--codes-only-radii",
        default="",
        help="with --small: instead of the rules, codes only (no feature check) at these radii (see codes_only_sweep())",
    )
    args = ap.parse_args()
    if args.small and args.codes_only_radii:
        rep = Report(f"{args.workers} workers")
        codes_only_sweep(args, rep)
        rep.save(args.out, "Duplicates with codes only (no feature check) in small folders of real photos, by radius")
        return
    if args.small:
        rep = Report(f"{args.workers} workers")
        small_folders(args, rep)
        rep.save(args.out, "Near-duplicates in small folders of real photos: the similarity threshold by folder size")
        return
    if args.hard_end:
        rep = Report(f"{args.workers} workers")
        hard_end(args, rep)
        rep.save(
            args.out, "Near-duplicates at the hard end of two ranges: JPEG quality 20 and 18% crops of real photos"
        )
        return
    if args.scale:
        if args.scale_features is None or not args.scale_features.is_file():
            ap.error(f"--scale needs --scale-features FILE.sqlite (a feature cache file), got {args.scale_features}")
        rep = Report(f"{args.workers} workers for imagededup; hashsearch on every core")
        scale(args, rep)
        rep.save(args.out, f"Near-duplicate search: how its time grows with the number of images, to {args.scale_to:,}")
        return

    folder = args.data / (
        f"set-{args.images}"
        if (args.seed, args.cifar_first) == (0, "train")
        else f"set-{args.images}-seed{args.seed}-{args.cifar_first}"
    )
    if args.cache_dir is None:
        import tempfile

        args.data.mkdir(parents=True, exist_ok=True)
        args.cache_dir = Path(tempfile.mkdtemp(prefix="features-", dir=args.data))
    t = time.perf_counter()
    truth = make_set(folder, args.images, args.groups, args.variants, args.seed, args.cifar_first)
    made = time.perf_counter() - t
    if args.make_only:
        print(f"set at {folder} ({made:.0f} s)")
        return
    with open(truth) as f:
        rows = list(csv.DictReader(f))
    files = [r["file"] for r in rows]
    trans = [r["transformation"] for r in rows]
    g = np.array([int(r["group"]) for r in rows])
    group = np.where(g >= 0, g, 10**9 + np.arange(len(g)))  # singles: a group each
    n = len(files)
    rep = Report(f"{args.workers} workers for every method")
    rep(
        f"set: {n:,} images in {folder}: {args.groups:,} originals with {args.variants} copies each "
        f"(one transformation per copy), {int((g < 0).sum()):,} single images; "
        f"{_pairs(np.unique(group, return_counts=True)[1]):,} true pairs"
    )
    rep("")
    results = []

    # hashsearch
    from hashsearch.backbones import DEFAULT_BACKBONE
    from hashsearch.duplicates import duplicate_groups, find_duplicates

    t = time.perf_counter()
    coll, report = index_folder(folder / "images", args)
    t_build = time.perf_counter() - t
    t = time.perf_counter()
    dup = find_duplicates(coll)
    t_find = time.perf_counter() - t
    rep(
        f"hashsearch: {DEFAULT_BACKBONE} 128 px, {args.method} {args.bits} bits, radius {dup.radius}: "
        f"build {t_build:.1f} s ({report.n_computed:,} features computed, {report.n_cached:,} from the cache; "
        f"{report.timings}), find_duplicates {t_find:.2f} s"
    )
    stages = {k: report.timings.get(k, 0.0) for k in ("features", "fit", "index")} | dup.timings
    rep(
        "hashsearch stages (s): "
        + ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
        + f"; radius search by {dup.search}, pairs within radius {dup.pairs['pairs within radius']:,}, "
        f"kept by the feature check "
        f"{dup.pairs['pairs kept']:,}"
    )
    ids = np.sort(coll.index.ids)
    keys = [os.path.basename(e["path"]) for e in coll.entries(ids.tolist())]
    pos = {k: i for i, k in enumerate(files)}
    pred = np.arange(n) + 10**9
    for gi, grp in enumerate(dup.groups):
        for m in grp.members:
            pred[pos[os.path.basename(m.path)]] = gi
    s = score(pred, group, trans)
    results.append((f"hashsearch {args.method}-{args.bits} r={dup.radius} s={dup.min_similarity}", s, t_build + t_find))

    # the sweep (codes and features already computed: only the search and grouping are timed)
    codes = coll.index.get_codes(ids)
    feats = np.asarray(coll.features_of(ids), np.float32)
    row_of = np.array([pos[k] for k in keys])
    rep(
        "sweep (hashsearch, same codes): radius, min_similarity -> P R F1 overall, recall per transformation, search+group seconds"
    )
    sims = [None if x.strip().lower() == "none" else float(x) for x in args.sweep_similarity.split(",") if x.strip()]
    for radius in _sizes(args.sweep_radius) if args.sweep else ():
        for ms in sims:
            t = time.perf_counter()
            groups = duplicate_groups(codes, radius, features=feats, min_similarity=ms)
            dt = time.perf_counter() - t
            p = np.arange(n) + 10**9
            for gi, rows_ in enumerate(groups):
                p[row_of[rows_]] = gi
            sc = score(p, group, trans)
            o = sc["overall"]
            rep(
                f"  r={radius:2d} sim>={ms}: P {o[0]:.3f} R {o[1]:.3f} F1 {o[2]:.3f} | "
                + " ".join(f"{t_} {sc[t_][1]:.2f}" for t_ in TRANSFORMS)
                + f"  {dt:.2f} s"
            )
    if args.sweep:
        # The rule before complete linkage, for the record: the pairs that pass joined as connected
        # components (A~B and B~C make one group), at the defaults it had (radius 16, similarity 0.6).
        from hashsearch.duplicates import cosine_of_pairs, near_pairs, whiten

        pi, pj, _ = near_pairs(codes, 16)
        keep_ = cosine_of_pairs(whiten(feats), pi, pj) >= 0.6
        sc = score(labels_from_pairs(n, row_of[pi[keep_]], row_of[pj[keep_]]), group, trans)
        o = sc["overall"]
        rep(
            f"  previous rule (connected components) r=16 sim>=0.6: P {o[0]:.3f} R {o[1]:.3f} F1 {o[2]:.3f} | "
            + " ".join(f"{t_} {sc[t_][1]:.2f}" for t_ in TRANSFORMS)
        )
    rep("")

    peers = [x for x in args.peers.split(",") if x]
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        raise SystemExit(f"--peers: unknown {unknown}; choose from {','.join(PEERS)}")
    # The peers in the order given; the file is written after each (marked partial until the last),
    # so that a run stopped part way keeps what it measured.
    title = f"Near-duplicate groups at {n:,} images: hashsearch against imagededup and imagehash"
    index = {f: i for i, f in enumerate(files)}
    for k, peer in enumerate(peers):
        if args.out is not None:
            rest = ", ".join(peers[k:])
            lines = rep.lines + [""] + _tables(results) + ["", f"partial: written before {rest} ran"]
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(f"# {title}\n\n```\n" + "\n".join(lines) + "\n```\n")  # as Report.save writes it
        tool, name = peer.split("-")
        if tool == "imagededup":
            results += _imagededup(name, folder, files, index, n, group, trans, args, rep)
        else:
            results += _imagehash(name, folder, files, n, group, trans, args, rep)
    rep("")
    for line in _tables(results):
        rep(line)
    rep.save(args.out, title)


def _imagededup(cls, folder, files, index, n, group, trans, args, rep) -> list:
    """imagededup's `cls` hash: find_duplicates timed at its default threshold (10), and once at the
    largest threshold with its distances (scores=True), from which the pairs at each smaller one are read."""
    method = getattr(_imagededup_hashing(), cls)(verbose=False)
    t = time.perf_counter()
    enc = method.encode_images(image_dir=str(folder / "images"), num_enc_workers=args.workers)
    t_enc = time.perf_counter() - t
    if args.imagededup_sample and n > args.imagededup_sample:
        return _imagededup_sampled(cls, method, enc, t_enc, files, index, n, group, trans, args, rep)
    t = time.perf_counter()
    d10 = method.find_duplicates(encoding_map=enc, max_distance_threshold=10, num_dist_workers=args.workers)
    t10 = time.perf_counter() - t
    out = [
        (
            f"imagededup {cls} t=10 (default)",
            score(labels_from_pairs(n, *_pairs_from_dup_map(d10, index)), group, trans),
            t_enc + t10,
        )
    ]
    rep(f"imagededup {cls} stages (s): encode {t_enc:.2f}, find_duplicates at t=10 {t10:.2f}")
    if args.peer_thresholds:
        dmax = method.find_duplicates(
            encoding_map=enc, max_distance_threshold=max(THRESHOLDS), scores=True, num_dist_workers=args.workers
        )
        pi, pj, pd = _scored_pairs(dmax, index)
        bt, bs = best_threshold(lambda th: (pi[pd <= th], pj[pd <= th]), n, group, trans, THRESHOLDS)
        out.append((f"imagededup {cls} t={bt} (best here)", bs, t_enc + t10))
    return out


def _imagededup_sampled(cls, method, enc, t_enc, files, index, n, group, trans, args, rep) -> list:
    """imagededup where its quadratic search would outlast the run: its search (the same brute force
    find_duplicates runs, HashEval, on its workers) timed for --imagededup-sample queries against
    all n hashes and scaled by n / sample (each query scans all n: linear in the queries); its
    groups are the pairs of its hashes within t=10, found by comparing every pair here, checked
    against what its own search returned for the sampled queries."""
    import sys as _sys

    hash_eval = _sys.modules["imagededup.handlers.search.retrieval"].HashEval
    k = args.imagededup_sample
    rng = np.random.default_rng(0)
    sample = sorted(rng.choice(len(files), k, replace=False).tolist())
    queries = {files[i]: enc[files[i]] for i in sample}
    t = time.perf_counter()
    res = hash_eval(
        test=enc, queries=queries, distance_function=method.hamming_distance, verbose=False, threshold=10,
        num_dist_workers=args.workers,
    ).retrieve_results(scores=False)  # fmt: skip
    t_sample = time.perf_counter() - t
    t_find = t_sample * n / k
    hashes = np.array([int(enc[f], 16) for f in files], np.uint64)
    # Within 10 at most: at 100,000 images AHash's pairs within 16 would not fit in memory.
    pi, pj, pd = _all_pairs_within(hashes, 10)
    theirs = {(index[q], index[o]) for q, others in res.items() for o in others}
    asked = np.isin(pi, sample) & (pd <= 10), np.isin(pj, sample) & (pd <= 10)
    mine = set(zip(pi[asked[0]].tolist(), pj[asked[0]].tolist())) | set(
        zip(pj[asked[1]].tolist(), pi[asked[1]].tolist())
    )
    same = theirs == mine
    rep(
        f"imagededup {cls} stages (s): encode {t_enc:.2f}; its search for {k:,} of the {n:,} hashes "
        f"{t_sample:.2f}, so {t_find:.1f} for all (estimate: x {n / k:.0f}); its pairs for those queries "
        f"{'are' if same else 'are NOT'} the pairs within 10 found here ({len(theirs):,} and {len(mine):,})"
    )
    sc = score(labels_from_pairs(n, pi[pd <= 10], pj[pd <= 10]), group, trans)
    out = [(f"imagededup {cls} t=10 (search est.)", sc, t_enc + t_find)]
    if args.peer_thresholds:  # the time is its search's at t=10 (at a smaller t it scans the same hashes)
        bt, bs = best_threshold(
            lambda th: (pi[pd <= th], pj[pd <= th]), n, group, trans, [t for t in THRESHOLDS if t <= 10]
        )
        out.append((f"imagededup {cls} t={bt} (best<=10, est.)", bs, t_enc + t_find))
    return out


def _imagehash(fn_name, folder, files, n, group, trans, args, rep) -> list:
    """imagehash's `fn_name`: every pair compared once (imagehash has no search), the pairs within
    each threshold read from it."""
    import imagehash

    fn = getattr(imagehash, fn_name)
    t = time.perf_counter()
    hs = []
    for f in files:
        with Image.open(folder / "images" / f) as im:
            h = fn(im).hash.reshape(-1)
        hs.append(int("".join("1" if b else "0" for b in h), 2))
    t_enc = time.perf_counter() - t
    arr = np.array(hs, np.uint64)
    t = time.perf_counter()
    pi, pj, pd = _all_pairs_within(arr, max(THRESHOLDS))
    t_pairs = time.perf_counter() - t
    rep(f"imagehash {fn_name} stages (s): hashes {t_enc:.2f}, every pair compared {t_pairs:.2f}")

    def at(th):
        return pi[pd <= th], pj[pd <= th]

    out = [(f"imagehash {fn_name} t=10", score(labels_from_pairs(n, *at(10)), group, trans), t_enc + t_pairs)]
    if args.peer_thresholds:
        bt, bs = best_threshold(at, n, group, trans, THRESHOLDS)
        out.append((f"imagehash {fn_name} t={bt} (best here)", bs, t_enc + t_pairs))
    return out


def _tables(results) -> list[str]:
    """The overall and per-transformation tables of `results` [(name, scores, seconds)], as lines."""
    out = ["overall (pairwise over groups) and time (features/hashes + search + grouping; hashsearch: + fit + index)"]
    out.append(f"{'method':40s} {'P':>6s} {'R':>6s} {'F1':>6s} {'time s':>8s}")
    for name, s, secs in results:
        p, r, f1 = s["overall"]
        out.append(f"{name:40s} {p:6.3f} {r:6.3f} {f1:6.3f} {secs:8.1f}")
    out.append("")
    out.append(
        "F1 per transformation (recall over (original, copy) pairs; precision over the pairs found with such a copy)"
    )
    out.append(f"{'method':40s} " + " ".join(f"{t:>7s}" for t in TRANSFORMS))
    for name, s, _ in results:
        out.append(f"{name:40s} " + " ".join(f"{s[t][2]:7.3f}" for t in TRANSFORMS))
    out.append("")
    out.append("recall per transformation")
    out.append(f"{'method':40s} " + " ".join(f"{t:>7s}" for t in TRANSFORMS))
    for name, s, _ in results:
        out.append(f"{name:40s} " + " ".join(f"{s[t][1]:7.3f}" for t in TRANSFORMS))
    return out


if __name__ == "__main__":
    main()
