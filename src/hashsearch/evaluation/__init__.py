"""Evaluation: pure retrieval metrics (`metrics`), the benchmark report writer (`report`) and the
papers' published numbers (`published`).

Nothing here runs an experiment (that is `hashsearch.experiments`), and importing this package
does not load matplotlib: the plots import it when called.
"""

from hashsearch.evaluation.metrics import (
    MAPResult,
    MetricResult,
    PRCurve,
    evaluate,
    evaluate_distances,
    mean_average_precision,
    pr_curve,
    precision_at_k,
    radius_precision_recall,
    recall_at_k,
    relevance,
    tie_aware_map,
)
from hashsearch.evaluation.report import (
    machine_description,
    plot_loss_curves,
    plot_pr_curves,
    plot_results,
    plot_train_time,
    write_results,
)

__all__ = [
    "MAPResult",
    "MetricResult",
    "PRCurve",
    "evaluate",
    "evaluate_distances",
    "machine_description",
    "mean_average_precision",
    "plot_loss_curves",
    "plot_pr_curves",
    "plot_results",
    "plot_train_time",
    "pr_curve",
    "precision_at_k",
    "radius_precision_recall",
    "recall_at_k",
    "relevance",
    "tie_aware_map",
    "write_results",
]
