"""Evaluation: pure retrieval metrics (`metrics`) and the benchmark report writer (`report`).

Importing this package loads neither matplotlib nor the heavier experiment runner; the plots
import matplotlib when called, and `hashsearch.evaluation.runner` / `.experiment` are imported
by name where needed.
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
from hashsearch.evaluation.report import plot_pr_curves, plot_results, write_results

__all__ = [
    "MAPResult",
    "MetricResult",
    "PRCurve",
    "evaluate",
    "evaluate_distances",
    "mean_average_precision",
    "plot_pr_curves",
    "plot_results",
    "pr_curve",
    "precision_at_k",
    "radius_precision_recall",
    "recall_at_k",
    "relevance",
    "tie_aware_map",
    "write_results",
]
