"""Pydantic models of the v2 protocol objects, for the OpenAPI description only.

Requests are decoded by hand in hotswap.serve.codec (it is the hot path and handles the
binary extension); these models describe the same objects for /openapi.json and /docs,
so clients and fuzzers (schemathesis) can be driven from the description.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

Datatype = Literal["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                   "FP16", "FP32", "FP64", "BF16", "BYTES"]
Parameters = dict[str, Any]


class ErrorResponse(BaseModel):
    """Every 4xx / 5xx answer."""

    error: str = Field(description="What went wrong, naming the field and the expected value.")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: Datatype
    shape: list[int]


class ModelMetadata(BaseModel):
    """v2 model metadata; hotswap adds what really runs the model."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    backend: dict[str, Any] = Field(description="Backend name, chain entry and position, device, providers.")
    skipped: list[dict[str, Any]] = Field(description="Chain entries passed over, with their reasons.")
    batching: dict[str, Any]


class RequestInput(BaseModel):
    name: str
    shape: list[int] = Field(description="Non-negative dimensions; dim 0 is the batch.")
    datatype: Datatype
    parameters: Parameters | None = None
    data: list[Any] | None = Field(None, description="Row-major data, flat or nested; omitted when the "
                                   "binary_data_size parameter points into the binary part of the body.")


class RequestOutput(BaseModel):
    name: str
    parameters: Parameters | None = None


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: Parameters | None = Field(None, description="`timeout`: queue deadline in microseconds; "
                                          "`binary_data_output`: answer every output in binary.")
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: Parameters | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class RepositoryModel(BaseModel):
    name: str
    version: str
    state: Literal["READY", "LOADING", "UNAVAILABLE"]
    reason: str


class LoadRequest(BaseModel):
    parameters: Parameters | None = Field(None, description="`config`: a JSON object (or its JSON text) "
                                          "replacing `backends`, `batching` or `instances`.")


def _infer_operation(versioned: bool) -> dict:
    params = [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}]
    if versioned:
        params.append({"name": "version", "in": "path", "required": True, "schema": {"type": "string"}})
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    return {"post": {
        "summary": "Infer", "operationId": "infer_versioned" if versioned else "infer", "parameters": params,
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/InferenceRequest"}}}},
        "responses": {"200": {"description": "Outputs", "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/InferenceResponse"}}}},
            **{code: {"description": text, **error} for code, text in (
                ("400", "Invalid input"), ("401", "No or unknown token"), ("403", "Token scope too small"),
                ("404", "Unknown model"), ("413", "Over a limit"), ("503", "Not ready or queue full"),
                ("504", "Queue deadline passed"))}},
    }}


def _lift_defs(node: object, components: dict) -> None:
    """Move the `$defs` of request bodies given as whole pydantic schemas (openapi_extra) into the
    components, pointing their references there: in the OpenAPI document `#/$defs/...` would
    resolve against the document's root, where no `$defs` is."""
    if isinstance(node, dict):
        components.update(node.pop("$defs", {}))
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            node["$ref"] = "#/components/schemas/" + ref.removeprefix("#/$defs/")
        for value in node.values():
            _lift_defs(value, components)
    elif isinstance(node, list):
        for value in node:
            _lift_defs(value, components)


def v2_openapi(app: FastAPI) -> dict:
    """The app's OpenAPI description, with the infer routes (plain Starlette routes) added."""
    if app.openapi_schema is None:
        schema = get_openapi(title="hotswap", version=app.version, routes=app.routes,
                             description="KServe / Open Inference Protocol v2 over pluggable hardware backends.")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (InferenceRequest, InferenceResponse, ErrorResponse):
            definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(definition.pop("$defs", {}))
            components[model.__name__] = definition
        schema["paths"]["/v2/models/{model}/infer"] = _infer_operation(False)
        schema["paths"]["/v2/models/{model}/versions/{version}/infer"] = _infer_operation(True)
        _lift_defs(schema["paths"], components)
        app.openapi_schema = schema
    return app.openapi_schema
