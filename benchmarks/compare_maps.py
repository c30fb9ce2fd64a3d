"""Do two runs of a results file give the same retrieval figures? (a check after a refactor)

    python benchmarks/compare_maps.py benchmarks/results/cifar10-1k.json /tmp/rerun/cifar10-1k.json

Compares mAP@ALL and tie-aware mAP of every (method, bits) row the two JSON results files
(`hashsearch eval/bench --out`) share, rounded to the 4 decimals the tables print; prints each
cell that differs and a summary line, and exits 1 if any differs or a row of the first file is
missing from the second. Timings are not compared (they depend on the machine's load).
"""

from __future__ import annotations

import argparse
import json
import sys

METRICS = ("map", "map_tie_aware")


def rows(path: str) -> dict[tuple[str, int], dict]:
    with open(path) as f:
        return {(r["method"], int(r["bits"])): r["metrics"] for r in json.load(f)["rows"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("reference", help="the committed results JSON")
    ap.add_argument("rerun", help="the rerun's results JSON")
    args = ap.parse_args()
    ref, new = rows(args.reference), rows(args.rerun)
    missing = sorted(set(ref) - set(new))
    same = differ = 0
    for key in sorted(set(ref) & set(new)):
        for m in METRICS:
            a, b = f"{ref[key][m]:.4f}", f"{new[key][m]:.4f}"
            if a == b:
                same += 1
            else:
                differ += 1
                print(f"{key[0]} {key[1]} bits {m}: {a} -> {b}")
    for key in missing:
        print(f"{key[0]} {key[1]} bits: not in {args.rerun}")
    print(
        f"{same} of {same + differ} cells identical to 4 decimals ({', '.join(METRICS)}), {differ} differ; "
        f"{len(missing)} of {len(ref)} rows missing from the rerun"
    )
    return 1 if differ or missing else 0


if __name__ == "__main__":
    sys.exit(main())
