"""Benchmark results as files people read: a JSON record, markdown tables and plots.

Row schema
----------
Every function takes a list of result rows, one per (method, bit length)::

    {
        "method": str,                     # e.g. "itq"
        "bits": int,                       # code length
        "metrics": dict,                   # the dict of hashsearch.evaluation.evaluate
        "timings": {str: float},           # optional, seconds per stage, e.g. fit_s, encode_s, eval_s
        "reference": {str: float},         # optional, published numbers keyed like "metrics"
        ...                                # anything else JSON-able (e.g. "params") is kept in the JSON
    }

A metric with a reference is shown as "ours (paper)" in the markdown tables.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

#: Version of the JSON layout written by `write_results`.
RESULTS_FORMAT_VERSION = 1

_MISSING = "—"


def _check_rows(rows) -> list[dict]:
    if isinstance(rows, dict) or not isinstance(rows, Sequence):
        raise TypeError(f"rows must be a list of dicts, got {type(rows).__name__}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise TypeError(f"rows[{i}] must be a dict, got {type(row).__name__}")
        missing = [key for key in ("method", "bits", "metrics") if key not in row]
        if missing:
            raise ValueError(
                f"rows[{i}] lacks {', '.join(missing)}; every row needs 'method' (str), 'bits' (int) "
                "and 'metrics' (the dict of evaluate())"
            )
        if not isinstance(row["metrics"], dict):
            raise TypeError(f"rows[{i}]['metrics'] must be a dict, got {type(row['metrics']).__name__}")
        for key in ("timings", "reference"):
            if not isinstance(row.get(key, {}), dict):
                raise TypeError(f"rows[{i}]['{key}'] must be a dict, got {type(row[key]).__name__}")
    return list(rows)


def _jsonable(obj):
    """`obj` with NumPy values turned into Python ones and NaN / inf into None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, str):
        return obj
    return repr(obj)


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return _MISSING
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return f"{float(value):.{digits}f}"


def _ordered(values) -> list:
    seen: list = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


def _k_key(key: str) -> tuple:
    m = re.fullmatch(r"p@(\d+)", key)
    return (int(m.group(1)),) if m else (0,)


def _table_metrics(rows: list[dict]) -> list[tuple[str, str]]:
    """(key, heading) of each metric table, in a fixed order, for the keys the rows carry."""
    keys = _ordered(k for row in rows for k in row["metrics"])
    map_at = _ordered(row["metrics"].get("map_at") for row in rows if "map" in row["metrics"])
    at = "all" if map_at in ([None], []) else "/".join("all" if k is None else str(k) for k in map_at)
    out = []
    if "map" in keys:
        out.append(("map", f"mAP@{at} (ranking ties broken by database id)"))
    if "map_tie_aware" in keys:
        out.append(("map_tie_aware", "Tie-aware mAP@all (expected value under random order within equal distances)"))
    for key in sorted((k for k in keys if re.fullmatch(r"p@\d+", k)), key=_k_key):
        out.append((key, f"Precision@{key[2:]}"))
    for key in sorted(k for k in keys if re.fullmatch(r"precision_r\d+", k)):
        r = key[len("precision_r") :]
        out.append((key, f"Precision within Hamming radius {r} (an empty ball counts as 0)"))
        if f"frac_empty_r{r}" in keys:
            out.append((f"frac_empty_r{r}", f"Fraction of queries with an empty Hamming ball of radius {r}"))
    return out


def _cells(rows: list[dict], method: str, bits: int, key: str) -> str:
    found = [row for row in rows if row["method"] == method and row["bits"] == bits]
    if not found:
        return _MISSING
    parts = []
    for row in found:
        cell = _fmt(row["metrics"].get(key))
        ref = (row.get("reference") or {}).get(key)
        if ref is not None:
            cell += f" ({_fmt(ref)})"
        parts.append(cell)
    return " / ".join(parts)  # several rows for one (method, bits): show them all, in row order


def _markdown(rows: list[dict], title: str, notes: str) -> str:
    methods = _ordered(str(row["method"]) for row in rows)
    bits = sorted(_ordered(int(row["bits"]) for row in rows))
    rows = [dict(row, method=str(row["method"]), bits=int(row["bits"])) for row in rows]
    lines = [f"# {title}", ""]
    if any(row.get("reference") for row in rows):
        lines += ['Cells read "ours (paper)" where a published number is given.', ""]
    header = "| method | " + " | ".join(f"{b} bits" for b in bits) + " |"
    rule = "|---|" + "---:|" * len(bits)
    for key, heading in _table_metrics(rows):
        lines += [f"## {heading}", "", header, rule]
        lines += [f"| {m} | " + " | ".join(_cells(rows, m, b, key) for b in bits) + " |" for m in methods]
        lines.append("")
    timing_keys = _ordered(k for row in rows for k in (row.get("timings") or {}))
    if timing_keys:
        lines += [
            "## Timings (seconds)",
            "",
            "| method | bits | " + " | ".join(timing_keys) + " |",
            "|---|---:|" + "---:|" * len(timing_keys),
        ]
        for row in sorted(rows, key=lambda r: (methods.index(r["method"]), r["bits"])):
            t = row.get("timings") or {}
            lines.append(
                f"| {row['method']} | {row['bits']} | " + " | ".join(_fmt(t.get(k), 2) for k in timing_keys) + " |"
            )
        lines.append("")
    counts = _ordered(
        (row["metrics"].get("n_queries"), row["metrics"].get("n_database"), row["metrics"].get("n_excluded"))
        for row in rows
    )
    if len(counts) == 1 and counts[0][0] is not None:
        nq, nd, ne = counts[0]
        lines += [
            f"{nq} {'query' if nq == 1 else 'queries'} against {nd} database {'item' if nd == 1 else 'items'}; "
            f"{ne} {'query' if ne == 1 else 'queries'} with no relevant item {'is' if ne == 1 else 'are'} excluded "
            "from every mean (never scored 0).",
            "",
        ]
    if notes:
        lines += ["## Notes", "", notes.strip(), ""]
    return "\n".join(lines)


