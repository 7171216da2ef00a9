"""What the generation adapters (v2 generate, OpenAI chat and completions) share.

`GenerationCall` is the generation counterpart of the data plane's InferenceCall: the model
is looked up before the body is read (404, 400 for a model that does not generate, 503), and
the request's outcome lands in the same hotswap_request_success / _failure{reason} /
_duration series as every other request. `sampling_params` validates the knobs every
protocol shares, each error naming its field; `sse` frames one Server-Sent Event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from hotswap.errors import InvalidInput
from hotswap.generate.options import GenerationConfig, SamplingParams
from hotswap.serve.dataplane import DataPlane

if TYPE_CHECKING:  # the engine pulls in torch and transformers: imported when a model generates
    from hotswap.generate.service import GenerationService


#: Longest stop string accepted (characters): the engine searches every stop at every token.
MAX_STOP_CHARS = 256
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_MEDIA_TYPE = "text/event-stream; charset=utf-8"

Invalid = Callable[[str, str], Exception]


class GenerationCall:
    """One generation request: lookup now, success or failure{reason} recorded once by `record`."""

    def __init__(self, plane: DataPlane, name: str, version: str | None = None) -> None:
        self.service: GenerationService = plane.repository.ready_generator(name, version)
        self._started = time.perf_counter()
        self._recorded = False

    @property
    def version(self) -> str:
        return self.service.config.version

    def record(self, exc: BaseException | None) -> None:
        """Count the request's outcome on the serving series (only the first call counts)."""
        if self._recorded or self.service.series is None:
            return
        self._recorded = True
        self.service.series.outcome(exc, self._started)


def sampling_params(fields: dict[str, Any], options: GenerationConfig, invalid: Invalid,
                    max_tokens_keys: tuple[str, ...] = ("max_tokens",)) -> SamplingParams:
    """SamplingParams from request fields (max_tokens, temperature, top_p, top_k, seed, stop, ...)."""
    max_tokens = options.max_tokens_default
    for key in max_tokens_keys:
        if fields.get(key) is not None:
            max_tokens = _int(fields[key], key, 1, options.max_tokens_limit, invalid)
    temperature = _number(fields.get("temperature"), "temperature", 0.0, 2.0, 1.0, invalid)
    top_p = _number(fields.get("top_p"), "top_p", 0.0, 1.0, 1.0, invalid)
    if top_p == 0.0:
        raise invalid("top_p: expected a number in (0, 1]", "top_p")
    top_k = _int(fields.get("top_k") or 0, "top_k", 0, 2**31, invalid)
    seed = fields.get("seed")
    if seed is not None:
        seed = _int(seed, "seed", -(2**63), 2**64 - 1, invalid) % 2**63
    ignore_eos = fields.get("ignore_eos") or False
    if not isinstance(ignore_eos, bool):
        raise invalid("ignore_eos: expected true or false", "ignore_eos")
    return SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                          stop=_stops(fields.get("stop"), options.max_stop, invalid),
                          stop_token_ids=_stop_ids(fields.get("stop_token_ids"), invalid), ignore_eos=ignore_eos)


def _number(value: Any, key: str, low: float, high: float, default: float, invalid: Invalid) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise invalid(f"{key}: expected a number in [{low:g}, {high:g}], got {value!r}", key)
    return float(value)


def _int(value: Any, key: str, low: int, high: int, invalid: Invalid) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid(f"{key}: expected an integer in [{low}, {high}], got {value!r}", key)
    return value


def _stops(value: Any, most: int, invalid: Invalid) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stops):
        raise invalid(f"stop: expected a string or a list of non-empty strings of at most {MAX_STOP_CHARS} "
                      "characters", "stop")
    if len(stops) > most:
        raise invalid(f"stop: at most {most} stop strings (generation.max_stop), got {len(stops)}", "stop")
    return tuple(stops)


def _stop_ids(value: Any, invalid: Invalid) -> tuple[int, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > 64 or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value):
        raise invalid("stop_token_ids: expected a list of at most 64 token ids", "stop_token_ids")
    return tuple(value)


def sse(payload: Any) -> bytes:
    """One Server-Sent Event carrying `payload` as JSON (or a literal such as [DONE])."""
    data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return b"data: " + data + b"\n\n"


def invalid_input(message: str, param: str) -> Exception:
    """The v2 error for a bad field (the OpenAI adapter passes its own, which carries `param`)."""
    return InvalidInput(message)


#: Tokenising prompts longer than this (characters) goes to a worker thread, off the event loop.
_INLINE_CHARS = 32_768


async def prompt_ids(service: GenerationService, text: str | None = None,
                     messages: list[dict] | None = None) -> list[int]:
    """The prompt's token ids (chat template applied for `messages`); long prompts off the loop."""
    size = len(text or "") + sum(len(str(m.get("content", ""))) for m in messages or [])
    if size <= _INLINE_CHARS:
        return service.prompt_ids(text, messages)
    return await asyncio.to_thread(service.prompt_ids, text, messages)
