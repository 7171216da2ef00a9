"""Per-request checks the runner makes before queueing: rows, and `server.limits`."""

from __future__ import annotations

from hotswap.errors import InvalidInput, PayloadTooLarge
from hotswap.models.signature import Tensors
from hotswap.server_config import LimitsConfig


def count_rows(inputs: Tensors) -> int:
    """Rows (dim 0) of a request; every input must have at least one."""
    first = next(iter(inputs.values()), None)
    if first is None or first.ndim == 0:
        raise InvalidInput("inputs need a batch dimension (dim 0)")
    if first.shape[0] == 0:
        raise InvalidInput(f"input '{next(iter(inputs))}': shape {list(first.shape)} has 0 rows; expected at least 1")
    return int(first.shape[0])


def check_limits(inputs: Tensors, rows: int, limits: LimitsConfig) -> None:
    """413 for a request over `server.limits`: rows, or one BYTES element's size."""
    if rows > limits.max_rows:
        raise PayloadTooLarge(f"request has {rows} rows; server.limits.max_rows is {limits.max_rows}")
    for name, array in inputs.items():
        if array.dtype == object:
            longest = max((len(value) for value in array.flat), default=0)
            if longest > limits.max_bytes_element:
                raise PayloadTooLarge(f"input '{name}': an element of {longest} bytes exceeds "
                                      f"server.limits.max_bytes_element={limits.max_bytes_element}")
