"""A small folder of real photos with planted duplicate groups, for the `duplicates` tests.

Eight flowers12 photos (two of one species, so that look-alikes that are not copies are
present) each get three copies (one of them two) made with Pillow: re-encoded at quality 25, halved, cropped by
6% (3% a side), recoloured, marked with text. These are the transformations found with recall
near 1 on the benchmark (crops at its light end); borders, flips, rotations and heavier crops are
found less often (benchmarks/results/duplicates.md), so they are not planted here. One photo also
gets an exact byte copy; eight more photos, some of the same species, have no copy. Loaded by
path from the test files (pytest runs with --import-mode=importlib, so test modules cannot
import each other).
"""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageFont

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "flowers12-960.tar.gz"
SPECIES = ["bluebell", "buttercup", "colts-foot", "daisy", "dandelion", "fritillary", "iris", "pansy"]


def _photos() -> dict[str, list[bytes]]:
    """The first three photos of each species used (bytes, as in the archive)."""
    out: dict[str, list[bytes]] = {}
    with tarfile.open(ARCHIVE) as tar:
        for m in sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")), key=lambda m: m.name):
            species = m.name.split("/")[-2]
            if species in SPECIES and len(out.setdefault(species, [])) < 3:
                out[species].append(tar.extractfile(m).read())
    return out


def _variants(data: bytes) -> dict[str, Image.Image | tuple[Image.Image, int]]:
    im = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = im.size
    marked = im.copy()
    font = ImageFont.load_default(size=h // 10)
    ImageDraw.Draw(marked).text((w * 0.1, h * 0.8), "(c) 2026", fill=(255, 255, 255), font=font)
    return {
        "q25": (im, 25),
        "half": im.resize((w // 2, h // 2), Image.Resampling.BICUBIC),
        "crop": im.crop((w // 33, h // 33, w - w // 33, h - h // 33)),  # 6% of each side in all
        "bright": ImageEnhance.Contrast(ImageEnhance.Brightness(im).enhance(1.25)).enhance(0.85),
        "text": marked,
    }


# Which copies each original gets (three each, the fritillary two; the first also an exact byte copy).
PLAN = {
    "bluebell": ["q25", "half", "text"],
    "buttercup": ["crop", "bright", "q25"],
    "colts-foot": ["q25", "crop", "text"],
    "daisy": ["half", "bright", "text"],
    "dandelion": ["q25", "text", "half"],
    # The weak spot: its crop and text copies have whitened similarity 0.3-0.5 to it, and its q25 copy
    # 0.45 in this folder, below the default for a folder this small (0.5: duplicates.default_min_similarity,
    # benchmarks/results/duplicates-small.md), so they are not planted.
    "fritillary": ["half", "bright"],
    "iris": ["q25", "bright", "text"],
    "pansy": ["half", "crop", "bright"],
}


def make_planted(folder: Path) -> list[set[str]]:
    """Write the set into `folder` (created); returns the planted groups as sets of file names.

    Files of one group sit in different subfolders, with names that do not give the group away.
    """
    folder.mkdir(parents=True, exist_ok=True)
    photos = _photos()
    groups: list[set[str]] = []
    for n, species in enumerate(SPECIES):
        first, *others = photos[species]
        (folder / "originals").mkdir(exist_ok=True)
        original = f"originals/{species}-{n}.jpg"
        (folder / original).write_bytes(first)
        group = {original}
        (folder / "copies").mkdir(exist_ok=True)
        for name in PLAN[species]:
            v = _variants(first)[name]
            im, q = v if isinstance(v, tuple) else (v, 92)
            path = f"copies/c{n}-{name}.jpg"
            im.save(folder / path, quality=q)
            group.add(path)
        if n == 0:
            (folder / "backup").mkdir(exist_ok=True)
            shutil.copyfile(folder / original, folder / "backup" / "same-bytes.jpg")
            group.add("backup/same-bytes.jpg")
        groups.append(group)
        # Look-alikes: other photos of the same species, no copy made.
        for k, data in enumerate(others[:1] if n % 2 else others):
            (folder / "singles").mkdir(exist_ok=True)
            (folder / "singles" / f"{species}-{k}.jpg").write_bytes(data)
    return groups
