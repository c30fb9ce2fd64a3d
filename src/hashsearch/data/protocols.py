"""Named, seeded train / query / database splits, the same on every run and every machine.

Retrieval papers report mAP under a fixed split protocol; reproducing a number means using the
same one. `split_by_class` draws a split from any labelled records; the registered protocols
(`list_protocols`, `load_protocol`) draw from CIFAR-10 (JPEG), MNIST (PNG) and flowers12, which
`cifar10_root`, `mnist_root` and `flowers12_root` unpack once into the cache folder from
``../shared/datasets/`` (`protocol_root` names the one a protocol reads).

Determinism. Within each class the records are sorted (by key, or for CIFAR-10 by the path
relative to the dataset folder, so the cache location does not matter) and shuffled by a
generator seeded with ``(seed, a stable hash of the draw's purpose, a stable hash of the class
name)``: the result depends on nothing but the seed and the files, not on dict order, Python's
hash seed, the order classes are met in, or which other classes exist.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hashsearch.data.sources import FolderSource, ImageRecord
from hashsearch.fileio import file_sha256
from hashsearch.paths import cache_dir
from hashsearch.registry import Registry
from hashsearch.validation import check_choice, check_int

#: sha256 of cifar10-jpg.tar.gz, the archive the CIFAR-10 protocols are defined on.
CIFAR10_SHA256 = "45b041e867f5a40f79bfde38d3dd1fd511103d50068c1afecf6445e25234d4db"
CIFAR10_ARCHIVE_NAME = "cifar10-jpg.tar.gz"
#: sha256 of mnist-png.tar.gz (MNIST's 70,000 digits as 28 px grey PNGs, one folder per digit).
MNIST_SHA256 = "c76b4b0454e3c32681bbe3ea0830710a831e16c231ed69404b9ce9524e465404"
MNIST_ARCHIVE_NAME = "mnist-png.tar.gz"
#: sha256 of flowers12-960.tar.gz (12 species of the Oxford 17 flowers, 80 photos each).
FLOWERS12_SHA256 = "ce347c5d471b6e67c1daffd7b53abdd6fc612e0c7cbee2d20a681eb2fb0b145b"
FLOWERS12_ARCHIVE_NAME = "flowers12-960.tar.gz"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Written last into an unpacked folder: its presence means the unpacking finished.
_MARKER = ".hashsearch-unpacked"

DATABASE_CHOICES = ("rest", "rest-minus-train")

#: The registered split protocols; each factory takes `seed` and returns a Split.
protocols: Registry = Registry("protocol")


@dataclass(frozen=True)
class Split:
    """A train / query / database split of labelled images; each list is sorted by key.

    `train` is what a hasher learns from, `query` what is searched for, `database` what is
    searched; `description` says in words how the split was drawn. `leave_one_out`: the
    database holds the queries themselves (the RITQ paper's "searched within the query set"),
    and each query is ranked against the database without its own image (see
    `hashsearch.evaluation.metrics.evaluate`'s `exclude`).
    """

    name: str
    train: list[ImageRecord]
    query: list[ImageRecord]
    database: list[ImageRecord]
    seed: int
    description: str
    leave_one_out: bool = False

    def summary(self) -> str:
        """One line: the name, the seed and the size of each part."""
        return (
            f"{self.name} (seed {self.seed}): {len(self.train):,} train, {_n(len(self.query), 'query', 'queries')}, "
            f"{_n(len(self.database), 'database image')}"
        )


# -- locations -------------------------------------------------------------------------------


def _source_checkout() -> Path:
    """The folder holding src/hashsearch when the package runs from a source checkout."""
    return Path(__file__).resolve().parents[3]


def _find_archive(env_var: str, archive_name: str) -> Path:
    """The archive `archive_name`: $`env_var`, else ``shared/datasets`` beside the checkout.

    Looks in ``../shared/datasets`` (and ``shared/datasets``) from the current folder, then from
    the package's source checkout. Raises FileNotFoundError naming the paths tried and `env_var`.
    """
    env = os.environ.get(env_var)
    if env:
        path = Path(env).expanduser()
        if path.is_file():
            return path
        raise FileNotFoundError(f"{env_var} is set to {env!r}, but there is no file there; point it at {archive_name}")
    tried: list[Path] = []
    for base in (Path.cwd(), _source_checkout()):
        for candidate in (base.parent / "shared" / "datasets", base / "shared" / "datasets"):
            path = candidate / archive_name
            if path not in tried:
                tried.append(path)
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"{archive_name} not found; looked at: {', '.join(map(str, tried))}. Set {env_var} to its path."
    )


def cifar10_archive() -> Path:
    """The CIFAR-10 (JPEG) archive: $HASHSEARCH_CIFAR10, else ``shared/datasets`` beside the checkout.

    Looks in ``../shared/datasets`` (and ``shared/datasets``) from the current folder, then from
    the package's source checkout.

    Raises
    ------
    FileNotFoundError
        Naming the paths tried and the environment variable to set.
    """
    try:
        return _find_archive("HASHSEARCH_CIFAR10", CIFAR10_ARCHIVE_NAME)
    except FileNotFoundError as e:
        if str(e).startswith(CIFAR10_ARCHIVE_NAME):
            raise FileNotFoundError(f"CIFAR-10 archive {e}") from None
        raise


def _refuse_checkout(dest: Path) -> None:
    checkout = _source_checkout()
    if not (checkout / "pyproject.toml").is_file():
        return  # an installed package: there is no checkout to protect
    if dest.resolve().is_relative_to(checkout):
        raise ValueError(
            f"the cache folder {dest} is inside the source checkout {checkout}; datasets are never "
            "unpacked into the repository: set HASHSEARCH_CACHE to a folder outside it"
        )


def _unpacked(
    archive_of: Callable[[], Path], env_var: str, sha256: str, folder: str, required: Sequence[str], what: str
) -> Path:
    """``cache_dir()/folder`` holding the unpacked archive, unpacking `archive_of()` on first use.

    The archive's sha256 is checked first, members pass tarfile's "data" filter, the files go to
    a temporary folder that is then renamed into place, and a marker file is written last. Later
    calls (and other processes) see the marker and return at once; an interrupted unpacking
    leaves nothing behind. `required`: the folders the archive must hold; `env_var` and `what`
    name the archive's variable and the data set in errors.
    """
    dest = cache_dir() / folder
    if (dest / _MARKER).is_file():
        return dest
    _refuse_checkout(dest)
    archive = archive_of()
    digest = file_sha256(archive)
    if digest != sha256:
        raise ValueError(
            f"{archive} has sha256 {digest}, but the {what} protocols are defined on the archive with "
            f"sha256 {sha256}; point {env_var} at that file"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder}-unpacking-", dir=dest.parent))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(tmp, filter="data")
        missing = [d for d in required if not (tmp / d).is_dir()]
        if missing:
            raise ValueError(f"{archive} holds no {' or '.join(missing)} folder; it is not the {what} archive")
        (tmp / _MARKER).write_text(f"{digest}  {archive.name}\n")
        try:
            os.rename(tmp, dest)
        except OSError:
            if (dest / _MARKER).is_file():
                return dest  # another process finished first; ours is removed below
            # A folder left without its marker (by hand or by an old version): move it aside.
            stale = Path(tempfile.mkdtemp(prefix=f".{folder}-stale-", dir=dest.parent))
            os.rename(dest, stale / folder)
            shutil.rmtree(stale, ignore_errors=True)
            os.rename(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def cifar10_root() -> Path:
    """The folder holding CIFAR-10 (JPEG)'s ``train/`` and ``test/``, unpacking it on first use.

    Unpacks `cifar10_archive()` into ``cache_dir()/cifar10`` once (see `_unpacked`).
    """
    return _unpacked(
        cifar10_archive, "HASHSEARCH_CIFAR10", CIFAR10_SHA256, "cifar10", ("train", "test"), "CIFAR-10 (JPEG)"
    )


def mnist_root() -> Path:
    """The folder holding MNIST's ``train/<digit>/`` and ``test/<digit>/``, unpacking it on first use.

    Unpacks ``mnist-png.tar.gz`` ($HASHSEARCH_MNIST, else ``shared/datasets`` beside the
    checkout) into ``cache_dir()/mnist`` once (see `_unpacked`).
    """
    archive = lambda: _find_archive("HASHSEARCH_MNIST", MNIST_ARCHIVE_NAME)  # noqa: E731
    return _unpacked(archive, "HASHSEARCH_MNIST", MNIST_SHA256, "mnist", ("mnist-png",), "MNIST (PNG)") / "mnist-png"


def flowers12_root() -> Path:
    """The folder holding flowers12's ``flowers12/<species>/`` folders, unpacking it on first use.

    Unpacks ``flowers12-960.tar.gz`` ($HASHSEARCH_FLOWERS12, else ``shared/datasets`` beside the
    checkout) into ``cache_dir()/flowers12`` once (see `_unpacked`).
    """
    archive = lambda: _find_archive("HASHSEARCH_FLOWERS12", FLOWERS12_ARCHIVE_NAME)  # noqa: E731
    return (
        _unpacked(archive, "HASHSEARCH_FLOWERS12", FLOWERS12_SHA256, "flowers12", ("flowers12",), "flowers12")
        / "flowers12"
    )


# -- drawing splits --------------------------------------------------------------------------


def _n(n: int, word: str, many: str | None = None) -> str:
    """'1 image', '2 images' (`many` for irregular plurals)."""
    return f"{n:,} {word if n == 1 else many or word + 's'}"


def _stable_int(text: str) -> int:
    """A 64-bit integer from `text` that is the same in every process (unlike hash())."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()[:8], "little")


def _by_class(records: Sequence[ImageRecord]) -> dict[str, list[ImageRecord]]:
    unlabelled = [r.key for r in records if r.label is None]
    if unlabelled:
        from hashsearch.data.sources import printable

        names = ", ".join(printable(k) for k in unlabelled[:5]) + (
            f" and {len(unlabelled) - 5:,} more" if len(unlabelled) > 5 else ""
        )
        raise ValueError(
            f"{len(unlabelled):,} of {_n(len(records), 'record')} {'has' if len(unlabelled) == 1 else 'have'} no label "
            f"({names}); a split by class needs "
            "every image labelled: leave them out, or give them a label (a class folder, a label in the list "
            "file, or a labels file)"
        )
    classes: dict[str, list[ImageRecord]] = {}
    for r in records:
        classes.setdefault(r.label, []).append(r)
    return dict(sorted(classes.items()))


def _draw(
    records: Sequence[ImageRecord],
    counts: Sequence[int | None],
    seed: int,
    purpose: str,
    order: Callable[[ImageRecord], str] = lambda r: r.key,
) -> list[list[ImageRecord]]:
    """Per class: sort by `order`, shuffle, and cut consecutive parts of the given sizes.

    A count of None takes all that is left. Returns one list per count (all classes together).
    """
    check_int("seed", seed, low=0)
    parts: list[list[ImageRecord]] = [[] for _ in counts]
    need = sum(c for c in counts if c is not None)
    for label, members in _by_class(records).items():
        if len(members) < need:
            raise ValueError(
                f"class {label!r} has {_n(len(members), 'image')}, but the split needs {need} per class "
                f"({' + '.join(str(c) for c in counts if c is not None)}); lower the per-class counts or add images"
            )
        members = sorted(members, key=order)
        rng = np.random.default_rng([int(seed), _stable_int(purpose), _stable_int(label)])
        shuffled = [members[i] for i in rng.permutation(len(members))]
        start = 0
        for part, count in zip(parts, counts):
            stop = len(shuffled) if count is None else start + count
            part.extend(shuffled[start:stop])
            start = stop
    return [sorted(p, key=lambda r: r.key) for p in parts]


def split_by_class(
    records: Sequence[ImageRecord],
    queries_per_class: int,
    train_per_class: int | None,
    seed: int = 0,
    database: str = "rest",
    name: str = "custom",
) -> Split:
    """Draw queries and training images per class from labelled records; the rest is the database.

    Per class, the records are sorted by key and shuffled with a generator seeded by `seed` and
    the class name; the first `queries_per_class` are queries and the next `train_per_class` are
    training images (None: all the rest).

    Parameters
    ----------
    records : sequence of ImageRecord
        Every record must have a label.
    queries_per_class, train_per_class : int
        How many of each class to draw.
    seed : int
        Non-negative; the same seed gives the same split on any machine.
    database : {"rest", "rest-minus-train"}
        "rest": every record that is not a query, training images included (the DPSH/DSH
        protocol); "rest-minus-train": neither queries nor training images.
    name : str
        Recorded in the Split.

    Raises
    ------
    ValueError
        Unlabelled records, a class with too few images, or a bad parameter.
    """
    check_int("queries_per_class", queries_per_class, low=0)
    check_int("train_per_class", train_per_class, low=0, allow_none=True, none_means="all the rest")
    check_choice("database", database, DATABASE_CHOICES)
    query, train = _draw(records, [queries_per_class, train_per_class], seed, "split_by_class")
    taken = {r.key for r in query} | ({r.key for r in train} if database == "rest-minus-train" else set())
    db = sorted((r for r in records if r.key not in taken), key=lambda r: r.key)
    train_words = "all the rest" if train_per_class is None else f"{train_per_class} per class"
    db_words = "every image that is not a query" + (
        "" if train_per_class == 0 else ", training images included" if database == "rest" else " nor a training image"
    )
    description = (
        f"{_n(len(query), 'query', 'queries')} ({queries_per_class} per class), "
        + ("no training images" if train_per_class == 0 else f"{_n(len(train), 'training image')} ({train_words})")
        + f", database: {db_words} ({len(db):,})"
    )
    return Split(name, train, query, db, int(seed), description)


# -- registered protocols --------------------------------------------------------------------


def list_protocols() -> list[str]:
    """The names of the registered split protocols."""
    return protocols.names()


def load_protocol(name: str, seed: int = 0) -> Split:
    """The split that the protocol `name` draws with `seed` (see `list_protocols`)."""
    return protocols.get(name)(seed=seed)


def protocol_root(name: str) -> Path:
    """The folder the records of protocol `name` are read from (unpacked on first use).

    The MNIST protocols read ``mnist-png.tar.gz``, flowers12 ``flowers12-960.tar.gz``, every
    other registered protocol CIFAR-10 (JPEG). Raises ValueError for an unknown name.
    """
    protocols.get(name)  # unknown name -> ValueError listing the registered ones
    if name.startswith("mnist"):
        return mnist_root()
    if name.startswith("flowers12"):
        return flowers12_root()
    return cifar10_root()


def protocol_data(name: str) -> str:
    """One line naming the data set protocol `name` is drawn from, for a report's notes."""
    if name.startswith("mnist"):
        return f"MNIST (PNG, 28 px grey, {MNIST_ARCHIVE_NAME}) from ../shared/datasets."
    if name.startswith("flowers12"):
        return f"flowers12 ({FLOWERS12_ARCHIVE_NAME}) from ../shared/datasets."
    return "CIFAR-10 (JPEG) from ../shared/datasets."


def _train_test_parts(
    dataset: str, root: Path, n_train: int, n_test: int
) -> tuple[list[ImageRecord], list[ImageRecord], Callable[[ImageRecord], str]]:
    """(train records, test records, order by path relative to root) of an unpacked ``train/``, ``test/``
    dataset folder; RuntimeError naming the folder if it does not hold `n_train` and `n_test` images."""
    prefix = len(str(root)) + 1

    def relative(r: ImageRecord) -> str:
        return r.key[prefix:].replace(os.sep, "/")

    train, test = [], []
    for r in FolderSource(root).records():
        top = relative(r).split("/", 1)[0]
        (train if top == "train" else test if top == "test" else []).append(r)
    if len(train) != n_train or len(test) != n_test:
        raise RuntimeError(
            f"the {dataset} folder {root} holds {len(train):,} training and {len(test):,} test images, "
            f"not {n_train:,} and {n_test:,}; delete {root} so that it is unpacked again"
        )
    return train, test, relative


def _cifar10_parts() -> tuple[list[ImageRecord], list[ImageRecord], Callable[[ImageRecord], str]]:
    """(train records, test records, order by path relative to root) of unpacked CIFAR-10."""
    return _train_test_parts("CIFAR-10", cifar10_root(), 50_000, 10_000)


@protocols.register("cifar10-1k")
def cifar10_1k(seed: int = 0) -> Split:
    """CIFAR-10 (JPEG), the DPSH/DSH protocol: 1,000 queries, 5,000 train, 59,000 database.

    Queries: 100 per class drawn from the test set. Training: 500 per class drawn from the
    training set. Database: every image that is not a query (59,000), training images included.
    """
    train_all, test_all, relative = _cifar10_parts()
    (query,) = _draw(test_all, [100], seed, "cifar10-query", relative)
    (train,) = _draw(train_all, [500], seed, "cifar10-train", relative)
    queried = {r.key for r in query}
    database = sorted((r for r in train_all + test_all if r.key not in queried), key=lambda r: r.key)
    return Split(
        "cifar10-1k",
        train,
        query,
        database,
        int(seed),
        "CIFAR-10 (JPEG), DPSH/DSH protocol: 1,000 queries (100 per class, from the test set); "
        "5,000 training images (500 per class, from the training set); database: the 59,000 images "
        "that are not queries, training images included.",
    )


@protocols.register("cifar10-all")
def cifar10_all(seed: int = 0) -> Split:
    """CIFAR-10 (JPEG), the standard train/test split: 10,000 queries, 50,000 train = database.

    Queries: all 10,000 test images. Training and database: all 50,000 training images. Nothing
    is drawn at random; `seed` is only recorded.
    """
    check_int("seed", seed, low=0)
    train_all, test_all, _ = _cifar10_parts()
    return Split(
        "cifar10-all",
        list(train_all),
        list(test_all),
        list(train_all),
        int(seed),
        "CIFAR-10 (JPEG), standard split: the 10,000 test images are the queries; the 50,000 "
        "training images are both the training set and the database.",
    )


@protocols.register("cifar10-demo")
def cifar10_demo(seed: int = 0) -> Split:
    """CIFAR-10 (JPEG), small and fast for demos: 200 queries, 2,000 train, 9,800 database.

    Queries: 20 per class drawn from the test set. Training: 200 per class drawn from the
    training set. Database: the 9,800 test images that are not queries.
    """
    train_all, test_all, relative = _cifar10_parts()
    query, rest = _draw(test_all, [20, None], seed, "cifar10-query", relative)
    (train,) = _draw(train_all, [200], seed, "cifar10-train", relative)
    return Split(
        "cifar10-demo",
        train,
        query,
        rest,
        int(seed),
        "CIFAR-10 (JPEG), demo size: 200 queries (20 per class, from the test set); 2,000 training "
        "images (200 per class, from the training set); database: the 9,800 test images that are "
        "not queries.",
    )


@protocols.register("flowers12")
def flowers12(seed: int = 0) -> Split:
    """flowers12 (12 species of the Oxford 17 flowers, 80 photos each): 240 queries, 480 train, 720 database.

    Per species: 20 queries and 40 training images drawn at random (seeded); database: every
    photo that is not a query (720), training images included, as in the cifar10-1k protocol.
    """
    root = flowers12_root()
    prefix = len(str(root)) + 1
    records = [r for r in FolderSource(root).records() if r.label is not None]
    if len(records) != 960:
        raise RuntimeError(
            f"the flowers12 folder {root} holds {len(records):,} photos, not 960; delete it so that it is unpacked again"
        )
    query, train = _draw(records, [20, 40], seed, "flowers12", lambda r: r.key[prefix:].replace(os.sep, "/"))
    queried = {r.key for r in query}
    database = sorted((r for r in records if r.key not in queried), key=lambda r: r.key)
    return Split(
        "flowers12",
        train,
        query,
        database,
        int(seed),
        "flowers12 (12 species of the Oxford 17 flowers, 224 px photos): 240 queries (20 per species); 480 training "
        "images (40 per species); database: the 720 photos that are not queries, training images included.",
    )


def _mnist_parts() -> tuple[list[ImageRecord], list[ImageRecord], Callable[[ImageRecord], str]]:
    """(train records, test records, order by path relative to the root) of unpacked MNIST."""
    return _train_test_parts("MNIST", mnist_root(), 60_000, 10_000)


# The RITQ paper (shared/papers/ritq-resnet-itq.txt), section 4: "We use 10K images as the query
# set and the other 60K as the training samples", and "the query image is searched within the
# query set itself by applying the leave-one-out procedure". Table II's caption says "The scale
# of test query set is 1k (1k per class)". We read the caption's "1k per class" as the text's 10K
# (MNIST's test set holds 892 to 1,135 images per digit, about 1k per class; the caption is shared
# with CIFAR-10, whose 10K test images are exactly 1k per class): the query set is the 10,000 test
# images, each searched among the other 9,999, and hashers train on the 60,000 training images.


@protocols.register("mnist-table2")
def mnist_table2(seed: int = 0) -> Split:
    """MNIST, the RITQ paper's Table II protocol: 10,000 queries searched leave-one-out among themselves, 60,000 train.

    Queries and database: the 10,000 test images; each query is ranked against the other
    9,999 (`Split.leave_one_out`). Training: the 60,000 training images. Nothing is drawn at
    random; `seed` is only recorded.
    """
    check_int("seed", seed, low=0)
    train, test, _ = _mnist_parts()
    return Split(
        "mnist-table2",
        list(train),
        list(test),
        list(test),
        int(seed),
        "MNIST (PNG), the RITQ paper's Table II protocol: the 10,000 test images are the query set, each "
        "searched leave-one-out within it (9,999 database images a query); training: the 60,000 training images.",
        leave_one_out=True,
    )


@protocols.register("mnist-table2-5k")
def mnist_table2_5k(seed: int = 0) -> Split:
    """MNIST, mnist-table2 with a smaller training set for a 2-core CPU: 10,000 leave-one-out queries, 5,000 train.

    Queries and database as in mnist-table2 (the 10,000 test images, each searched among the
    other 9,999). Training: 500 per digit drawn at random (seeded) from the training set, so
    that training a ResNet-32 from scratch (RITQ) and the backbone's features fit in minutes.
    """
    train_all, test, relative = _mnist_parts()
    (train,) = _draw(train_all, [500], seed, "mnist-train", relative)
    return Split(
        "mnist-table2-5k",
        train,
        list(test),
        list(test),
        int(seed),
        "MNIST (PNG), the RITQ paper's Table II protocol with a smaller training set: the 10,000 test images are "
        "the query set, each searched leave-one-out within it (9,999 database images a query); training: 5,000 "
        "images (500 per digit, drawn at random from the 60,000 training images).",
        leave_one_out=True,
    )


from hashsearch.data import unseen  # noqa: E402,F401  (registers the unseen-classes protocol)
