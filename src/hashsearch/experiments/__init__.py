"""Experiments: running methods on a split protocol and writing what they measured.

This is the stage after `evaluation` (pure metrics and report writers): it extracts a split's
features once (`features`: `split_features`, and `FeatureProvider`, which also trains a backbone
from scratch or fine-tunes one with a deep hasher and keeps the weights in the cache folder),
fits, encodes and evaluates each method x bit length (`runner.run_methods`), and holds the jobs
behind `hashsearch eval`, `hashsearch demo` (`jobs`) and `hashsearch bench` (`bench`, with the
goal it reports against). The CLI calls these; nothing earlier in the flow imports them.
"""

from hashsearch.experiments.features import FeatureProvider, Part, ProtocolFeatures, concat_features, split_features
from hashsearch.experiments.runner import MODES, check_mode, parse_method, run_methods

__all__ = [
    "MODES",
    "FeatureProvider",
    "Part",
    "ProtocolFeatures",
    "check_mode",
    "concat_features",
    "parse_method",
    "run_methods",
    "split_features",
]
