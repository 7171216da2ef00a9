"""The parity measure shared by shadow parity and the failover probe: max abs error and per-row cosine."""

from __future__ import annotations

import numpy as np

from hotswap.serve.shadow import parity, within


def test_identical_outputs_have_no_error_and_cosine_one():
    y = np.arange(12, dtype=np.float32).reshape(3, 4) + 1
    max_abs, cosine = parity({"y": y}, {"y": y.copy()})
    assert max_abs == 0.0 and np.allclose(cosine, 1.0) and cosine.shape == (3,)
    assert within(max_abs, cosine, 0.0, 0.999999)


def test_error_is_the_largest_difference_over_every_output_and_rows_span_outputs():
    y = np.ones((2, 3), np.float32)
    z = np.ones((2, 1), np.float32)
    got_z = z.copy()
    got_z[1, 0] = -1.0  # row 1: (1, 1, 1, -1) against (1, 1, 1, 1)
    max_abs, cosine = parity({"y": y, "z": z}, {"y": y + 0.25, "z": got_z})
    assert max_abs == 2.0
    assert cosine[0] > 0.99 and np.isclose(cosine[1], (1.25 * 3 - 1) / (2 * np.sqrt(3 * 1.25**2 + 1)))
    assert not within(max_abs, cosine, 1.0, 0.0)


def test_nan_or_a_different_shape_is_the_worst_result_not_a_silent_pass():
    y = np.ones((2, 4), np.float32)
    max_abs, cosine = parity({"y": y}, {"y": np.full_like(y, np.nan)})
    assert max_abs == float("inf") and (cosine == -1).all()
    assert not within(max_abs, cosine, 1e9, -1.0)
    max_abs, cosine = parity({"y": y}, {"y": np.ones((2, 3), np.float32)})
    assert max_abs == float("inf") and (cosine == -1).all()


def test_zero_rows_agree_only_with_zero_rows():
    ref = np.array([[0, 0], [0, 0]], np.float32)
    _, cosine = parity({"y": ref}, {"y": np.array([[0, 0], [1, 0]], np.float32)})
    assert cosine.tolist() == [1.0, 0.0]


def test_non_numeric_outputs_are_not_compared():
    text = np.array([b"a", b"b"], dtype=object)
    max_abs, cosine = parity({"echo": text}, {"echo": np.array([b"x", b"y"], dtype=object)})
    assert max_abs == 0.0 and cosine.size == 0
