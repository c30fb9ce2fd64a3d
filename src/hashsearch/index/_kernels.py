"""Compiled (numba) Hamming search kernels shared by the "flat" and "mih" back ends.

Every kernel works on codes viewed as machine words (`words`: (n, W) uint64, or uint32 for
codes of 4 bytes), releases the GIL (`nogil`), and orders neighbours by one int64 *key* per
entry::

    key = distance * n_keys + rank

where `rank` is the position of the entry's id in ascending id order (distinct, < n_keys); an
empty `rank` array means the rows already are in id order (rank of row j = j).
Keys are distinct, so "the k smallest keys" is exactly "the k nearest by (distance, id)",
ties included, and a caller merges results of several kernels (database shards, a table part
and a tail part) by sorting their keys together.

Top-k selection keeps, per query, a buffer of at most `cap` keys and the current k-th
smallest key as an admission threshold; a full buffer is cut back to k by an in-place
quickselect. The scan computes, per group of 64 entries, the smallest distance in the group
(a loop LLVM vectorises) and looks at the entries one by one only in groups that can hold a
neighbour.

numba is imported here only: importing hashsearch.index does not load it, the first search
does (and compiles the kernels once per machine; they are cached next to this file).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

# Entries examined together by the vectorised group tests (closest distance, or count within).
_GROUP = 64
# Queries scanned together, so that each group of database words is read once per block.
_QBLOCK = 16
_INT64_MAX = np.iinfo(np.int64).max


@intrinsic
def _popcount(typingctx, x):
    """Population count of an unsigned integer as int64 (LLVM's ctpop: one POPCNT instruction).

    Returning a signed int64 matters: numba turns mixed uint64/int64 arithmetic into float64.
    """
    sig = types.int64(x)

    def codegen(context, builder, signature, args):
        count = builder.ctpop(args[0])
        if count.type.width < 64:
            return builder.zext(count, ir.IntType(64))
        return count

    return sig, codegen


@intrinsic
def _lowest_bit(typingctx, x):
    """Index of the lowest set bit of a non-zero unsigned integer, as int64 (LLVM's cttz: TZCNT)."""
    sig = types.int64(x)

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 0))

    return sig, codegen


@njit(nogil=True, inline="always")
def _distance(q, qi, db, row):
    """Hamming distance between query `qi` (row of q, (nq, W)) and row `row` of db ((n * W,))."""
    W = q.shape[1]
    d = 0
    for w in range(W):
        d += _popcount(q[qi, w] ^ db[row * W + w])
    return d


@njit(nogil=True, inline="always")
def _hits(q, qi, db, g, e, td):
    """How many of rows [g, e) are within distance `td` of query `qi`."""
    hits = 0
    for j in range(g, e):
        hits += _distance(q, qi, db, j) <= td
    return hits


@njit(nogil=True, inline="always")
def _rank_of(rank, j):
    """Rank of row j: rank[j], or j itself when `rank` is empty (rows already in id order,
    which spares an index of n rows an (n,) int64 array of 0, 1, 2, ...)."""
    return j if rank.shape[0] == 0 else rank[j]


@njit(nogil=True, cache=True)
def _compact(buf, cnt, k):
    """Move the k smallest of buf[:cnt] to buf[:k] (unordered), in place; returns the largest.

    Quickselect (Hoare partition around a median of three) without allocating: the top-k
    buffers are compacted thousands of times per search.
    """
    lo = 0
    hi = cnt - 1
    t = k - 1
    while lo < hi:
        a = buf[lo]
        b = buf[(lo + hi) >> 1]
        c = buf[hi]
        if a > b:
            a, b = b, a
        if b > c:
            b = c
        if a > b:
            b = a
        i = lo
        j = hi
        while i <= j:
            while buf[i] < b:
                i += 1
            while buf[j] > b:
                j -= 1
            if i <= j:
                x = buf[i]
                buf[i] = buf[j]
                buf[j] = x
                i += 1
                j -= 1
        if t <= j:
            hi = j
        elif t >= i:
            lo = i
        else:
            break
    top = buf[0]
    for i in range(1, k):
        top = max(top, buf[i])
    return top