def write_results(rows: list[dict], out_stem: Path, title: str, notes: str = "") -> tuple[Path, Path]:
    """Write `<out_stem>.json` (rows and metadata) and `<out_stem>.md` (tables); return both paths.

    Parameters
    ----------
    rows : list of dict
        Result rows; see the module docstring for their schema.
    out_stem : path
        Path without extension; ".json" and ".md" are appended (so a stem may contain dots).
    title : str
        Heading of the markdown file.
    notes : str
        Free text (protocol, machine, command) appended to the markdown and kept in the JSON.

    Returns
    -------
    (json_path, md_path)
    """
    rows = _check_rows(rows)
    out_stem = Path(out_stem)
    json_path = out_stem.with_name(out_stem.name + ".json")
    md_path = out_stem.with_name(out_stem.name + ".md")
    from hashsearch import __version__

    record = {
        "format": "hashsearch-results",
        "format_version": RESULTS_FORMAT_VERSION,
        "title": title,
        "notes": notes,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hashsearch_version": __version__,
        "rows": rows,
    }
    text_json = json.dumps(_jsonable(record), indent=2, allow_nan=False) + "\n"
    text_md = _markdown(rows, title, notes)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(text_json, encoding="utf-8")
    md_path.write_text(text_md, encoding="utf-8")
    return json_path, md_path


def _figure(figsize=(6, 4.5), dpi: int = 120):
    # The Agg canvas is attached to this figure only: no pyplot, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out_png) -> Path:
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out_png)
    return out_png


def plot_results(rows: list[dict], out_png: Path, metric: str = "map") -> Path:
    """Plot `metric` (default mAP) against code length, one line per method; return the path."""
    rows = _check_rows(rows)
    fig = _figure()
    ax = fig.add_subplot()
    drawn = 0
    for method in _ordered(str(row["method"]) for row in rows):
        pts = sorted((int(r["bits"]), r["metrics"].get(metric)) for r in rows if str(r["method"]) == method)
        pts = [(b, v) for b, v in pts if v is not None and not math.isnan(v)]
        if pts:
            ax.plot([b for b, _ in pts], [v for _, v in pts], marker="o", label=method)
            drawn += 1
    if not drawn:
        raise ValueError(
            f"no row has a value for metric {metric!r}; metrics present: "
            f"{', '.join(_ordered(k for r in rows for k in r['metrics']))}"
        )
    bits = sorted({int(r["bits"]) for r in rows})
    ax.set_xticks(bits)
    ax.set_xlabel("code length (bits)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out_png)


def plot_pr_curves(rows: list[dict], bits: int, out_png: Path) -> Path:
    """Plot the Hamming-radius precision-recall curve of each method at `bits`; return the path.

    Each point is one radius (0..n_bits). Precision is averaged over the queries whose ball is
    not empty (the metrics count an empty ball as 0, which would pull the curve to 0 at small
    radii and hide the trade-off the curve is for); recall is averaged over all queries.
    """
    rows = _check_rows(rows)
    at = [r for r in rows if int(r["bits"]) == int(bits)]
    if not at:
        raise ValueError(f"bits={bits!r} matches no row; rows have bits {sorted({int(r['bits']) for r in rows})}")
    fig = _figure()
    ax = fig.add_subplot()
    drawn = 0
    for row in at:
        curve = row["metrics"].get("pr_curve")
        if not curve:
            continue  # float-distance evaluations carry no Hamming-radius curve
        full = 1.0 - np.asarray(curve["frac_empty"], float)
        precision = np.divide(
            np.asarray(curve["precision"], float), full, out=np.full(full.shape, np.nan), where=full > 0
        )
        ax.plot(curve["recall"], precision, marker=".", label=str(row["method"]))
        drawn += 1
    if not drawn:
        raise ValueError(f"no row at bits={bits} has a 'pr_curve' in its metrics (it is None for float distances)")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision (queries with a non-empty ball)")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Precision-recall within Hamming radius, {bits} bits")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out_png)


def plot_train_time(rows: list[dict], out_png: Path) -> Path:
    """Bar chart of the total fit time of each method (``timings["fit_s"]``, summed over its bit
    lengths), on a log scale; return the path."""
    totals: dict[str, float] = {}
    for r in rows:
        totals[r["method"]] = totals.get(r["method"], 0.0) + float(r["timings"]["fit_s"])
    fig = _figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    ax.barh(list(totals), list(totals.values()))
    ax.set_xlabel("training time, s (sum over bit lengths)")
    ax.set_xscale("log")
    return _save(fig, out_png)


def plot_loss_curves(rows: list[dict], bits: int, out_png: Path) -> Path | None:
    """Training loss per epoch of every method that logs one (``loss_history``), at `bits` bits,
    each curve divided by its first epoch's; no file (None) when no method at `bits` logs a loss."""
    curves = [
        (r["method"], r["loss_history"])
        for r in rows
        if int(r["bits"]) == bits and r.get("loss_history") and r["loss_history"][0] != 0
    ]
    if not curves:
        return None
    fig = _figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    for method, loss in curves:
        ax.plot(range(1, len(loss) + 1), [v / loss[0] for v in loss], label=method)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss / first epoch's")
    ax.set_title(f"Training loss, {bits} bits")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, out_png)


def machine_description() -> str:
    """What the numbers were measured on, for the notes of a result file: CPU architecture and
    cores, Python implementation and version."""
    return (
        f"{platform.machine()} {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}, no GPU used"
    )
