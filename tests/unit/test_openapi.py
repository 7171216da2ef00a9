"""The OpenAPI description (/openapi.json) as its readers use it: every reference resolves, the
infer routes hotswap answers as plain ASGI are described, and real v2 requests and answers
validate against their schemas while malformed ones do not. schemathesis (tests/api/test_fuzz.py)
and generated clients are driven from this document, so a wrong schema is a wrong client."""

from __future__ import annotations

import jsonschema
import pytest

import hotswap
from hotswap.backends.registry import BackendRegistry
from hotswap.config import HotswapConfig
from hotswap.serve.app import create_app

ERROR_CODES = {"400": "Invalid input", "401": "No or unknown token", "403": "Token scope too small",
               "404": "Unknown model", "413": "Over a limit", "503": "Not ready or queue full",
               "504": "Queue deadline passed"}
REQUEST = {"id": "r1", "parameters": {"timeout": 5000},
           "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]},
                      {"name": "b", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 7}}],
           "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}
ANSWER = {"model_name": "tiny", "model_version": "1", "id": "r1",
          "outputs": [{"name": "y", "shape": [2, 4], "datatype": "FP32", "data": [0.5] * 8}]}


@pytest.fixture
def document() -> dict:
    # Built for each test (a few ms): `make mutate` maps a function to the tests that ran it, and a
    # module-wide document would be built, and mapped, in the first test only.
    return create_app(HotswapConfig(), BackendRegistry()).openapi()


def refs(node: object) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def validator(document: dict, name: str) -> jsonschema.Draft202012Validator:
    """A validator for one component, resolving its references inside the whole document."""
    return jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}", **document})


def test_every_reference_in_the_document_resolves_to_a_component(document: dict) -> None:
    # A second app too: the request bodies given as pydantic schemas are shared module constants.
    for doc in (document, create_app(HotswapConfig(), BackendRegistry()).openapi()):
        components = doc["components"]["schemas"]
        found = refs(doc)
        assert {"#/components/schemas/InferenceRequest", "#/components/schemas/RequestInput",
                "#/components/schemas/ChatMessage"} <= set(found)
        for ref in found:
            assert ref.startswith("#/components/schemas/"), ref
            assert ref.removeprefix("#/components/schemas/") in components, ref


