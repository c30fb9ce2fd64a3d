"""Fit, encode and evaluate each method x bit length on a split's features: one result row each."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from hashsearch.evaluation.metrics import evaluate
from hashsearch.experiments.features import FeatureProvider, Part, ProtocolFeatures
from hashsearch.hashing import create_hasher, hashers
from hashsearch.validation import check_choice

#: The training modes of `run_methods`.
MODES = ("head", "finetune")


def parse_method(spec: str) -> tuple[str, dict]:
    """A method spec: a registered name, optionally with parameters, ``"dhfi[use=b]"`` or
    ``"dfeh[lambda_q=0,lambda_b=0.1]"`` (values read as JSON, else kept as strings)."""
    import json

    name, _, rest = spec.partition("[")
    params: dict = {}
    if rest:
        if not rest.endswith("]"):
            raise ValueError(f"method spec {spec!r}: parameters go in brackets, e.g. 'dhfi[use=b]'")
        for item in filter(None, rest[:-1].split(",")):
            key, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"method spec {spec!r}: {item!r} is not key=value")
            try:
                params[key.strip()] = json.loads(value)
            except json.JSONDecodeError:
                params[key.strip()] = value.strip()
    hashers.get(name)  # unknown name -> ValueError listing the registered ones
    return name, params


def own_items(query: Part, database: Part) -> np.ndarray:
    """For each query, the database row holding the same image (-1: none): what leave-one-out leaves out."""
    at = {r.key: i for i, r in enumerate(database.records)}
    return np.array([at.get(r.key, -1) for r in query.records], np.int64)


def check_mode(mode: str) -> str:
    """A training mode of `run_methods`: 'head' (frozen backbone) or 'finetune'."""
    return check_choice("mode", mode, MODES)


def run_methods(
    feats: ProtocolFeatures | FeatureProvider,
    methods: Sequence[str],
    bits: Sequence[int],
    *,
    seed: int = 0,
    params: dict[str, dict] | None = None,
    ks: Sequence[int] = (100, 1000),
    radius: int = 2,
    mode: str = "head",
    leave_one_out: bool | None = None,
    log=print,
) -> list[dict]:
    """One result row per (method, bits): the metrics of `evaluate` and the time of each stage.

    `feats` is a split's features, or a `FeatureProvider` that also serves the methods defined
    on other backbones' features (RITQ, DHFI). `mode="finetune"` (deep hashers, with a
    `FeatureProvider`) trains each hasher with its backbone and evaluates on the fine-tuned
    backbone's features; fit_s is then the fine-tuning time. `leave_one_out` (None: the
    provider's `Split.leave_one_out`, else False): each query is ranked against the database
    without its own image.
    """
    check_mode(mode)
    if leave_one_out is None:
        leave_one_out = isinstance(feats, FeatureProvider) and feats.split.leave_one_out
    if mode == "finetune" and not isinstance(feats, FeatureProvider):
        raise ValueError("mode='finetune' needs a FeatureProvider (it extracts features from the fine-tuned backbone)")
    rows = []
    width = max([8, *map(len, methods)])  # the progress lines' method column, as wide as the longest spec
    for spec in methods:
        method, spec_params = parse_method(spec)
        extra: dict = {}
        if isinstance(feats, FeatureProvider):
            mf, extra = feats.for_method(method)
        elif hashers.get(method).feature_backbones != (None,):
            raise ValueError(
                f"method {method!r} needs features of {hashers.get(method).feature_backbones}; pass a FeatureProvider"
            )
        else:
            mf = feats
        Xt, yt = mf.train.features, mf.train.labels
        Xq, yq = mf.query.features, mf.query.labels
        Xd, yd = mf.database.features, mf.database.labels
        parts = (mf.query, mf.database)
        for b in bits:
            hasher = create_hasher(
                method, **{"n_bits": b, "seed": seed, **extra, **(params or {}).get(method, {}), **spec_params}
            )
            t0 = time.perf_counter()
            if mode == "finetune":
                if not hasattr(hasher, "finetune"):
                    raise ValueError(f"method {spec!r} has no finetune mode (deep hashers have it)")
                hasher, tuned, seconds = feats.finetuned(hasher, f"{spec}-{b}")
                Xq, yq, Xd, yd = (
                    tuned.query.features,
                    tuned.query.labels,
                    tuned.database.features,
                    tuned.database.labels,
                )
                parts = (tuned.query, tuned.database)
                t1 = time.perf_counter()
                t0 = t1 - seconds
            else:
                hasher.fit(Xt, yt if hasher.supervised else None)
                t1 = time.perf_counter()
            qc, dc = hasher.encode(Xq), hasher.encode(Xd)
            t2 = time.perf_counter()
            metrics = evaluate(
                qc, dc, yq, yd, ks=ks, radius=radius, exclude=own_items(*parts) if leave_one_out else None
            )
            t3 = time.perf_counter()
            rows.append(
                {
                    "method": spec if mode == "head" else f"{spec} (finetune)",
                    "mode": mode,
                    "bits": b,
                    "metrics": metrics,
                    "timings": {"fit_s": t1 - t0, "encode_s": t2 - t1, "eval_s": t3 - t2},
                    "params": hasher.get_params(),
                    **(
                        {"loss_history": [float(v) for v in np.ravel(hasher.loss_history_)]}
                        if hasattr(hasher, "loss_history_")
                        else {}
                    ),
                }
            )
            log(
                f"{spec:>{width}} {b:>3} bits  mAP {metrics['map']:.4f}  tie-aware {metrics['map_tie_aware']:.4f}  "
                f"fit {t1 - t0:.1f}s encode {t2 - t1:.1f}s eval {t3 - t2:.1f}s"
            )
    return rows
