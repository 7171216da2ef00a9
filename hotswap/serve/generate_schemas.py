"""The generation endpoints' objects, for the OpenAPI description only (bodies are decoded by hand).

The OIP generate extension (Triton's) and OpenAI's chat and text completions; each route
documents JSON and, for streams, text/event-stream answers, and every error status it gives.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Sampling(BaseModel):
    """Sampling fields shared by every generation endpoint."""

    max_tokens: int | None = Field(None, ge=1, description="Tokens to generate at most (generation.max_tokens_limit).")
    temperature: float | None = Field(None, ge=0, le=2, description="0: greedy; default 1.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: int | None = Field(None, ge=0, description="Sample among the k likeliest tokens (0: all).")
    seed: int | None = Field(None, description="Seed of this request's own generator: same seed, same tokens.")
    stop: str | list[str] | None = Field(None, description="Stop strings (generation.max_stop at most); not "
                                         "included in the text.")
    stop_token_ids: list[int] | None = Field(None, description="Token ids that end the sequence.")
    ignore_eos: bool | None = Field(None, description="Keep generating after the end-of-sequence token.")


class GenerateRequest(Sampling):
    """POST /v2/models/{m}/generate[_stream]; sampling fields at the top level or in `parameters`."""

    model_config = ConfigDict(extra="forbid")

    text_input: str = Field(min_length=1, description="The prompt, as is (no chat template).")
    parameters: dict[str, Any] | None = Field(None, description="Sampling fields (as at the top level).")
    id: str | None = Field(None, description="Echoed in the answer.")


class GenerateResponse(BaseModel):
    """The whole text, or (generate_stream) one event's new text."""

    model_name: str
    model_version: str
    text_output: str
    finish_reason: Literal["stop", "length", "cancelled", "error"] | None = None
    id: str | None = None


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict[str, Any]]


class ChatCompletionRequest(Sampling):
    """POST /v1/chat/completions."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="Same as max_tokens.")
    stream: bool | None = None
    stream_options: dict[str, bool] | None = Field(None, description="{\"include_usage\": true} adds a usage "
                                                   "chunk before [DONE].")
    n: Literal[1] | None = None


class CompletionRequest(Sampling):
    """POST /v1/completions."""

    model: str
    prompt: str | list[str]
    stream: bool | None = None
    stream_options: dict[str, bool] | None = None
    n: Literal[1] | None = None


class Completion(BaseModel):
    """A chat.completion or text_completion object (or, streamed, its chunks as SSE)."""

    id: str
    object: str
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, int] | None = None


def request_body(model: type[BaseModel]) -> dict:
    """A route's `openapi_extra`: its JSON body is `model` (bodies are read by hand, not by FastAPI)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def answers(ok: type[BaseModel], error: type[BaseModel], stream: bool) -> dict[int | str, dict]:
    """A route's `responses`: `ok` as JSON (and, for `stream`, Server-Sent Events), `error` for each refusal."""
    content: dict[str, dict] = {"application/json": {}}
    if stream:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    answers: dict[int | str, dict] = {200: {"model": ok, "content": content}}
    answers.update({code: {"model": error} for code in (400, 401, 403, 404, 408, 413, 503)})
    return answers

