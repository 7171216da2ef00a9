"""batch.check_rows: a backend's outputs must have one row per input row of the batch, or the
batch fails with a BackendError that names the output and both shapes (never rows handed to the
wrong request, never an IndexError from a scalar)."""

from __future__ import annotations

import numpy as np
import pytest

from hotswap.errors import BackendError
from hotswap.serve.batch import check_rows


def test_one_row_per_input_row_passes_whatever_the_rank():
    check_rows({"y": np.zeros((3, 4)), "label": np.zeros(3), "z": np.zeros((3, 1, 2))}, 3)


@pytest.mark.parametrize(("output", "message"), [
    (np.zeros((2, 4)), "output 'y' has shape [2, 4]; expected 3 rows, one per input row of the batch"),
    (np.zeros(4), "output 'y' has shape [4]; expected 3 rows, one per input row of the batch"),
    (np.float32(1.0), "output 'y' has shape []; expected 3 rows, one per input row of the batch"),
])
def test_any_other_first_dimension_fails_the_batch_naming_the_output(output, message):
    with pytest.raises(BackendError) as info:
        check_rows({"x": np.zeros((3, 1)), "y": np.asarray(output)}, 3)
    assert str(info.value) == message


def test_a_scalar_fails_even_for_a_batch_of_one():
    with pytest.raises(BackendError, match=r"output 'y' has shape \[\]; expected 1 rows"):
        check_rows({"y": np.asarray(np.float32(1.0))}, 1)
