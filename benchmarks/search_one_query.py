"""CPU time of flat and mih searches, one query at a time and in a batch, on random 64-bit codes.

A quick check of the per-call cost of a search (what `make bench-search` measures at 10^6 over
learned codes, in minutes): the regression of 2026-11-30 (mih's substring masks rebuilt on every
search) showed here as mih 0.50 ms a query against 0.31 ms before. CPU time (process_time) of
one thread, so that other work on a shared machine matters less than for wall time; to compare
two checkouts, run it with each on PYTHONPATH, alternately:

    python benchmarks/search_one_query.py                       # this checkout
    PYTHONPATH=/path/to/other/src python benchmarks/search_one_query.py
    python benchmarks/search_one_query.py --masks   # mih's cached substring masks against rebuilt
                                                    # ones, alternating in one process
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from hashsearch.index import create_index
from hashsearch.types import Codes


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="codes in the index")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--masks", action="store_true", help="mih only: cached substring masks vs rebuilt per search")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    bits = rng.random((args.n, 64)) < 0.5
    codes = Codes.from_bits(bits)
    # Queries near stored codes (5 % of bits flipped), as a search for a known image would be.
    q = Codes.from_bits(bits[: args.queries] ^ (rng.random((args.queries, 64)) < 0.05))
    one = [q[i : i + 1] for i in range(args.queries)]
    if args.masks:
        compare_masks(codes, one, args)
        return
    for name in ("flat", "mih"):
        index = create_index(name, n_bits=64, n_threads=1)
        index.add(codes, np.arange(args.n))
        index.search(one[0], args.k)  # compiles / loads the kernels
        t = time.process_time()
        for _ in range(args.repeat):
            for qq in one:
                index.search(qq, args.k)
        single = (time.process_time() - t) / (args.repeat * args.queries) * 1e3
        t = time.process_time()
        for _ in range(args.repeat):
            index.search(q, args.k)
        batch = (time.process_time() - t) / args.repeat * 1e3
        print(
            f"{name}: {single:.3f} ms CPU a query one at a time; {batch:.2f} ms for {args.queries} in a batch "
            f"(n={args.n:,}, k={args.k}, 1 thread)"
        )


def compare_masks(codes: Codes, one: list[Codes], args) -> None:
    """One mih index searched one query at a time, alternately with its cached masks and with
    masks rebuilt on every search (as before 2e98d05)."""
    from hashsearch.codes import word_view
    from hashsearch.index import mih

    cached = mih.substring_masks

    def rebuilt(n_bits, bounds, dtype=np.uint64):
        bits = np.zeros((len(bounds) - 1, n_bits), np.uint8)
        for j in range(len(bounds) - 1):
            bits[j, int(bounds[j]) : int(bounds[j + 1])] = 1
        return word_view(Codes.from_bits(bits).data).astype(dtype)

    index = create_index("mih", n_bits=64, n_threads=1)
    index.add(codes, np.arange(len(codes)))
    index.search(one[0], args.k)
    try:
        for _ in range(args.repeat):
            for name, masks in (("cached", cached), ("rebuilt", rebuilt)):
                mih.substring_masks = masks
                t = time.process_time()
                for qq in one:
                    index.search(qq, args.k)
                print(f"mih, masks {name}: {(time.process_time() - t) / len(one) * 1e3:.3f} ms CPU a query")
    finally:
        mih.substring_masks = cached


if __name__ == "__main__":
    main()
