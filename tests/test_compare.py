import math

import numpy as np
import pytest
import torch

from mla_export.compare import compare, tolerance_for


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


def test_nan_and_inf_mismatches_fail_but_matching_nans_pass():
    expected = np.array([np.nan, 1.0, np.inf, 2.0])
    assert compare("x", expected.copy(), expected, 0, 0).passed
    actual = expected.copy()
    actual[1] = np.nan
    result = compare("x", actual, expected, 1.0, 1.0)
    assert not result.passed and result.nonfinite_mismatches == 1
    actual = expected.copy()
    actual[2] = -np.inf
    assert compare("x", actual, expected, 1.0, 1.0).nonfinite_mismatches == 1
    actual = expected.copy()
    actual[0] = 0.0  # the reference's NaN became a number: also a mismatch
    assert not compare("x", actual, expected, 1.0, 1.0).passed


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        compare("x", torch.zeros(2), torch.zeros(3), 0, 0)
    assert math.isfinite(compare("x", torch.zeros(0), torch.zeros(0), 0, 0).cosine)
