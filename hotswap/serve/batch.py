"""A queued request and a batch of them: the row bookkeeping between callers and one backend call."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from hotswap.errors import BackendError
from hotswap.models.signature import Tensors

StackKey = tuple[tuple[str, str, tuple[int, ...]], ...]
"""(name, dtype, non-batch dims) per input: requests with equal keys stack along dim 0."""


@dataclass(eq=False, slots=True)  # identity equality and hashing: requests are set and dict members
class PendingRequest:
    """One request waiting for (or in) a batch; `future` resolves to its own output rows.

    The request is live while `future` is not done: once answered, timed out or cancelled by
    its caller it is never run, and nothing else records that state.
    """

    inputs: Tensors
    rows: int
    key: StackKey
    future: asyncio.Future[Tensors]
    enqueued: float = field(default_factory=time.perf_counter)
    started: float | None = None
    timer: asyncio.TimerHandle | None = None

    @property
    def live(self) -> bool:
        return not self.future.done()


def stack_key(inputs: Tensors) -> StackKey:
    """Requests stack when names, dtypes and non-batch dims agree."""
    return tuple((name, a.dtype.str, a.shape[1:]) for name, a in inputs.items())


@dataclass(eq=False)
class Batch:
    """Requests that run in one backend call, stacked along dim 0 in list order.

    A request cancelled while the batch runs stays in `requests`: its rows are computed, so
    `scatter` still skips over them and every later request gets exactly its own rows.
    """

    requests: list[PendingRequest]

    @property
    def rows(self) -> int:
        return sum(request.rows for request in self.requests)

    def inputs(self) -> Tensors:
        """The requests' tensors concatenated along dim 0 (a lone request's, uncopied)."""
        if len(self.requests) == 1:
            return self.requests[0].inputs
        names = self.requests[0].inputs.keys()
        return {name: np.concatenate([r.inputs[name] for r in self.requests]) for name in names}

    def scatter(self, outputs: Tensors) -> None:
        """Answer each live request with its own rows of `outputs`.

        Raises BackendError (answering nobody) when an output does not have `rows` rows: slicing
        it anyway would hand callers someone else's rows, or none.
        """
        check_rows(outputs, self.rows)
        offset = 0
        for request in self.requests:
            if request.live:
                request.future.set_result({name: out[offset:offset + request.rows] for name, out in outputs.items()})
            offset += request.rows

    def fail(self, exc: BaseException) -> None:
        """Set `exc` on every request not yet answered."""
        for request in self.requests:
            if request.live:
                request.future.set_exception(exc)


def check_rows(outputs: Tensors, rows: int) -> None:
    """Raise BackendError unless every output has `rows` rows, one per input row of the batch."""
    for name, out in outputs.items():
        if out.ndim == 0 or out.shape[0] != rows:
            raise BackendError(f"output '{name}' has shape {list(out.shape)}; "
                               f"expected {rows} rows, one per input row of the batch")


class BatchHung(BackendError):
    """A batch ran past `failover.batch_timeout_ms`: its instance is abandoned (its thread may never return)."""

    reason = "backend_hung"


@dataclass(frozen=True)
class BatchOutcome:
    """What one backend call did, reported to the runner's `on_batch` hook after its requests were answered."""

    inputs: Tensors
    outputs: Tensors | None  # None when it failed
    error: Exception | None
    seconds: float

    @property
    def hung(self) -> bool:
        return isinstance(self.error, BatchHung)

    @property
    def backend_failed(self) -> bool:
        """A failure of the backend itself (bad input is the client's, not the device's)."""
        return isinstance(self.error, BackendError)