@njit(nogil=True, inline="always")
def _admit(buf, cnt, key, tkey, td, k, n_keys, shrink):
    """Append `key` to a top-k buffer (len(buf) slots); a full buffer is cut back to its k
    smallest keys, which sets the new admission threshold. Returns (count, k-th key, distance
    threshold); `shrink` = 1 excludes the k-th key's distance itself (see `knn_scan`)."""
    buf[cnt] = key
    cnt += 1
    if cnt == len(buf):
        tkey = _compact(buf, cnt, k)
        cnt = k
        td = tkey // n_keys - shrink
    return cnt, tkey, td


@njit(nogil=True, inline="always")
def _emit(buf, cnt, k, out_row):
    """The buffer's first `cnt` keys, sorted, into `out_row` (k slots; INT64_MAX past them)."""
    row = buf[:cnt]
    row.sort()
    kk = min(k, cnt)
    out_row[:kk] = row[:kk]
    out_row[kk:] = _INT64_MAX


@njit(nogil=True, inline="always")
def _cap(k, rows):
    """Size of a top-k key buffer: compacting every k / 2 admissions keeps the threshold tight."""
    return max(min(k + max(k // 2, 16), rows + 1), 1)


@njit(nogil=True, cache=True)
def _knn_one_word(q, db, rank, lo, hi, n_keys, k, max_d, ascending, out):
    """`knn_scan` for codes of one word (up to 64 bits): fixed-size groups that LLVM vectorises.

    Queries go in blocks of `_QBLOCK`: each group of database words is read from memory (or
    L3) once per block and compared with every query of the block while it sits in L1. Per
    (query, group) a vectorised minimum of the distances decides whether the group can hold a
    neighbour; in a group that can, a vectorised pass builds a bit mask of the entries within
    the threshold, and only those are looked at (no branch per entry).
    """
    nq = q.shape[0]
    cap = _cap(k, hi - lo)
    bufs = np.empty((_QBLOCK, cap), np.int64)
    cnts = np.zeros(_QBLOCK, np.int64)
    tkeys = np.empty(_QBLOCK, np.int64)
    tds = np.empty(_QBLOCK, np.int64)
    for qb in range(0, nq, _QBLOCK):
        nb = min(qb + _QBLOCK, nq) - qb
        for b in range(nb):
            cnts[b] = 0
            tkeys[b] = _INT64_MAX
            tds[b] = max_d
        for g in range(lo, hi, _GROUP):
            size = min(_GROUP, hi - g)
            blk = db[g : g + size]
            for b in range(nb):
                qw = q[qb + b, 0]
                td = tds[b]
                if size == _GROUP:
                    m = max_d + 1
                    for t in range(_GROUP):
                        m = min(m, _popcount(qw ^ blk[t]))
                    if m > td:
                        continue
                mask = np.uint64(0)
                for t in range(size):
                    mask |= np.uint64(_popcount(qw ^ blk[t]) <= td) << np.uint64(t)
                cnt = cnts[b]
                tkey = tkeys[b]
                while mask != 0:
                    t = _lowest_bit(mask)
                    mask &= mask - np.uint64(1)
                    d = _popcount(qw ^ blk[t])
                    if d <= td:
                        key = d * n_keys + (g + t if ascending else _rank_of(rank, g + t))
                        if key < tkey:
                            cnt, tkey, td = _admit(bufs[b], cnt, key, tkey, td, k, n_keys, ascending)
                cnts[b] = cnt
                tkeys[b] = tkey
                tds[b] = td
        for b in range(nb):
            _emit(bufs[b], cnts[b], k, out[qb + b])


@njit(nogil=True, cache=True)
def _knn_two_words(q, db, rank, lo, hi, n_keys, k, max_d, ascending, out):
    """`knn_scan` for codes of two words (65 to 128 bits): the group test of `_knn_one_word`."""
    nq = q.shape[0]
    cap = _cap(k, hi - lo)
    buf = np.empty(cap, np.int64)
    full = lo + (hi - lo) // _GROUP * _GROUP
    for qi in range(nq):
        cnt = 0
        tkey = _INT64_MAX
        td = max_d
        q0 = q[qi, 0]
        q1 = q[qi, 1]
        for g in range(lo, hi, _GROUP):
            if g < full:
                blk = db[2 * g : 2 * (g + _GROUP)]
                m = max_d + 1
                for t in range(_GROUP):
                    m = min(m, _popcount(q0 ^ blk[2 * t]) + _popcount(q1 ^ blk[2 * t + 1]))
                if m > td:
                    continue
            for j in range(g, min(g + _GROUP, hi)):
                d = _popcount(q0 ^ db[2 * j]) + _popcount(q1 ^ db[2 * j + 1])
                if d <= td:
                    key = d * n_keys + _rank_of(rank, j)
                    if key < tkey:
                        cnt, tkey, td = _admit(buf, cnt, key, tkey, td, k, n_keys, ascending)
        _emit(buf, cnt, k, out[qi])


@njit(nogil=True, cache=True)
def _knn_words(q, db, rank, lo, hi, n_keys, k, max_d, ascending, out):
    """`knn_scan` for codes of several words."""
    nq = q.shape[0]
    cap = _cap(k, hi - lo)
    buf = np.empty(cap, np.int64)
    for qi in range(nq):
        cnt = 0
        tkey = _INT64_MAX
        td = max_d
        for g in range(lo, hi, _GROUP):
            e = min(g + _GROUP, hi)
            if _hits(q, qi, db, g, e, td) == 0:
                continue
            for j in range(g, e):
                d = _distance(q, qi, db, j)
                if d <= td:
                    key = d * n_keys + _rank_of(rank, j)
                    if key < tkey:
                        cnt, tkey, td = _admit(buf, cnt, key, tkey, td, k, n_keys, ascending)
        _emit(buf, cnt, k, out[qi])


@njit(nogil=True, cache=True)
def knn_scan(q, db, rank, lo, hi, n_keys, k, max_d, ascending, out):
    """Exact k-NN of every query over database rows [lo, hi): writes keys to `out` (nq, k).

    `q` is (nq, W) words, `db` the database's words flattened to (n * W,). Rows of `out` are
    sorted ascending; slots beyond the rows found hold INT64_MAX. `max_d` is the largest
    possible distance (the code length in bits). `ascending` (0 or 1) says that rows are in
    id order, i.e. ``rank[j] == j``: a row met later then loses every tie to the k-th key
    found so far, so the distance threshold can exclude that distance too (fewer groups
    examined), and the rank needs no lookup.
    """
    if q.shape[1] == 1:
        _knn_one_word(q, db, rank, lo, hi, n_keys, k, max_d, ascending, out)
    elif q.shape[1] == 2:
        _knn_two_words(q, db, rank, lo, hi, n_keys, k, max_d, ascending, out)
    else:
        _knn_words(q, db, rank, lo, hi, n_keys, k, max_d, ascending, out)


@njit(nogil=True, cache=True)
def range_scan(q, db, rank, lo, hi, n_keys, radius):
    """Every database row in [lo, hi) within `radius` of each query, as sorted keys.

    Returns (counts, keys): counts (nq,) int64 and keys grouped by query, each group sorted.
    """
    nq = q.shape[0]
    counts = np.zeros(nq, np.int64)
    keys = np.empty(1024, np.int64)
    total = 0
    for qi in range(nq):
        start = total
        for g in range(lo, hi, _GROUP):
            e = min(g + _GROUP, hi)
            hits = _hits(q, qi, db, g, e, radius)
            if hits == 0:
                continue
            if total + hits > len(keys):
                grown = np.empty(max(2 * len(keys), total + hits), np.int64)
                grown[:total] = keys[:total]
                keys = grown
            for j in range(g, e):
                d = _distance(q, qi, db, j)
                if d <= radius:
                    keys[total] = d * n_keys + _rank_of(rank, j)
                    total += 1
        keys[start:total].sort()
        counts[qi] = total - start
    return counts, keys[:total]


# -- multi-index hashing ----------------------------------------------------------------------
@njit(nogil=True, inline="always")
def _next_mask(x):
    """The next larger integer with the same number of set bits (Gosper's hack)."""
    c = x & -x
    r = x + c
    return (((r ^ x) >> 2) // c) | r


@njit(nogil=True, inline="always")
def _table_distance(q, qi, tcodes, j, p):
    """Hamming distance between query `qi` and the code at position p of table j."""
    W = q.shape[1]
    d = 0
    for w in range(W):
        d += _popcount(q[qi, w] ^ tcodes[j, p * W + w])
    return d


@njit(nogil=True, inline="always")
def _checked_row(row, n_rows):
    """A row number read from a table, refused when out of range (a damaged table must not
    make the search read outside the arrays)."""
    if row < 0 or row >= n_rows:
        raise ValueError("a multi-index hashing table holds a row number out of range: the index is damaged")
    return row


@njit(nogil=True, inline="always")
def _sub_distance(q, qi, tcodes, j, p, smasks, jj):
    """Distance between the query and the code at position p of table j on substring jj only."""
    W = q.shape[1]
    d = 0
    for w in range(W):
        d += _popcount((q[qi, w] ^ tcodes[j, p * W + w]) & smasks[jj, w])
    return d


@njit(nogil=True, inline="always")
def _met_before(q, qi, tcodes, j, p, smasks, s):
    """Whether `mih_knn`, now probing table j at substring radius s, met this code (position p
    of table j) at an earlier probe: table jj probes radius s' when (s', jj) < (s, j) in the
    probe order, and meets the code there iff its substring jj is at distance exactly s'."""
    for jj in range(smasks.shape[0]):
        if jj != j:
            d = _sub_distance(q, qi, tcodes, j, p, smasks, jj)
            if d < s or (d == s and jj < j):
                return True
    return False


@njit(nogil=True, inline="always")
def _met_before_range(q, qi, tcodes, j, p, smasks, s_max, a):
    """Whether `mih_range` met this code in a table jj < j (table jj probes radii 0 .. s_max,
    or s_max - 1 when jj > a)."""
    for jj in range(j):
        top = s_max if jj <= a else s_max - 1
        if _sub_distance(q, qi, tcodes, j, p, smasks, jj) <= top:
            return True
    return False


@njit(nogil=True, cache=True)
def mih_knn(q, qsub, db, rank, ascending, n_keys, k, max_d, lens, offsets, rows, tcodes, n_rows, budget, out, smasks):
    """Exact k-NN by multi-index hashing (Norouzi, Punjani and Fleet) over the tabled rows.

    `qsub` (nq, m) holds each query's substring values; substring j has `lens[j]` bits and its
    table is CSR: positions offsets[j, v] to offsets[j, v + 1] of rows[j] (row numbers) and of
    tcodes[j] (the rows' code words, W per row, copied so a bucket is read sequentially) hold
    the rows whose substring j is v.

    Substrings are probed in the order (s, j) = (0, 0), (0, 1), ..., (1, 0), ...; probing
    substring j at exactly radius s completes the search to radius r = s * m + j: a code within
    r of the query has, by the pigeonhole principle, one of substrings 0..j within s (if all
    of them differed by s + 1 or more and the others by s or more, the distance would be at
    least s * m + j + 1). The search stops once the k-th best distance found is <= r, so every
    entry at that distance has been seen and ties are broken exactly. A query whose probes and
    candidates exceed `budget` is finished by a linear scan of `db` (same answer, bounded cost).

    A row can sit in the buckets probed of several tables; it is taken at the first probe that
    meets it only, known from its code alone (`_met_before`, with `smasks` (m, W) the words'
    bits of each substring), so no per-row "seen" array is needed (10^8 rows: 400 MB a thread).
    A row number outside [0, n_rows) (a damaged table) raises ValueError.
    """
    nq, m = qsub.shape
    W = q.shape[1]
    max_len = 0
    for j in range(m):
        max_len = max(max_len, lens[j])
    cap = min(max(4 * k, 256), n_rows + 1)
    buf = np.empty(max(cap, 1), np.int64)
    one = np.empty((1, k), np.int64)
    for qi in range(nq):
        cnt = 0
        tkey = _INT64_MAX
        td = max_d
        work = 0
        done = n_rows == 0
        for s in range(max_len + 1):
            if done:
                break
            for j in range(m):
                L = lens[j]
                if s <= L:
                    mask = np.int64((1 << s) - 1)
                    end = np.int64(1) << L
                    qv = qsub[qi, j]
                    while mask < end:
                        v = qv ^ mask
                        a = offsets[j, v]
                        b = offsets[j, v + 1]
                        work += 1 + (b - a)
                        if b - a >= _GROUP and W == 1:
                            # A big bucket (clustered codes): skip it if a vectorised count finds nothing.
                            tc = tcodes[j, a:b]
                            qw = q[qi, 0]
                            hits = 0
                            for t in range(b - a):
                                hits += _popcount(qw ^ tc[t]) <= td
                            if hits == 0:
                                if s == 0:
                                    break
                                mask = _next_mask(mask)
                                continue
                        if W == 1:
                            # One-word codes: a bit mask of the bucket's entries within the
                            # threshold, 64 at a time (vectorised), then only those.
                            qw = q[qi, 0]
                            for c0 in range(a, b, _GROUP):
                                size = min(_GROUP, b - c0)
                                tc = tcodes[j, c0 : c0 + size]
                                hit = np.uint64(0)
                                for t in range(size):
                                    hit |= np.uint64(_popcount(qw ^ tc[t]) <= td) << np.uint64(t)
                                while hit != 0:
                                    t = _lowest_bit(hit)
                                    hit &= hit - np.uint64(1)
                                    d = _popcount(qw ^ tc[t])
                                    if d <= td:
                                        row = _checked_row(rows[j, c0 + t], n_rows)
                                        key = d * n_keys + (row if ascending else _rank_of(rank, row))
                                        if key < tkey and not _met_before(q, qi, tcodes, j, c0 + t, smasks, s):
                                            cnt, tkey, td = _admit(buf, cnt, key, tkey, td, k, n_keys, 0)
                        else:
                            for p in range(a, b):
                                d = _table_distance(q, qi, tcodes, j, p)
                                if d <= td:
                                    row = _checked_row(rows[j, p], n_rows)
                                    key = d * n_keys + _rank_of(rank, row)
                                    if key < tkey and not _met_before(q, qi, tcodes, j, p, smasks, s):
                                        cnt, tkey, td = _admit(buf, cnt, key, tkey, td, k, n_keys, 0)
                        if s == 0:
                            break
                        mask = _next_mask(mask)
                r_done = s * m + j
                if r_done >= max_d:
                    done = True
                    break
                if cnt >= k:
                    if cnt > k:
                        tkey = _compact(buf, cnt, k)
                        cnt = k
                        td = tkey // n_keys
                    if td <= r_done:
                        done = True
                        break
                if work > budget:
                    # Too far from the tabled codes for hashing to pay: scan linearly.
                    knn_scan(q[qi : qi + 1], db, rank, 0, n_rows, n_keys, k, max_d, ascending, one)
                    kk = 0
                    while kk < k and one[0, kk] != _INT64_MAX:
                        buf[kk] = one[0, kk]
                        kk += 1
                    cnt = kk
                    done = True
                    break
        _emit(buf, cnt, k, out[qi])


@njit(nogil=True, cache=True)
def mih_range(q, qsub, db, rank, n_keys, radius, lens, offsets, rows, tcodes, n_rows, budget, smasks):
    """Exact radius search by multi-index hashing; returns (counts, keys) like `range_scan`.

    With radius = s * m + a (0 <= a < m), a code within the radius has one of substrings
    0..a within s of the query's, or one of the others within s - 1 (pigeonhole), so those
    are the probes. A query whose probes exceed `budget` is answered by a linear scan.
    Tables and `smasks` as in `mih_knn`; a row is taken in the first table that meets it.
    """
    nq, m = qsub.shape
    s_max = radius // m
    a = radius % m
    counts = np.zeros(nq, np.int64)
    keys = np.empty(1024, np.int64)
    total = 0
    for qi in range(nq):
        start = total
        # Probes first counted, so a hopeless query goes straight to the linear scan.
        n_probes = 0
        for j in range(m):
            top = s_max if j <= a else s_max - 1
            c = 1
            for s in range(min(top, lens[j]) + 1):
                n_probes += c
                c = c * (lens[j] - s) // (s + 1)
        if n_probes > budget:
            c1, k1 = range_scan(q[qi : qi + 1], db, rank, 0, n_rows, n_keys, radius)
            if total + len(k1) > len(keys):
                grown = np.empty(max(2 * len(keys), total + len(k1)), np.int64)
                grown[:total] = keys[:total]
                keys = grown
            keys[total : total + len(k1)] = k1
            total += len(k1)
            counts[qi] = len(k1)
            continue
        for j in range(m):
            top = s_max if j <= a else s_max - 1
            L = lens[j]
            for s in range(min(top, L) + 1):
                mask = np.int64((1 << s) - 1)
                end = np.int64(1) << L
                qv = qsub[qi, j]
                while mask < end:
                    v = qv ^ mask
                    for p in range(offsets[j, v], offsets[j, v + 1]):
                        d = _table_distance(q, qi, tcodes, j, p)
                        if d <= radius:
                            row = _checked_row(rows[j, p], n_rows)
                            if _met_before_range(q, qi, tcodes, j, p, smasks, s_max, a):
                                continue
                            if total == len(keys):
                                grown = np.empty(2 * len(keys), np.int64)
                                grown[:total] = keys[:total]
                                keys = grown
                            keys[total] = d * n_keys + _rank_of(rank, row)
                            total += 1
                    if s == 0:
                        break
                    mask = _next_mask(mask)
        keys[start:total].sort()
        counts[qi] = total - start
    return counts, keys[:total]


# -- multi-index hashing: table build ---------------------------------------------------------
@njit(nogil=True, cache=True)
def substring_column(data, lo, hi, out, counts):
    """Value of bits [lo, hi) (at most 24; bit 0 = the high bit of byte 0) of every packed code
    in `data` (n, n_bytes) uint8, into `out` (n,) uint32; adds 1 to counts[value + 1] for each
    (so a cumulative sum of `counts` gives CSR bucket offsets)."""
    b0 = lo // 8
    b1 = (hi - 1) // 8
    shift = (b1 + 1) * 8 - hi
    mask = (np.int64(1) << (hi - lo)) - 1
    for i in range(data.shape[0]):
        acc = np.int64(0)
        for b in range(b0, b1 + 1):
            acc = (acc << 8) | np.int64(data[i, b])
        val = (acc >> shift) & mask
        out[i] = val
        counts[val + 1] += 1


@njit(nogil=True, cache=True)
def bucket_fill(values, offsets, words, rows_out, tcodes_out):
    """Counting sort of rows by `values` into a CSR table: rows_out[p] (int32) and their code
    words tcodes_out[p * W : (p + 1) * W] for p in offsets[v] .. offsets[v + 1], rows of equal
    value in ascending order (the order `argsort(kind="stable")` gives). `words` is (n, W)."""
    W = words.shape[1]
    pos = offsets[:-1].copy()
    for i in range(values.shape[0]):
        v = values[i]
        p = pos[v]
        pos[v] = p + 1
        rows_out[p] = i
        for w in range(W):
            tcodes_out[p * W + w] = words[i, w]
