"""ModelSupervisor: which runner serves a model, and what happens when its backend turns faulty.

One supervisor per model sits between the data plane and the runners. Runners stay simple:
each serves one chain entry and reports every batch's outcome to the supervisor (`on_batch`).
The supervisor decides:

- failover (`failover:`): after `after_errors` consecutive failed batches, or one hung batch,
  the active runner is faulty; a runner for the next chain entry that loads (or the warm
  standby) replaces it, exactly as a live swap does, and the requests left on the faulty one
  are sent to the new one. A request whose batch failed is retried (`retry`), so clients see
  no error from a failover;
- return (`retry_primary_after_s`): the preferred entry is probed in the background (load,
  warm-up, parity against the serving backend on recent batches) and traffic moves back
  only if it passes;
- shadow parity (`shadow:`, serve/shadow.py): the active runner's answered batches are offered
  to the shadow.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from hotswap.backends.registry import BackendRegistry
from hotswap.config import ModelConfig
from hotswap.errors import BackendError, ModelNotReady, Rerouted
from hotswap.models.signature import Tensors
from hotswap.serve.batch import BatchOutcome
from hotswap.serve.metrics import Metrics
from hotswap.serve.recovery import SwitchLog, probe_parity
from hotswap.serve.runner import ModelRunner
from hotswap.serve.shadow import ShadowParity
from hotswap.server_config import LimitsConfig

log = logging.getLogger("hotswap.supervisor")

RECENT_BATCHES = 4
"""Recent batch inputs kept for the parity probe of the preferred entry."""


class ModelSupervisor:
    """Owns a model's runners: the active one, the standby, the probe and the shadow."""

    def __init__(self, config: ModelConfig, registry: BackendRegistry, metrics: Metrics,
                 config_dir: Path | None = None, progress: bool = False, drain_timeout_s: float = 30.0) -> None:
        self.config = config
        self.policy = config.failover
        self._registry, self._metrics, self._config_dir, self._progress = registry, metrics, config_dir, progress
        self._drain_timeout_s = drain_timeout_s
        self.active: ModelRunner | None = None
        self.standby: ModelRunner | None = None
        self.shadow: ShadowParity | None = None
        self.preferred_position = 0
        self.log = SwitchLog(config.name, metrics)
        self._errors = 0  # consecutive failed batches of the active runner
        self._first_error_at = 0.0
        self._degraded: ModelRunner | None = None  # faulty, and no later entry loaded
        self._switching: asyncio.Task[None] | None = None
        self._probing: asyncio.Task[None] | None = None  # one probe loop at a time
        self._tasks: set[asyncio.Task] = set()  # standby loads, probes, retiring runners
        self._recent: deque[Tensors] = deque(maxlen=RECENT_BATCHES)
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------
    def _runner(self, first: int, stop: int | None = None) -> ModelRunner:
        return ModelRunner(self.config, self._registry, self._metrics, self._config_dir, self._progress,
                           first_position=first, stop_position=stop, on_batch=self._on_batch)

    async def start(self) -> None:
        """Load the active runner (walking the chain), then the shadow and the standby if configured."""
        runner = self._runner(0)
        await runner.start()
        self.active, self.preferred_position = runner, runner.selected.position
        try:
            if self.config.shadow is not None:
                shadow = ShadowParity(self.config, self._registry, self._metrics, self._config_dir, self._progress)
                await shadow.start(runner.signature)
                self.shadow = shadow
            if self.policy is not None and self.policy.standby:
                await self._load_standby()
        except BaseException:
            await self.close(0)
            raise

    async def _load_after(self, position: int, publish: bool = False) -> ModelRunner | None:
        """A started runner for the first chain entry after `position` that loads, or None."""
        if position + 1 >= len(self.config.backends):
            return None
        runner = self._runner(position + 1)
        try:
            await runner.start(publish=publish)
        except Exception as exc:
            log.error("model %s: no chain entry after #%d loads: %s", self.config.name, position, exc)
            await runner.close(0)
            return None
        return runner

    async def _load_standby(self) -> None:
        active = self.active
        if active is None or self.standby is not None:
            return
        standby = await self._load_after(active.selected.position)
        if standby is None:
            return
        if self._closed or self.active is not active or self.standby is not None:
            await standby.close(0)  # things moved on while it loaded
            return
        try:
            await self._warm(standby)
        except BaseException:  # cancelled by close(): it never became the standby, so free it here
            await standby.close(0)
            raise
        self.standby = standby
        log.info("model %s: standby %s loaded and warm", self.config.name, standby.selected.label)

    async def _warm(self, runner: ModelRunner) -> None:
        """Run the latest batch through `runner` so its first real request pays no warm-up."""
        if self._recent:
            try:
                await runner.infer(self._recent[-1], None)
            except Exception as exc:  # a standby that fails here fails again when promoted: say so now
                log.warning("model %s: warm-up of %s failed: %s", self.config.name, runner.selected.label, exc)

    def _spawn(self, coro, name: str | None = None) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self, drain_timeout_s: float | None = None) -> None:
        """Stop switching and probing, drain the active runner, then close everything else."""
        self._closed = True
        pending = list(self._tasks) + ([self._switching] if self._switching else [])
        for task in pending:
            if not task.get_name().startswith("retire"):  # a retiring runner finishes its own close
                task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        runners = [r for r in (self.active, self.standby) if r is not None]
        self.active = self.standby = None
        await asyncio.gather(*(r.close(drain_timeout_s) for r in runners), return_exceptions=True)
        if self.shadow is not None:
            await self.shadow.close()

    def runners(self) -> list[ModelRunner]:
        return [r for r in (self.active, self.standby) if r is not None]

    # -- requests --------------------------------------------------------------------
    def serving(self) -> ModelRunner:
        if self.active is None:
            raise ModelNotReady(f"model '{self.config.name}' is not ready (closing)")
        return self.active

    async def infer(self, inputs: Tensors, timeout_s: float | None, limits: LimitsConfig | None = None,
                    track: Callable[[ModelRunner], None] | None = None) -> Tensors:
        """Run one request on the active runner; with failover, retry it after a failed batch.

        A request fails over at most once; before that it may retry on the same backend while
        that backend is not (yet) faulty, at most `after_errors` times, so a consistently
        failing backend turns faulty under the request's own retries even without other traffic.
        `track(runner)` is told each runner tried, so the data plane counts the request there.
        """
        moved, same = False, 0
        attempts = 2 + (self.policy.after_errors if self.policy else 0)
        for _ in range(attempts):
            if self._switching is not None:
                # No point queueing on the faulty runner. wait() neither raises the switch's own
                # cancellation (at shutdown) into this request nor cancels the switch if this is cancelled.
                await asyncio.wait([self._switching])
            runner = self.serving()
            if track is not None:
                track(runner)
            try:
                return await runner.infer(inputs, timeout_s, limits)
            except Rerouted:
                continue
            except BackendError:
                if self.policy is None or not self.policy.retry or moved or runner is self._degraded:
                    raise
                if runner is self.active and self._switching is None:
                    same += 1
                    if same >= self.policy.after_errors:
                        raise
                else:
                    moved = True
                self._metrics.failover_retries.labels(self.config.name).inc()
        raise ModelNotReady(f"model '{self.config.name}' switched backends while this request was retried; retry")

    # -- health ----------------------------------------------------------------------
    def _on_batch(self, runner: ModelRunner, outcome: BatchOutcome) -> None:
        """Every runner's batch outcome; only the active runner's move anything."""
        if runner is not self.active:
            return
        if outcome.outputs is not None:
            self._errors, self._degraded = 0, None
            if self.policy is not None and self.policy.retry_primary_after_s is not None:
                self._recent.append(outcome.inputs)
            if self.shadow is not None:
                self.shadow.offer(outcome.inputs, outcome.outputs)
            return
        if self.policy is None or not outcome.backend_failed or runner is self._degraded:
            return
        self._errors += 1
        if self._errors == 1:
            self._first_error_at = time.perf_counter() - (outcome.seconds if outcome.hung else 0.0)
        if (outcome.hung or self._errors >= self.policy.after_errors) and self._switching is None:
            reason = "hung" if outcome.hung else "errors"
            log.error("model %s: backend %s is faulty (%s): %s", self.config.name, runner.selected.label,
                      reason, outcome.error)
            self._switching = asyncio.create_task(self._fail_over(runner, reason, self._first_error_at))

    async def _fail_over(self, faulty: ModelRunner, reason: str, started: float) -> None:
        try:
            new, self.standby = self.standby, None
            if new is None:
                new = await self._load_after(faulty.selected.position)
            if new is not None and self._closed:  # closing meanwhile: nothing to switch to
                await new.close(0)
                return
            if new is None:
                self._degraded = faulty
                self.log.degraded(faulty.selected.label, reason)
                return
            self._promote(new, faulty, reason, started)
        finally:
            self._switching = None
        await self._after_switch()

    async def _after_switch(self) -> None:
        if self.policy is None or self._closed:
            return
        if self.policy.standby:
            self._spawn(self._load_standby())
        if self.policy.retry_primary_after_s is not None and (self._probing is None or self._probing.done()):
            self._probing = self._spawn(self._probe_preferred(self.policy.retry_primary_after_s))

    def _promote(self, new: ModelRunner, old: ModelRunner, reason: str, started: float,
                 faulty: bool = True) -> None:
        """Make `new` serve. Requests left on a faulty `old` move to `new` at once; a healthy `old`
        (the entry left when the preferred one recovered) becomes the standby if one is wanted, or drains."""
        new.publish()
        self.active, self._errors, self._degraded = new, 0, None
        self.log.switched(old.selected.label, new.selected.label, reason, time.perf_counter() - started,
                          faulty=faulty, preferred=new.selected.position == self.preferred_position)
        if faulty:
            old.abandon_waiting(Rerouted("the backend failed over; this request moves to the next one"))
        elif self.policy is not None and self.policy.standby and self.standby is None:
            old.series.retire()  # not serving any more, but kept loaded and warm
            self.standby = old
            return
        self._spawn(old.close(0 if faulty else self._drain_timeout_s), name="retire")

    async def _probe_preferred(self, wait_s: float) -> None:
        """Every `wait_s`, try the preferred entry; move back when it loads and agrees."""
        assert self.policy is not None
        while not self._closed and self.active is not None and \
                self.active.selected.position != self.preferred_position:
            await asyncio.sleep(wait_s)
            current = self.active
            if self._switching is not None or current is None:
                continue
            candidate = self._runner(self.preferred_position, self.preferred_position + 1)
            started = time.perf_counter()
            try:
                await candidate.start(publish=False)
                problem = await probe_parity(candidate, current, list(self._recent), self.policy)
            except asyncio.CancelledError:  # close(): the candidate never served, free it here
                await candidate.close(0)
                raise
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if problem or self.active is not current or self._closed:
                self.log.probe_failed(candidate.config.backends[self.preferred_position].label(), problem)
                await candidate.close(0)
                continue
            if self.standby is not None:  # the entry we leave is the next one: it becomes the standby
                spare, self.standby = self.standby, None
                self._spawn(spare.close(0), name="retire")
            self._promote(candidate, current, "preferred_recovered", started, faulty=False)
            return

    # -- description -----------------------------------------------------------------
    def metadata(self) -> dict:
        meta = self.serving().metadata()
        if self.policy is not None:
            meta["failover"] = self.log.summary() | {
                "preferred_position": self.preferred_position,
                "standby": self.standby.selected.label if self.standby else None,
                "consecutive_errors": self._errors, "config": self.policy.model_dump()}
        if self.shadow is not None:
            meta["shadow"] = self.shadow.summary()
        return meta
