"""`hashsearch bench`: method resolution, the published numbers it quotes, and its training-time plot."""

from __future__ import annotations

import pytest

from hashsearch.evaluation.published import DFEH_CIFAR10, RITQ_TABLE_II, published_map, tables_markdown
from hashsearch.evaluation.report import plot_loss_curves, plot_train_time
from hashsearch.experiments.bench import resolve_methods
from hashsearch.hashing import list_hashers


def test_all_means_every_registered_hasher():
    assert resolve_methods(["all"]) == [m for m in list_hashers() if m != "deep"] + ["dhfi[use=b]"]
    assert {
        "sklsh",
        "sh",
        "sph",
        "dsh-density",
        "cca-itq",
        "ksh",
        "sdh",
        "dpsh",
        "dsh",
        "dfeh",
        "hashnet",
        "csq",
        "ritq",
        "dhfi",
    } <= set(list_hashers())
    assert resolve_methods(["itq", "dfeh[lambda_q=0,lambda_b=0]"]) == ["itq", "dfeh[lambda_q=0,lambda_b=0]"]
    with pytest.raises(ValueError, match="nope"):
        resolve_methods(["itq", "nope"])


def test_published_numbers_are_the_papers():
    assert published_map("dfeh", 48) == (0.7864, DFEH_CIFAR10["source"])
    assert published_map("dsh", 12)[0] == 0.6776
    assert published_map("ritq", 16) == (0.761, RITQ_TABLE_II["source"])
    assert published_map("dlbhc", 48)[0] == 0.5883  # DFEH table preferred where both have the cell
    assert published_map("sph", 8) is None  # garbled in the stored text
    assert published_map("itq", 32) is None
    md = tables_markdown()
    assert "garbled" in md and "0.7568" in md


def test_train_time_plot(tmp_path):
    rows = [
        {"method": m, "bits": b, "timings": {"fit_s": t}}
        for m, b, t in [("itq", 16, 0.5), ("itq", 32, 0.7), ("dpsh", 16, 3.0)]
    ]
    out = plot_train_time(rows, tmp_path / "t.png")
    assert out.stat().st_size > 1000


def test_loss_curve_plot(tmp_path):
    rows = [{"method": "dpsh", "bits": 48, "loss_history": [2.0, 1.0, 0.5]}, {"method": "itq", "bits": 48}]
    assert plot_loss_curves(rows, 48, tmp_path / "l.png").stat().st_size > 1000
    # methods without a loss (classic ones only): no empty plot
    assert plot_loss_curves(rows[1:], 48, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_cli_rejects_an_unknown_method_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from hashsearch.cli import app

    r = CliRunner().invoke(app, ["bench", "--methods", "itq,nope", "--cache-dir", str(tmp_path / "cache")])
    assert r.exit_code != 0
    assert "nope" in r.output
    assert not (tmp_path / "cache").exists()  # no feature made, no network trained
