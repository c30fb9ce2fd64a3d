"""Compiled (numba) dot products of row pairs, for the feature check of `hashsearch.duplicates`.

A radius search at the default radius yields a few per cent of all pairs of a collection
(1.6 million at 10,000 images), so the check's cost is one dot product of two feature rows
per pair. Gathering the rows with numpy copies both rows of every pair through memory; this
kernel reads them in place. numba is imported here only, on the first check.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, fastmath=True, cache=True)
def pair_dots(x, i, j, out):  # pragma: no cover - compiled
    """out[p] = x[i[p]] . x[j[p]] for every p (x (n, d) float32 C-contiguous; i, j int64)."""
    d = x.shape[1]
    for p in range(len(i)):
        a = i[p]
        b = j[p]
        s = np.float32(0.0)
        for k in range(d):
            s += x[a, k] * x[b, k]
        out[p] = s
