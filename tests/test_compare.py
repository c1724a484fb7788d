import math

import numpy as np
import pytest
import torch

from mla_export.run.compare import compare, tolerance_for


def test_reports_worst_element_and_passes_within_tolerance():
    expected = torch.zeros(2, 3, 4, dtype=torch.float64)
    actual = expected.clone()
    actual[1, 2, 3] = 1e-5
    result = compare("x", actual, expected, atol=2e-5, rtol=0)
    assert result.passed and result.max_abs_index == (1, 2, 3) and result.max_abs_err == pytest.approx(1e-5)
    assert not compare("x", actual, expected, atol=1e-6, rtol=0).passed


def test_relative_error_and_cosine():
    expected = torch.tensor([1.0, -2.0, 4.0], dtype=torch.float64)
    actual = expected * 1.01
    result = compare("x", actual, expected, *tolerance_for("float32"))
    assert result.max_rel_err == pytest.approx(0.01) and result.cosine == pytest.approx(1.0)
    assert not result.passed  # 1% is far outside float32 tolerance
    flipped = compare("x", -expected, expected, 10.0, 10.0)
    assert flipped.cosine == pytest.approx(-1.0)


def test_nan_and_inf_fail_unless_the_reference_is_expected_to_be_non_finite_there():
    expected = np.array([np.nan, 1.0, np.inf, 2.0])
    meant = np.array([True, False, True, False])  # where the reference is non-finite by design
    assert compare("x", expected.copy(), expected, 0, 0, expected_nonfinite=meant).passed
    same = compare("x", expected.copy(), expected, 0, 0)  # NaN vs NaN is no agreement unless declared
    assert not same.passed and same.nonfinite_mismatches == 2
    actual = expected.copy()
    actual[1] = np.nan
    result = compare("x", actual, expected, 1.0, 1.0, expected_nonfinite=meant)
    assert not result.passed and result.nonfinite_mismatches == 1
    actual = expected.copy()
    actual[2] = -np.inf
    assert compare("x", actual, expected, 1.0, 1.0, expected_nonfinite=meant).nonfinite_mismatches == 1
    actual = expected.copy()
    actual[0] = 0.0  # the reference's NaN became a number: also a mismatch
    assert not compare("x", actual, expected, 1.0, 1.0, expected_nonfinite=meant).passed


def test_an_all_nan_output_fails_with_cosine_zero():
    """NaN on both sides where the reference is finite... and the reference finite, the output all NaN: both fail,
    and the cosine over nothing comparable is no 1.0."""
    expected = torch.randn(2, 3, dtype=torch.float64)
    result = compare("x", torch.full((2, 3), float("nan")), expected, 1.0, 1.0)
    assert not result.passed and result.nonfinite_mismatches == 6 and result.cosine == 0.0
    both = compare("x", torch.full((2, 3), float("nan")), torch.full((2, 3), float("nan")), 1.0, 1.0)
    assert not both.passed and both.cosine == 0.0
    inf = expected.clone()
    inf[1, 1] = float("inf")
    assert not compare("x", inf, expected, 1e9, 1e9).passed
    rows = torch.tensor([[False], [True]])  # broadcast: row 1 may hold NaN on both sides
    half = expected.clone()
    half[1] = float("nan")
    assert compare("x", half, half, 0, 0, expected_nonfinite=rows).passed
    assert not compare("x", half, half, 0, 0, expected_nonfinite=~rows).passed


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        compare("x", torch.zeros(2), torch.zeros(3), 0, 0)
    assert math.isfinite(compare("x", torch.zeros(0), torch.zeros(0), 0, 0).cosine)
