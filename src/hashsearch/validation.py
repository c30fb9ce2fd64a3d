"""Input checks shared by every stage: scalars, choices and feature matrices.

One place for the checks that guard public parameters, in the manner of scikit-learn's
``sklearn/utils/validation.py``: each check returns the value in its plain Python (or NumPy)
form, or raises ``ValueError`` with a message that names the parameter, the value received and
what is allowed, e.g. ``"k must be a positive integer or None (whole database), got 0"``.

A ``bool`` is never accepted where a number is asked for (``True`` is an ``int`` in Python, but a
flag passed as a count is a mistake), and NaN is never a valid number. This module imports
nothing from hashsearch, so every stage may use it.

Examples
--------
>>> check_int("k", 5, low=1)
5
>>> check_int("k", True, low=1)
Traceback (most recent call last):
...
ValueError: k must be a positive integer, got True
>>> check_real("dropout", 0.5, low=0, high=1, high_open=True, noun="probability")
0.5
>>> check_choice("database", "rest", ("rest", "rest-minus-train"))
'rest'
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, Literal, TypeVar, overload

import numpy as np

__all__ = [
    "NotFittedError",
    "check_choice",
    "check_features",
    "check_int",
    "check_is_fitted",
    "check_real",
    "int_words",
    "real_words",
]

T = TypeVar("T")


class NotFittedError(RuntimeError):
    """Raised when a hasher (or any estimator) is used before `fit`."""


def _article(noun: str) -> str:
    return "an" if noun[:1].lower() in "aeiou" else "a"


def _or_none(allowed: str, allow_none: bool, none_means: str | None) -> str:
    if not allow_none:
        return allowed
    return allowed + " or None" + (f" ({none_means})" if none_means else "")


def int_words(low: int | None = None, high: int | None = None) -> str:
    """What `check_int` allows, in words: 'a positive integer', 'an integer in [1, 4096]', ..."""
    if low is None and high is None:
        return "an integer"
    if high is None:
        return {0: "a non-negative integer", 1: "a positive integer"}.get(low, f"an integer >= {low}")  # type: ignore[arg-type]
    if low is None:
        return f"an integer <= {high}"
    return f"an integer in [{low}, {high}]"


def real_words(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    noun: str = "number",
) -> str:
    """What `check_real` allows, in words: 'a positive number', 'a probability in [0, 1)', ..."""
    a = _article(noun)
    if low is None and high is None:
        return f"{a} {noun}"
    if high is None:
        if low == 0:
            return f"{a} {'positive' if low_open else 'non-negative'} {noun}"
        return f"{a} {noun} {'>' if low_open else '>='} {low}"
    if low is None:
        return f"{a} {noun} {'<' if high_open else '<='} {high}"
    return f"{a} {noun} in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def _fail(name: str, allowed: str, value: Any, note: str | None) -> ValueError:
    return ValueError(f"{name} must be {allowed}{f' ({note})' if note else ''}, got {value!r}")


@overload
def check_int(
    name: str,
    value: Any,
    *,
    low: int | None = ...,
    high: int | None = ...,
    allow_none: Literal[False] = ...,
    none_means: str | None = ...,
    note: str | None = ...,
) -> int: ...
@overload
def check_int(
    name: str,
    value: Any,
    *,
    low: int | None = ...,
    high: int | None = ...,
    allow_none: bool = ...,
    none_means: str | None = ...,
    note: str | None = ...,
) -> int | None: ...
def check_int(
    name: str,
    value: Any,
    *,
    low: int | None = None,
    high: int | None = None,
    allow_none: bool = False,
    none_means: str | None = None,
    note: str | None = None,
) -> int | None:
    """`value` as an ``int`` if it is an integer (Python or NumPy, not a bool) in ``[low, high]``.

    Parameters
    ----------
    name : str
        The parameter's name, as the caller knows it (it starts the error message).
    value : any
        What was received.
    low, high : int, optional
        Inclusive bounds; None leaves that side open.
    allow_none : bool
        Accept None (returned as None); `none_means` says what None stands for in the message.
    note : str, optional
        Why the bounds are what they are, put in brackets after them.

    Raises
    ------
    ValueError
        ``"<name> must be <allowed>[ (<note>)], got <value>"``, e.g.
        ``"n_threads must be a positive integer or None (every core), got 0"``.
    """
    if value is None and allow_none:
        return None
    ok = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    if ok and ((low is not None and value < low) or (high is not None and value > high)):
        ok = False
    if not ok:
        raise _fail(name, _or_none(int_words(low, high), allow_none, none_means), value, note)
    return int(value)


def check_real(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = False,
    allow_none: bool = False,
    none_means: str | None = None,
    noun: str = "number",
    note: str | None = None,
) -> float | None:
    """`value` as a ``float`` if it is a real number (not a bool, not NaN) within the bounds.

    Parameters
    ----------
    name, value, allow_none, none_means, note
        As in `check_int`.
    low, high : float, optional
        Bounds, inclusive unless `low_open` / `high_open`; None leaves that side open.
    finite : bool
        Refuse infinities too (NaN is always refused).
    noun : str
        What the number is, for the message ("number", "probability", ...).

    Raises
    ------
    ValueError
        ``"<name> must be <allowed>[ (<note>)], got <value>"``, e.g.
        ``"lr must be a positive number, got -1.0"``.
    """
    if value is None and allow_none:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    if ok:
        v = float(value)
        ok = not math.isnan(v) and not (finite and math.isinf(v))
        if ok and low is not None:
            ok = v > low if low_open else v >= low
        if ok and high is not None:
            ok = v < high if high_open else v <= high
    if not ok:
        allowed = real_words(low, high, low_open=low_open, high_open=high_open, noun=noun)
        if finite and low is None and high is None:
            allowed = f"a finite {noun}"
        raise _fail(name, _or_none(allowed, allow_none, none_means), value, note)
    return float(value)


def check_choice(name: str, value: T, choices: Sequence[Any], *, note: str | None = None) -> T:
    """`value` if it is one of `choices` (of the choice's type, a bool only for a bool, and equal).

    Raises
    ------
    ValueError
        ``"<name> must be one of 'a', 'b'[ (<note>)], got <value>"``.
    """
    if not any(
        isinstance(value, type(c)) and isinstance(value, bool) == isinstance(c, bool) and bool(value == c)
        for c in choices
    ):
        raise _fail(name, "one of " + ", ".join(map(repr, choices)), value, note)
    return value


def check_is_fitted(estimator: Any, attribute: str = "n_features_in_") -> None:
    """Refuse an estimator that has no `attribute` yet (set last by its `fit`).

    Raises
    ------
    NotFittedError
        ``"this ITQ is not fitted yet: call fit(features) first"``.
    """
    if not hasattr(estimator, attribute):
        raise NotFittedError(f"this {type(estimator).__name__} is not fitted yet: call fit(features) first")


def check_features(X: Any, name: str, allow_empty: bool = False) -> np.ndarray:
    """A real (n_samples, n_features) matrix as float32 (float64 stays float64).

    Raises
    ------
    ValueError
        Not 2-d, not numeric, no row (unless `allow_empty`), or a NaN / infinite value; the
        message names `name`.
    """
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-d (n_samples, n_features) array, got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {X.dtype}")
    if X.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is empty: at least one row is needed")
    if X.dtype != np.float64:
        X = X.astype(np.float32, copy=False)
    if X.size and not np.isfinite(X).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return X
