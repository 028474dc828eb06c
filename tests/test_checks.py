"""recgym._checks: the shared argument checks (every env, the task, items, tree and metrics use them)."""

import numpy as np
import pytest

from recgym._checks import check_bool, check_choice, check_int, check_options, check_real, int_array


@pytest.mark.parametrize("value", [3, np.int8(3), np.uint64(3), np.array(3)])
def test_ints_numpy_ints_and_0d_int_arrays_are_ints(value):
    assert check_int(value, "n") == 3 and type(check_int(value, "n")) is int


@pytest.mark.parametrize("value", [3.0, np.float32(3), True, np.True_, "3", None, [3], np.array([3])])
def test_everything_else_is_not_an_int(value):
    with pytest.raises(TypeError, match="n must be an int"):
        check_int(value, "n")


def test_int_bounds_name_the_argument():
    assert check_int(5, "row", minimum=0, maximum=5) == 5
    with pytest.raises(ValueError, match=r"row must be in 0\.\.5, got 6"):
        check_int(6, "row", minimum=0, maximum=5)
    with pytest.raises(ValueError, match="k must be <= 2, got 3"):
        check_int(3, "k", maximum=2)


@pytest.mark.parametrize(("value", "error"), [
    (float("nan"), ValueError), (float("-inf"), ValueError), (np.float64("inf"), ValueError),
    (False, TypeError), ("0.5", TypeError), (None, TypeError), (1 + 0j, TypeError),
])
def test_reals_are_finite_numbers(value, error):
    with pytest.raises(error, match="r must be a"):
        check_real(value, "r")


def test_reals_accept_ints_numpy_scalars_and_a_minimum():
    assert check_real(np.float32(0.5), "r") == 0.5 and check_real(2, "r") == 2.0
    with pytest.raises(ValueError, match="r must be >= 0.0, got -0.5"):
        check_real(-0.5, "r", minimum=0.0)


def test_bools_and_choices():
    assert check_bool(False, "strict") is False
    for value in (0, 1, "yes", None):
        with pytest.raises(TypeError, match="strict must be True or False"):
            check_bool(value, "strict")
    assert check_choice("sid", "representation", {"title", "sid"}) == "sid"
    with pytest.raises(ValueError, match="representation must be one of"):
        check_choice(["sid"], "representation", {"title", "sid"})  # unhashable: not an error of its own


def test_int_arrays():
    assert int_array([], "h").dtype == np.int64 and int_array((), "h").shape == (0,)
    assert int_array(np.array([1, 2], np.uint16), "h").tolist() == [1, 2]
    assert int_array([[1, 2], [3, 4]], "m", ndim=2, minimum=1, maximum=4).shape == (2, 2)
    with pytest.raises(TypeError, match="h must be a 1-D sequence of ints"):
        int_array([[1, 2], [3]], "h")  # ragged
    with pytest.raises(TypeError, match="h must hold ints, got dtype object"):
        int_array([1, None], "h")
    with pytest.raises(TypeError, match="h must hold ints, not bools"):
        int_array((1, np.True_), "h")
    with pytest.raises(TypeError, match="h must hold ints, got dtype bool"):
        int_array(np.array([True]), "h")
    with pytest.raises(TypeError, match="h must be a sequence of ints, got the string b'12'"):
        int_array(b"12", "h")
    with pytest.raises(ValueError, match=r"m must hold values >= 0, got -1 at index \(1, 0\)"):
        int_array([[1, 2], [-1, 4]], "m", ndim=2, minimum=0)


def test_options_refuse_or_warn_about_unknown_keys():
    known = ("row", "history", "target")
    assert check_options(None, known, "E") == {}
    options = {"row": 1}
    assert check_options(options, known, "E") == options and check_options(options, known, "E") is not options
    with pytest.raises(ValueError, match=r"unknown reset options \[3, 'x'\] for E; known options"):
        check_options({3: 1, "x": 2}, known, "E")
    with pytest.raises(TypeError, match="E options must be a dict or None, got"):
        check_options([("row", 1)], known, "E")
    with pytest.warns(UserWarning, match=r"unknown reset options \['rows'\] for E \(did you mean 'row'\?\)"):
        assert check_options({"rows": 2, "row": 1}, known, "E", unknown="warn") == {"row": 1}
