"""Result files: JSON and markdown written together, plots written as PNGs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hashsearch.codes import pack_bits
from hashsearch.evaluation.metrics import evaluate
from hashsearch.evaluation.report import plot_pr_curves, plot_results, write_results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    g = np.random.default_rng(0)
    yq, yd = g.integers(0, 3, 20), g.integers(0, 3, 120)
    out = []
    for method in ("itq", "lsh"):
        for bits in (16, 32):
            centres = g.integers(0, 2, (3, bits))
            flip = 0.2 if method == "itq" else 0.4
            qc = pack_bits((centres[yq] ^ (g.random((20, bits)) < flip)).astype(np.uint8))
            dc = pack_bits((centres[yd] ^ (g.random((120, bits)) < flip)).astype(np.uint8))
            out.append(
                {
                    "method": method,
                    "bits": bits,
                    "metrics": evaluate(qc, dc, yq, yd, ks=(10, 1000)),
                    "timings": {"fit_s": 1.25, "encode_s": 0.5, "eval_s": np.float64(0.01)},
                    "params": {"n_bits": np.int64(bits)},
                }
            )
    out[0]["reference"] = {"map": 0.1234}
    return out


def test_write_results_writes_json_and_markdown(tmp_path, rows):
    json_path, md_path = write_results(
        rows, tmp_path / "sub" / "cifar10.v1", "Retrieval on test", notes="Machine: test box"
    )
    assert json_path == tmp_path / "sub" / "cifar10.v1.json"
    assert md_path == tmp_path / "sub" / "cifar10.v1.md"

    record = json.loads(json_path.read_text())
    assert record["format_version"] == 1 and record["title"] == "Retrieval on test"
    assert len(record["rows"]) == 4
    assert record["rows"][0]["metrics"]["map"] == pytest.approx(rows[0]["metrics"]["map"])
    assert record["rows"][0]["params"]["n_bits"] == 16  # NumPy values became plain JSON

    md = md_path.read_text()
    assert md.startswith("# Retrieval on test")
    for heading in (
        "mAP@all",
        "Tie-aware mAP",
        "Precision@1000",
        "Precision@10",
        "radius 2",
        "empty Hamming ball",
        "Timings",
    ):
        assert heading in md
    for method in ("itq", "lsh"):
        assert f"| {method} |" in md
    assert "| method | 16 bits | 32 bits |" in md
    # ours (paper) where a reference is given
    assert f"{rows[0]['metrics']['map']:.4f} (0.1234)" in md
    # timing table: one line per (method, bits) with each stage
    assert "| method | bits | fit_s | encode_s | eval_s |" in md
    assert "| lsh | 32 | 1.25 | 0.50 | 0.01 |" in md
    assert "Machine: test box" in md
    assert "20 queries against 120 database items" in md


def test_missing_cells_and_none_metrics(tmp_path):
    rows = [
        {"method": "a", "bits": 16, "metrics": {"map": 0.5, "map_tie_aware": None}},
        {"method": "b", "bits": 32, "metrics": {"map": float("nan")}},
    ]
    _, md_path = write_results(rows, tmp_path / "r", "t")
    md = md_path.read_text()
    assert "| a | 0.5000 | — |" in md  # a has no 32-bit row
    assert "| b | — | — |" in md  # NaN shown as missing
    record = json.loads((tmp_path / "r.json").read_text())  # strict JSON: NaN became null
    assert record["rows"][1]["metrics"]["map"] is None


def test_write_results_rejects_malformed_rows(tmp_path):
    with pytest.raises(ValueError, match=r"rows\[0\] lacks bits"):
        write_results([{"method": "a", "metrics": {}}], tmp_path / "r", "t")
    with pytest.raises(TypeError, match="rows must be a list"):
        write_results({"method": "a"}, tmp_path / "r", "t")
    assert not list(tmp_path.iterdir())  # nothing written on error


def test_plots_write_png(tmp_path, rows):
    p = plot_results(rows, tmp_path / "map.png")
    assert p == tmp_path / "map.png" and p.stat().st_size > 1000
    assert p.read_bytes()[:8] == PNG_MAGIC
    q = plot_pr_curves(rows, 32, tmp_path / "pr32.png")
    assert q.stat().st_size > 1000 and q.read_bytes()[:8] == PNG_MAGIC


def test_plot_pr_curves_unknown_bits(tmp_path, rows):
    with pytest.raises(ValueError, match="bits=64 matches no row; rows have bits \\[16, 32\\]"):
        plot_pr_curves(rows, 64, tmp_path / "pr.png")


def test_plots_do_not_switch_the_global_backend(tmp_path, rows):
    import matplotlib

    before = matplotlib.get_backend()
    plot_results(rows, tmp_path / "m.png")
    assert matplotlib.get_backend() == before