def test_a_chat_request_validates_through_its_lifted_message_schema_only(document: dict) -> None:
    body = document["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]
    check = jsonschema.Draft202012Validator({**body["schema"], "components": document["components"]})
    check.validate({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    with pytest.raises(jsonschema.ValidationError):
        check.validate({"model": "m", "messages": [{"role": 3, "content": "hi"}]})


def test_both_infer_routes_are_described_with_path_parameters_body_and_answers(document: dict) -> None:
    plain = document["paths"]["/v2/models/{model}/infer"]["post"]
    versioned = document["paths"]["/v2/models/{model}/versions/{version}/infer"]["post"]
    assert (plain["operationId"], versioned["operationId"]) == ("infer", "infer_versioned")
    assert [p["name"] for p in plain["parameters"]] == ["model"]
    assert [p["name"] for p in versioned["parameters"]] == ["model", "version"]
    for op in (plain, versioned):
        assert op["summary"] == "Infer"
        assert all(p["in"] == "path" and p["required"] is True and p["schema"] == {"type": "string"}
                   for p in op["parameters"])
        body = op["requestBody"]
        assert body["required"] is True
        assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/InferenceRequest"}
        ok = op["responses"]["200"]
        assert ok["description"] == "Outputs"
        assert ok["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/InferenceResponse"}
        errors = {code: answer for code, answer in op["responses"].items() if code != "200"}
        assert {code: answer["description"] for code, answer in errors.items()} == ERROR_CODES
        for answer in errors.values():
            assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}


def test_the_document_is_built_once_per_app(document: dict) -> None:
    app = create_app(HotswapConfig(), BackendRegistry())
    first = app.openapi()
    assert app.openapi() is first
    assert (first["info"]["title"], first["info"]["version"]) == ("hotswap", hotswap.__version__)
    assert first["info"]["description"] == "KServe / Open Inference Protocol v2 over pluggable hardware backends."


def test_a_real_v2_request_answer_and_error_validate(document: dict) -> None:
    validator(document, "InferenceRequest").validate(REQUEST)
    validator(document, "InferenceRequest").validate({"inputs": []})
    validator(document, "InferenceResponse").validate(ANSWER)
    validator(document, "ErrorResponse").validate({"error": "inputs.0.shape: expected ..."})


@pytest.mark.parametrize(("component", "bad"), [
    ("InferenceRequest", {"id": "r"}),  # inputs are required
    ("InferenceRequest", {"inputs": [{"name": "x", "shape": [1], "datatype": "FP33", "data": [1]}]}),
    ("InferenceRequest", {"inputs": [{"name": "x", "shape": ["1"], "datatype": "FP32", "data": [1]}]}),
    ("InferenceRequest", {"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}),
    ("InferenceRequest", {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}], "outputs": [{}]}),
    ("InferenceRequest", {"inputs": [], "parameters": [1]}),
    ("InferenceResponse", {"outputs": []}),  # model_name is required
    ("InferenceResponse", {"model_name": "m", "outputs": [{"name": "y", "shape": [1], "data": [1]}]}),
    ("ErrorResponse", {"message": "no"}),
])
def test_malformed_v2_objects_do_not_validate(document: dict, component: str, bad: dict) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validator(document, component).validate(bad)


def test_every_v2_datatype_is_allowed_and_the_fields_are_documented(document: dict) -> None:
    components = document["components"]["schemas"]
    datatypes = {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                 "FP16", "FP32", "FP64", "BF16", "BYTES"}
    for name in ("RequestInput", "ResponseOutput"):
        assert set(components[name]["properties"]["datatype"]["enum"]) == datatypes
    assert "microseconds" in components["InferenceRequest"]["properties"]["parameters"]["description"]
    assert "binary_data_size" in components["RequestInput"]["properties"]["data"]["description"]
    assert "naming the field" in components["ErrorResponse"]["properties"]["error"]["description"]


GENERATION_ERRORS = {"400", "401", "403", "404", "408", "413", "503"}


def _operation(document: dict, path: str) -> dict:
    return document["paths"][path]["post"]


def test_the_generate_routes_document_their_body_answers_and_stream(document: dict) -> None:
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        whole, stream = _operation(document, f"{prefix}/generate"), _operation(document, f"{prefix}/generate_stream")
        for op in (whole, stream):
            body = op["requestBody"]
            assert body["required"] is True
            schema = body["content"]["application/json"]["schema"]
            assert schema["title"] == "GenerateRequest" and "text_input" in schema["required"]
            assert schema["additionalProperties"] is False
            assert set(op["responses"]) == {"200"} | GENERATION_ERRORS
            for code in GENERATION_ERRORS:
                assert op["responses"][code]["content"]["application/json"]["schema"] == \
                    {"$ref": "#/components/schemas/ErrorResponse"}
            assert op["responses"]["200"]["content"]["application/json"]["schema"] == \
                {"$ref": "#/components/schemas/GenerateResponse"}
        assert set(whole["responses"]["200"]["content"]) == {"application/json"}
        assert set(stream["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
        assert stream["responses"]["200"]["content"]["text/event-stream"] == {"schema": {"type": "string"}}


def test_the_openai_generation_routes_document_their_bodies_and_openai_errors(document: dict) -> None:
    for path, title in (("/v1/chat/completions", "ChatCompletionRequest"), ("/v1/completions", "CompletionRequest")):
        op = _operation(document, path)
        assert op["requestBody"]["required"] is True
        assert op["requestBody"]["content"]["application/json"]["schema"]["title"] == title
        ok = op["responses"]["200"]["content"]
        assert ok["application/json"]["schema"] == {"$ref": "#/components/schemas/Completion"}
        assert ok["text/event-stream"] == {"schema": {"type": "string"}}
        for code in GENERATION_ERRORS:
            assert op["responses"][code]["content"]["application/json"]["schema"] == \
                {"$ref": "#/components/schemas/OpenAIErrorResponse"}
    chat = _operation(document, "/v1/chat/completions")["requestBody"]["content"]["application/json"]["schema"]
    assert chat["properties"]["messages"]["items"] == {"$ref": "#/components/schemas/ChatMessage"}


def test_defs_are_lifted_into_the_components_from_nested_lists_too():
    from hotswap.serve.schemas import _lift_defs

    body = {"$defs": {"A": {"type": "string"}},
            "properties": {"x": {"anyOf": [{"$ref": "#/$defs/A"}, {"type": "null"}]},
                           "y": {"items": [{"$ref": "#/$defs/A"}]}}}
    components: dict = {}
    _lift_defs(body, components)
    assert components == {"A": {"type": "string"}} and "$defs" not in body
    assert body["properties"]["x"]["anyOf"][0] == {"$ref": "#/components/schemas/A"}
    assert body["properties"]["y"]["items"][0] == {"$ref": "#/components/schemas/A"}


#: Every v2 route but infer and generate: its operation (the handler's name), the answer's schema and
#: whether it takes a body. The response models are what generated clients decode with.
V2_ROUTES = {
    ("/v2", "server_metadata"): {"$ref": "#/components/schemas/ServerMetadata"},
    ("/v2/health/live", "live"): {"$ref": "#/components/schemas/Live"},
    ("/v2/health/ready", "ready"): {"$ref": "#/components/schemas/Ready"},
    ("/v2/models/{model}", "model_metadata"): {"$ref": "#/components/schemas/ModelMetadata"},
    ("/v2/models/{model}/ready", "model_ready"): {"$ref": "#/components/schemas/ModelReady"},
    ("/v2/models/{model}/versions/{version}", "model_metadata"): {"$ref": "#/components/schemas/ModelMetadata"},
    ("/v2/models/{model}/versions/{version}/ready", "model_ready"): {"$ref": "#/components/schemas/ModelReady"},
    ("/v2/repository/index", "repository_index"): {"type": "array",
                                                   "items": {"$ref": "#/components/schemas/RepositoryModel"}},
    ("/v2/repository/models/{model}/load", "load"): {"type": "object", "additionalProperties": True},
    ("/v2/repository/models/{model}/unload", "unload"): {"type": "object", "additionalProperties": True},
}
V2_ERRORS = {"400": "Bad Request", "401": "Unauthorized", "403": "Forbidden", "404": "Not Found",
             "503": "Service Unavailable"}


def _v2_operations(document: dict) -> dict[str, tuple[str, dict]]:
    skipped = ("/infer", "/generate", "/generate_stream")
    return {path: next(iter(ops.items())) for path, ops in document["paths"].items()
            if path.startswith("/v2") and not path.endswith(skipped)}


def test_each_v2_route_has_its_handler_method_and_answer_schema(document: dict) -> None:
    operations = _v2_operations(document)
    assert set(operations) == {path for path, _ in V2_ROUTES}
    for (path, handler), schema in V2_ROUTES.items():
        method, op = operations[path]
        assert len(document["paths"][path]) == 1, path
        write = path.startswith("/v2/repository")
        assert method == ("post" if write else "get"), path
        assert op["operationId"].startswith(f"{handler}_"), (path, op["operationId"])
        answer = op["responses"]["200"]["content"]["application/json"]["schema"]
        assert {k: v for k, v in answer.items() if k != "title"} == schema, path
        assert [p["name"] for p in op.get("parameters", []) if p["in"] == "path"] == \
            [part[1:-1] for part in path.split("/") if part.startswith("{")], path
        assert ("requestBody" in op) == path.endswith("/load"), path


def test_each_v2_route_documents_its_errors_and_the_load_body(document: dict) -> None:
    for path, (_, op) in _v2_operations(document).items():
        control = path.startswith("/v2/repository/models/")
        expected = {**V2_ERRORS, **({"413": "Request Entity Too Large", "415": "Unsupported Media Type"}
                                    if control else {})}
        errors = {code: answer for code, answer in op["responses"].items() if code not in ("200", "422")}
        assert {code: answer["description"] for code, answer in errors.items()} == expected, path
        for answer in errors.values():
            assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    load = document["paths"]["/v2/repository/models/{model}/load"]["post"]["requestBody"]
    assert load["required"] is False
    schema = load["content"]["application/json"]["schema"]
    assert schema["title"] == "LoadRequest" and "parameters" in schema["properties"]


def test_metrics_are_documented_as_prometheus_text(document: dict) -> None:
    op = document["paths"]["/metrics"]["get"]
    assert list(document["paths"]["/metrics"]) == ["get"]
    assert op["operationId"].startswith("metrics_")
    assert op["responses"]["200"]["content"] == {"text/plain; version=1.0.0; charset=utf-8": {}}
    assert {code: answer["description"] for code, answer in op["responses"].items() if code != "200"} == V2_ERRORS
