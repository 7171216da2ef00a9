"""Pydantic models of the OpenAI embeddings API objects, for the OpenAPI description only.

Requests are decoded by hand in hotswap.serve.openai_routes (precise messages naming the
field, no validation cost beyond what is needed); these models describe the same objects
for /openapi.json and /docs, and for the schema fuzzer.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EmbeddingRequest(BaseModel):
    """Body of POST /v1/embeddings."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="A served model with a text-embedding processor (GET /v1/models).")
    input: str | list[str] = Field(description="One text or a list of texts; none may be empty. Token-id "
                                   "arrays are refused: the ids would belong to another tokenizer.")
    encoding_format: Literal["float", "base64"] | None = Field(
        None, description="float: JSON numbers; base64: the little-endian float32 bytes, base64-encoded.")
    dimensions: int | None = Field(None, ge=1, description="Keep the first N dimensions and rescale to unit "
                                   "length (for models trained for truncation, e.g. Matryoshka).")
    user: str | None = Field(None, description="Accepted and ignored.")


class Embedding(BaseModel):
    """One input's embedding."""

    object: Literal["embedding"]
    index: int = Field(description="Position of the text in `input`.")
    embedding: list[float] | str = Field(description="Floats, or a base64 string with encoding_format=base64.")


class Usage(BaseModel):
    """Tokens the model really consumed (after truncation at its max length, special tokens included)."""

    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    """Answer of POST /v1/embeddings."""

    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    """One model as GET /v1/models lists it."""

    id: str
    object: Literal["model"]
    created: int = Field(description="Unix time at which the server started.")
    owned_by: str


class ModelList(BaseModel):
    """Answer of GET /v1/models: every served model with a text-embedding processor, and every loaded
    generating model."""

    object: Literal["list"]
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    """What went wrong, in OpenAI's terms."""

    message: str = Field(description="What went wrong, naming the field and the expected value.")
    type: str = Field(description="invalid_request_error, authentication_error, permission_error, server_error.")
    param: str | None = Field(description="The request field at fault, if one is.")
    code: str | None = Field(description="hotswap's reason, e.g. model_not_found, invalid_input, queue_full.")


class OpenAIErrorResponse(BaseModel):
    """Every 4xx / 5xx answer under /v1/ (OpenAI's error shape)."""

    error: ErrorDetail
