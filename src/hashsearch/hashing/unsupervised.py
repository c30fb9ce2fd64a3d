"""Which unsupervised method `hashsearch index` fits on a collection without labels, by its size.

bihalf-spectral ranks best on collections of several hundred images or more (mAP@ALL 0.4010 vs
ITQ's 0.2995 at 64 bits on cifar10-1k's 5,000 training images; 0.7791 vs 0.6969 on flowers12's
480: benchmarks/results/unsupervised.md), but on the small folders many people index (tens to a
few hundred photos) it ranked no better than ITQ while fitting 15-41 times slower
(benchmarks/unsupervised_small.py: benchmarks/results/unsupervised-small.md, threshold chosen on
a seed kept apart in unsupervised-small-selection.md). Below `ITQ_BELOW` images the default is ITQ.

`few_images` says, for any hasher, when a folder is too small for the code length asked for.
"""

from __future__ import annotations

from hashsearch.validation import check_int

#: Below this many images `hashsearch index`'s default is ITQ, from it on bihalf-spectral: the smallest
#: folder size from which bihalf-spectral ranked at least as well as ITQ on every folder of the choosing
#: seed (benchmarks/results/unsupervised-small-selection.md).
ITQ_BELOW = 320


def choose_index_method(n_images: int) -> tuple[str, str]:
    """The method `hashsearch index` fits, without labels, on `n_images` images, and why, in one line.

    Returns ("itq" or "bihalf-spectral", the reason naming the size rule). Raises ValueError when
    `n_images` is not an integer >= 0.
    """
    from hashsearch.data.sources import plural

    n = check_int("n_images", n_images, low=0)
    if n < ITQ_BELOW:
        return "itq", (
            f"{plural(n, 'image')}, fewer than {ITQ_BELOW:,}: ITQ (on folders this small bihalf-spectral ranked no "
            "better and fitted 15-41 times slower)"
        )
    return "bihalf-spectral", (
        f"{plural(n, 'image')}, at least {ITQ_BELOW:,}: bihalf-spectral (from this size on it ranked at least as well "
        "as ITQ, and better on larger collections)"
    )


def few_images(n_images: int, n_bits: int, method: str) -> str | None:
    """A one-line warning when `method` fits `n_bits`-bit codes on fewer images than bits, else None.

    n images differ from their mean in at most n - 1 directions of the feature space, and every
    bit of a learned hasher is (at heart) one direction: on 3 images, 2 of 64 bits can follow how
    the images differ, and the others are arbitrary (random, or the same on every image), so the
    codes of new images rank them by chance. None too for a method whose bits are random draws
    (`Hasher.data_independent`: LSH, SKLSH). Raises ValueError when `n_images` or `n_bits` is not a
    non-negative integer, or `method` is not a registered hasher.
    """
    from hashsearch.data.sources import plural
    from hashsearch.hashing.base import hashers

    n = check_int("n_images", n_images, low=0)
    bits = check_int("n_bits", n_bits, low=1)
    if n >= bits or getattr(hashers.get(method), "data_independent", False):
        return None
    why = (
        f"no bit can be learned from {'one image' if n else 'none'}"
        if n <= 1
        else f"they differ in at most {plural(n - 1, 'direction')}, so at least {bits - n + 1} of the {bits} bits"
        " are not learned from them"
    )
    return (
        f"{method} fitted {bits} bits on {plural(n, 'image')}, fewer images than bits: {why} (such a bit is random, "
        f"or the same on every image); fit on at least {bits} images, or ask for fewer bits"
    )
