"""hashsearch.validation: the shared input checks and the words of their messages."""

import math

import numpy as np
import pytest

from hashsearch.validation import NotFittedError, check_choice, check_features, check_int, check_is_fitted, check_real


@pytest.mark.parametrize("value", [0, 3, np.int64(7), np.uint8(2)])
def test_check_int_accepts_python_and_numpy_integers(value):
    out = check_int("n", value, low=0)
    assert out == int(value) and type(out) is int


@pytest.mark.parametrize(
    "kwargs, value, message",
    [
        ({"low": 1}, 0, "k must be a positive integer, got 0"),
        ({"low": 1}, True, "k must be a positive integer, got True"),
        ({"low": 1}, np.True_, "k must be a positive integer, got "),
        ({"low": 0}, -1, "k must be a non-negative integer, got -1"),
        ({"low": 2}, 1, "k must be an integer >= 2, got 1"),
        ({"high": 9}, 10, "k must be an integer <= 9, got 10"),
        ({"low": 1, "high": 4096}, 4097, r"k must be an integer in \[1, 4096\], got 4097"),
        ({}, 2.0, "k must be an integer, got 2.0"),
        ({}, "3", "k must be an integer, got '3'"),
        (
            {"low": 1, "allow_none": True, "none_means": "whole database"},
            0,
            r"k must be a positive integer or None \(whole database\), got 0",
        ),
        (
            {"low": 1, "high": 8, "note": "the split has 10 classes"},
            9,
            r"k must be an integer in \[1, 8\] \(the split has 10 classes\), got 9",
        ),
    ],
)
def test_check_int_refuses_with_the_name_the_value_and_what_is_allowed(kwargs, value, message):
    with pytest.raises(ValueError, match=message):
        check_int("k", value, **kwargs)


def test_check_int_none():
    assert check_int("k", None, allow_none=True) is None
    with pytest.raises(ValueError, match="k must be an integer, got None"):
        check_int("k", None)


@pytest.mark.parametrize("value", [0.5, 1, np.float32(0.25), np.int64(0)])
def test_check_real_accepts_real_numbers(value):
    out = check_real("p", value, low=0, high=1)
    assert out == float(value) and type(out) is float


@pytest.mark.parametrize(
    "kwargs, value, message",
    [
        ({"low": 0, "low_open": True}, 0, "lr must be a positive number, got 0"),
        ({"low": 0}, -1e-3, "lr must be a non-negative number, got -0.001"),
        (
            {"low": 0, "high": 1, "high_open": True, "noun": "probability"},
            1.0,
            r"lr must be a probability in \[0, 1\), got 1.0",
        ),
        ({"low": 2, "low_open": True}, 2, "lr must be a number > 2, got 2"),
        ({"high": 1, "high_open": True}, 1, "lr must be a number < 1, got 1"),
        ({}, math.nan, "lr must be a number, got nan"),
        ({}, False, "lr must be a number, got False"),
        ({}, "0.1", "lr must be a number, got '0.1'"),
        ({"finite": True}, math.inf, "lr must be a finite number, got inf"),
        ({"low": 0, "low_open": True, "finite": True}, math.inf, "lr must be a positive number, got inf"),
    ],
)
def test_check_real_refuses(kwargs, value, message):
    with pytest.raises(ValueError, match=message):
        check_real("lr", value, **kwargs)


def test_check_real_allows_infinity_unless_asked():
    assert check_real("ttl", math.inf, low=0, low_open=True) == math.inf


def test_check_choice():
    assert check_choice("mode", "head", ("head", "finetune")) == "head"
    with pytest.raises(ValueError, match="mode must be one of 'head', 'finetune', got 'tail'"):
        check_choice("mode", "tail", ("head", "finetune"))
    with pytest.raises(ValueError, match="mode must be one of 'head', 'finetune', got 1"):
        check_choice("mode", 1, ("head", "finetune"))
    with pytest.raises(ValueError, match="flag must be one of 0, 1, got True"):
        check_choice("flag", True, (0, 1))
    assert check_choice("flag", np.str_("a"), ("a", "b")) == "a"


def test_check_features():
    X = check_features([[1, 2], [3, 4]], "features")
    assert X.dtype == np.float32 and X.shape == (2, 2)
    assert check_features(np.zeros((1, 2)), "features").dtype == np.float64
    assert check_features(np.zeros((0, 3)), "features", allow_empty=True).shape == (0, 3)
    for bad, message in [
        (np.zeros(3), "2-d"),
        (np.array([["a"]]), "numeric"),
        (np.zeros((0, 3)), "empty"),
        (np.array([[np.nan]]), "NaN"),
    ]:
        with pytest.raises(ValueError, match=f"queries .*{message}|queries {message}"):
            check_features(bad, "queries")


def test_check_is_fitted_names_the_class():
    class Thing:
        pass

    thing = Thing()
    with pytest.raises(NotFittedError, match="this Thing is not fitted yet: call fit"):
        check_is_fitted(thing)
    thing.n_features_in_ = 3
    check_is_fitted(thing)
    from hashsearch.hashing import NotFittedError as FromHashing

    assert FromHashing is NotFittedError
