"""POST /v1/embeddings' own decoding and encoding (serve/openai_routes.py), in-process: every
field's refusal whole with the `param` OpenAI clients read, and the answer's exact JSON, base64
and `dimensions`. Over HTTP with MiniLM: tests/api/test_openai_embeddings.py."""

from __future__ import annotations

import base64

import numpy as np
import orjson
import pytest

from hotswap.serve.openai_routes import (
    EmbeddingQuery,
    InvalidRequest,
    decode_embedding_request,
    encode_embeddings,
    is_openai_path,
    openai_error_body,
    truncate,
)

ROWS = np.array([[3.0, 4.0, 12.0], [0.0, 0.0, 0.0]], dtype=np.float32)


def decode(payload: object) -> EmbeddingQuery:
    return decode_embedding_request(orjson.dumps(payload))


def test_a_minimal_and_a_full_request():
    assert decode({"model": "m", "input": "a"}) == EmbeddingQuery("m", ["a"], False, None)
    assert decode({"model": "m", "input": ["a", "b c"], "encoding_format": "base64", "dimensions": 1,
                   "user": "u"}) == EmbeddingQuery("m", ["a", "b c"], True, 1)
    assert decode({"model": "m", "input": "a", "encoding_format": "float", "user": None}).base64 is False
    assert decode({"model": "m", "input": "a", "encoding_format": None, "dimensions": None}).dimensions is None


@pytest.mark.parametrize(("payload", "param", "message"), [
    ({"model": "m", "input": "a", "voice": 1, "extra": 2}, "extra",
     "unrecognized request argument: extra, voice; expected dimensions, encoding_format, input, model, user"),
    ({"input": "a"}, "model", "model: expected the name of a served model (GET /v1/models)"),
    ({"model": "", "input": "a"}, "model", "model: expected the name of a served model (GET /v1/models)"),
    ({"model": 3, "input": "a"}, "model", "model: expected the name of a served model (GET /v1/models)"),
    ({"model": "m", "input": "a", "encoding_format": "int8"}, "encoding_format",
     "encoding_format: expected 'float' or 'base64', got 'int8'"),
    ({"model": "m", "input": "a", "dimensions": 0}, "dimensions", "dimensions: expected a positive integer, got 0"),
    ({"model": "m", "input": "a", "dimensions": True}, "dimensions",
     "dimensions: expected a positive integer, got True"),
    ({"model": "m", "input": "a", "dimensions": 2.0}, "dimensions",
     "dimensions: expected a positive integer, got 2.0"),
    ({"model": "m", "input": "a", "user": 7}, "user", "user: expected a string"),
    ({"model": "m", "input": 3}, "input", "input: expected a string or a list of strings, got int"),
    ({"model": "m", "input": {"t": "a"}}, "input", "input: expected a string or a list of strings, got dict"),
    ({"model": "m"}, "input", "input: expected a string or a list of strings, got NoneType"),
    ({"model": "m", "input": []}, "input", "input: expected at least one text, got an empty list"),
    ({"model": "m", "input": ""}, "input", "input[0]: empty text; every input must hold at least one character"),
    ({"model": "m", "input": ["ok", ""]}, "input",
     "input[1]: empty text; every input must hold at least one character"),
    ({"model": "m", "input": [101, 2023]}, "input", "input: token-id arrays are not supported (they would be "
     "another tokenizer's ids); send the text itself"),
    ({"model": "m", "input": ["ok", [101, 2023]]}, "input", "input: token-id arrays are not supported (they "
     "would be another tokenizer's ids); send the text itself"),
    ({"model": "m", "input": ["ok", True]}, "input", "input[1]: expected a string, got bool"),
    ({"model": "m", "input": [None]}, "input", "input[0]: expected a string, got NoneType"),
    ({"model": "m", "input": [1.5]}, "input", "input[0]: expected a string, got float"),
    (["m"], None, "request body: expected a JSON object, got list"),
])
def test_a_bad_field_is_named_with_the_expected_value(payload, param, message):
    with pytest.raises(InvalidRequest) as info:
        decode(payload)
    assert (str(info.value), info.value.param, info.value.status) == (message, param, 400)


def test_a_body_that_is_not_json_is_refused():
    with pytest.raises(InvalidRequest) as info:
        decode_embedding_request(b"{model")
    assert str(info.value).startswith("request body: invalid JSON: ") and info.value.param is None


def test_float_rows_are_answered_in_openai_s_shape():
    body = orjson.loads(encode_embeddings("m", ROWS, EmbeddingQuery("m", ["a", "b"], False, None), 5))
    assert body == {"object": "list", "model": "m", "usage": {"prompt_tokens": 5, "total_tokens": 5},
                    "data": [{"object": "embedding", "index": 0, "embedding": [3.0, 4.0, 12.0]},
                             {"object": "embedding", "index": 1, "embedding": [0.0, 0.0, 0.0]}]}


def test_float_rows_are_float32_numbers_whatever_the_models_dtype():
    wide = np.array([[1 / 3, 0.1]], dtype=">f8")  # a float64, big-endian output
    body = orjson.loads(encode_embeddings("m", wide, EmbeddingQuery("m", ["a"], False, None), 1))
    assert body["data"][0]["embedding"] == [0.33333334, 0.1]  # float32's shortest text, as for a float32 model


def test_base64_rows_are_little_endian_float32():
    wide = ROWS.astype(">f8")  # whatever the model's dtype and byte order
    body = orjson.loads(encode_embeddings("m", wide, EmbeddingQuery("m", ["a", "b"], True, None), 2))
    rows = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in body["data"]]
    np.testing.assert_array_equal(np.stack(rows), ROWS)
    assert [d["index"] for d in body["data"]] == [0, 1]


def test_dimensions_keep_the_first_columns_at_unit_length():
    body = orjson.loads(encode_embeddings("m", ROWS, EmbeddingQuery("m", ["a", "b"], False, 2), 2))
    np.testing.assert_allclose([d["embedding"] for d in body["data"]], [[0.6, 0.8], [0.0, 0.0]], rtol=0, atol=1e-7)
    np.testing.assert_allclose(truncate(ROWS, 3)[0], ROWS[0] / 13.0, rtol=0, atol=1e-7)
    assert truncate(ROWS, 3).shape == (2, 3) and not np.isnan(truncate(ROWS, 1)).any()  # a zero row stays 0
    with pytest.raises(InvalidRequest) as info:
        truncate(ROWS, 4)
    assert (str(info.value), info.value.param) == ("dimensions: 4 is more than the model's 3", "dimensions")


def test_openai_paths_and_error_bodies():
    assert is_openai_path("/v1/embeddings") and is_openai_path("/v1/")
    assert not is_openai_path("/v1") and not is_openai_path("/v2/models/m/infer")
    assert openai_error_body(401, "no token") == {"error": {"message": "no token", "type": "authentication_error",
                                                            "param": None, "code": None}}
    assert openai_error_body(403, "x")["error"]["type"] == "permission_error"
    assert openai_error_body(429, "x")["error"]["type"] == "rate_limit_error"
    assert openai_error_body(503, "x")["error"]["type"] == "server_error"
    assert openai_error_body(500, "x")["error"]["type"] == "server_error"
    assert openai_error_body(404, "x")["error"]["type"] == "invalid_request_error"
    refused = InvalidRequest("dimensions: ...", "dimensions")
    assert openai_error_body(400, "m", refused) == {"error": {"message": "m", "type": "invalid_request_error",
                                                              "param": "dimensions", "code": "invalid_input"}}
