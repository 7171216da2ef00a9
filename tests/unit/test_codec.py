"""The v2 codec against the real tritonclient.http encoder and decoder."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient

from hotswap.errors import InvalidInput
from hotswap.serve.codec import (
    InferRequest,
    RequestedOutput,
    decode_infer_request,
    deserialize_bytes_tensor,
    encode_infer_response,
    serialize_bytes_tensor,
)

Client = httpclient.InferenceServerClient


def _sample(datatype: str) -> np.ndarray:
    """A [2, 3] tensor of `datatype` including its extreme values."""
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if datatype == "BYTES":
        return np.array([[b"a", b"", "h\u00e9llo".encode()], [b"x" * 300, b"\x00z", b"end"]], dtype=object)
    if datatype in ("FP16", "FP32", "FP64", "BF16"):
        dt = ml_dtypes.bfloat16 if datatype == "BF16" else {"FP16": np.float16, "FP32": np.float32}.get(
            datatype, np.float64)
        return np.array([[0.0, -1.5, 0.25], [3.0, 1e-3, -65504.0]]).astype(dt)
    dt = np.dtype(datatype.lower())
    info = np.iinfo(dt)
    return np.array([[info.min, info.max, 0], [1, info.max - 1, 7]], dtype=dt)


NUMERIC = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
           "FP16", "FP32", "FP64", "BF16"]
ALL = NUMERIC + ["BYTES"]


def _client_request(arrays: dict[str, tuple[np.ndarray, bool]], outputs=None, request_id="", parameters=None):
    inputs = []
    for name, (arr, binary) in arrays.items():
        datatype = "BYTES" if arr.dtype == object else httpclient.np_to_triton_dtype(arr.dtype)
        inputs.append(httpclient.InferInput(name, list(arr.shape), datatype).set_data_from_numpy(arr, binary))
    body, json_size = Client.generate_request_body(inputs, outputs=outputs, request_id=request_id,
                                                   parameters=parameters)
    return decode_infer_request(body, json_size)


def _assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert got.dtype == want.dtype
    if want.dtype == object:
        assert got.tolist() == want.tolist()
    else:
        assert got.tobytes() == want.tobytes()


def _raw(req: dict, binary: bytes = b"") -> tuple[bytes, int | None]:
    header = orjson.dumps(req)
    return header + binary, (len(header) if binary else None)


# --- requests produced by tritonclient ----------------------------------------------------

@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("datatype", ALL)
def test_every_datatype_round_trips_from_client(datatype, binary):
    if datatype == "BF16" and not binary:
        pytest.skip("tritonclient refuses BF16 as JSON; covered by test_bf16_json_numbers")
    arr = _sample(datatype)
    if datatype == "BYTES" and not binary:
        arr = arr.copy()
        arr[1, 1] = b"z"  # JSON strings must be UTF-8 text
    req = _client_request({"x": (arr, binary)})
    _assert_same(req.inputs["x"], arr)


def test_bf16_json_numbers():
    body, hl = _raw({"inputs": [{"name": "x", "shape": [3], "datatype": "BF16", "data": [1, 2.5, -0.125]}]})
    got = decode_infer_request(body, hl).inputs["x"]
    _assert_same(got, np.array([1, 2.5, -0.125], dtype=ml_dtypes.bfloat16))


def test_mixed_binary_and_json_inputs_keep_request_order_and_alignment():
    s = np.array([b"abc"], dtype=object)  # 7 serialized bytes: later inputs start unaligned
    f = np.arange(12, dtype=np.float64).reshape(3, 4)
    i = np.array([[1, 2]], dtype=np.int32)
    req = _client_request({"s": (s, True), "i": (i, False), "f": (f, True)})
    assert list(req.inputs) == ["s", "i", "f"]
    _assert_same(req.inputs["s"], s)
    _assert_same(req.inputs["i"], i)
    _assert_same(req.inputs["f"], f)
    assert req.inputs["f"].flags.aligned


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("shape", [[0], [0, 384]])
@pytest.mark.parametrize("datatype", ["FP32", "INT64", "BYTES"])
def test_empty_tensors(datatype, shape, binary):
    arr = np.empty(shape, dtype=object if datatype == "BYTES" else datatype.lower().replace("fp", "float"))
    _assert_same(_client_request({"x": (arr, binary)}).inputs["x"], arr)


def test_request_id_parameters_and_outputs():
    outs = [httpclient.InferRequestedOutput("y", binary_data=False), httpclient.InferRequestedOutput("z")]
    req = _client_request({"x": (np.zeros(2, np.float32), True)}, outputs=outs, request_id="r-1",
                          parameters={"temperature": 0.5})
    assert req.id == "r-1"
    assert req.parameters == {"temperature": 0.5}
    assert req.binary_output_default is False
    assert [(o.name, o.binary) for o in req.outputs] == [("y", False), ("z", True)]


def test_no_outputs_means_all_binary_as_tritonclient_asks():
    req = _client_request({"x": (np.zeros(2, np.float32), False)})
    assert req.id is None and req.outputs is None and req.binary_output_default is True


def test_nested_and_flat_json_data_both_accepted():
    for data in ([[1, 2], [3, 4]], [1, 2, 3, 4]):
        body, hl = _raw({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT32", "data": data}]})
        _assert_same(decode_infer_request(body, hl).inputs["x"], np.array([[1, 2], [3, 4]], np.int32))
    body, hl = _raw({"inputs": [{"name": "s", "shape": [2, 1], "datatype": "BYTES", "data": [["a"], ["b"]]}]})
    _assert_same(decode_infer_request(body, hl).inputs["s"], np.array([[b"a"], [b"b"]], dtype=object))


def test_bytes_tensor_helpers_round_trip():
    arr = _sample("BYTES")
    buf = serialize_bytes_tensor(arr)
    assert buf[:5] == b"\x01\x00\x00\x00a"
    _assert_same(deserialize_bytes_tensor(buf, arr.size).reshape(arr.shape), arr)
    assert serialize_bytes_tensor(np.array(["h\u00e9", 7], dtype=object)) == b"\x03\0\0\0h\xc3\xa9\x01\0\0\x007"
    for bad, count, frag in [(buf, arr.size + 1, "holds 6 elements"), (buf, arr.size - 1, "more than"),
                             (buf[:-1], arr.size, "only 2 remain"), (b"\x01\x00", 1, "truncated")]:
        with pytest.raises(InvalidInput, match=frag):
            deserialize_bytes_tensor(bad, count)


# --- responses read by tritonclient -------------------------------------------------------

def _request(outputs=None, default=False, request_id=None) -> InferRequest:
    return InferRequest(id=request_id, inputs={}, parameters={}, outputs=outputs, binary_output_default=default)


def _parse(body: bytes, headers: dict[str, str]):
    hl = headers.get("Inference-Header-Content-Length")
    return Client.parse_response_body(body, header_length=None if hl is None else int(hl))


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("datatype", ALL)
def test_every_datatype_response_parses_in_client(datatype, binary):
    arr = _sample(datatype)
    body, headers = encode_infer_response("m", "1", {"y": arr}, _request(default=binary, request_id="rid"))
    result = _parse(body, headers)
    got = result.as_numpy("y")
    out = result.get_output("y")
    assert out["datatype"] == datatype and out["shape"] == [2, 3]
    if datatype == "BYTES" and not binary:
        # \x00z is valid UTF-8, so this goes as JSON and tritonclient hands back str.
        assert "data" in out
        assert got.tolist() == [[v.decode() for v in row] for row in arr.tolist()]
    else:
        _assert_same(got, arr)
    assert ("parameters" in out) is binary
    assert result.get_response()["id"] == "rid"
    assert result.get_response()["model_version"] == "1"
    if binary:
        assert headers["Content-Type"] == "application/octet-stream"
    else:
        assert headers == {"Content-Type": "application/json"}


def test_output_selection_and_per_output_binary():
    outputs = {"a": np.arange(4, dtype=np.int64), "b": np.ones((2, 2), np.float32), "c": np.zeros(1, np.int8)}
    ask = [RequestedOutput("c", binary=False, parameters={}), RequestedOutput("a", binary=True, parameters={})]
    body, headers = encode_infer_response("m", None, outputs, _request(ask), parameters={"k": 1})
    result = _parse(body, headers)
    resp = result.get_response()
    assert [o["name"] for o in resp["outputs"]] == ["c", "a"]
    assert "model_version" not in resp and "id" not in resp and resp["parameters"] == {"k": 1}
    assert "data" in resp["outputs"][0] and resp["outputs"][1]["parameters"] == {"binary_data_size": 32}
    _assert_same(result.as_numpy("a"), outputs["a"])
    _assert_same(result.as_numpy("c"), outputs["c"])
    assert result.as_numpy("b") is None
    assert int(headers["Inference-Header-Content-Length"]) == len(body) - 32


def test_unknown_requested_output():
    with pytest.raises(InvalidInput, match="requested output 'nope' is not an output of model 'm'; expected one of: y"):
        encode_infer_response("m", None, {"y": np.zeros(1)}, _request([RequestedOutput("nope", True, {})]))


def test_full_request_response_cycle_through_client():
    x = np.random.default_rng(0).standard_normal((32, 384)).astype(np.float32)
    req = _client_request({"x": (x, True)}, outputs=[httpclient.InferRequestedOutput("y", binary_data=False)],
                          request_id="abc")
    body, headers = encode_infer_response("m", "1", {"y": req.inputs["x"] * 2, "z": x}, req)
    result = _parse(body, headers)
    _assert_same(result.as_numpy("y"), x * 2)  # float32 survives JSON exactly
    assert result.get_response()["id"] == "abc" and result.as_numpy("z") is None


def test_non_utf8_bytes_output_falls_back_to_binary():
    arr = np.array([b"\xff\xfe", b"ok"], dtype=object)
    body, headers = encode_infer_response("m", None, {"y": arr}, _request([RequestedOutput("y", False, {})]))
    result = _parse(body, headers)
    assert result.get_output("y")["parameters"]["binary_data_size"] == 12
    _assert_same(result.as_numpy("y"), arr)


@pytest.mark.parametrize("binary", [True, False])
def test_empty_output(binary):
    arr = np.empty((0, 384), np.float32)
    body, headers = encode_infer_response("m", None, {"y": arr}, _request(default=binary))
    _assert_same(_parse(body, headers).as_numpy("y"), arr)
