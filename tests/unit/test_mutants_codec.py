"""The v2 codec's exact messages and boundaries, each pinned by a mutant that survived the rest of the suite.

Error texts go back to clients verbatim in a 400, so their wording is behaviour: these tests read whole
messages (anchored), where the broader suites only search for a fragment.
"""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from hotswap.errors import BackendError, InvalidInput
from hotswap.models.datatypes import DATATYPES
from hotswap.serve.codec import (
    decode_infer_request,
    deserialize_bytes_tensor,
    encode_infer_response,
    serialize_bytes_tensor,
)
from hotswap.serve.codec_header import MAX_RANK, json_type, wrong


def _decode(req: dict, binary: bytes = b"") -> InvalidInput:
    header = orjson.dumps(req)
    with pytest.raises(InvalidInput) as info:
        decode_infer_request(header + binary, len(header) if binary else None)
    return info.value


def test_a_top_level_field_error_starts_with_the_field():
    assert str(_decode({"id": 5, "inputs": []})) == "'id' must be a string, got integer 5"


def test_an_input_field_error_starts_with_the_input_name():
    err = _decode({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32",
                               "parameters": {"binary_data_size": -8}}]}, b"\0" * 8)
    assert str(err) == ("input 'x': 'inputs[0].parameters.binary_data_size' must be a non-negative integer, "
                        "got integer -8")


@pytest.mark.parametrize(("length", "shown"), [(40, '"' + "a" * 38 + '"'), (41, '"' + "a" * 39 + "...")])
def test_long_values_are_cut_after_40_characters(length, shown):
    text = "a" * (length - 2)  # its JSON form has the two quotes too
    assert str(wrong("id", "a string", text)) == f"'id' must be a string, got string {shown}"


def test_a_value_json_cannot_encode_is_shown_as_python_writes_it():
    assert str(wrong("inputs[0].shape[0]", "a non-negative integer", 2**70)) == (
        f"'inputs[0].shape[0]' must be a non-negative integer, got integer {2**70}")


def test_json_type_names_python_types_json_has_no_name_for():
    assert json_type(b"x") == "bytes"
    assert json_type(np.float32(1)) == "float32"
    assert [json_type(v) for v in ({}, [], "", True, 1, 1.0, None)] == [
        "object", "array", "string", "boolean", "integer", "number", "null"]


def test_an_empty_last_bytes_element_is_whole():
    data = serialize_bytes_tensor(np.array([b"ab", b""], dtype=object))
    assert data == b"\x02\0\0\0ab\0\0\0\0"
    assert deserialize_bytes_tensor(data, 2).tolist() == [b"ab", b""]
    req = decode_infer_request(*_binary_request("BYTES", [2], data))
    assert req.inputs["x"].tolist() == [b"ab", b""]


def test_surplus_bytes_are_counted_in_the_error():
    data = serialize_bytes_tensor(np.array([b"ab", b"cde"], dtype=object))  # 6 + 7 bytes
    with pytest.raises(InvalidInput) as info:
        deserialize_bytes_tensor(data, 1)
    assert str(info.value) == "BYTES data holds more than the 1 elements needed (7 bytes over)"


def test_a_truncated_length_prefix_is_named_with_its_offset():
    with pytest.raises(InvalidInput) as info:
        deserialize_bytes_tensor(b"\x01\0\0\0a\0\0", 2)
    assert str(info.value) == "BYTES element 1: truncated 4-byte length prefix at byte 5"


def _binary_request(datatype: str, shape: list[int], data: bytes) -> tuple[bytes, int]:
    header = orjson.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": datatype,
                                       "parameters": {"binary_data_size": len(data)}}]})
    return header + data, len(header)


def _inp(**fields) -> dict:
    return {"name": "x", "shape": [2], "datatype": "FP32", **fields}


@pytest.mark.parametrize(("req", "binary", "message"), [
    ({"inputs": [_inp(parameters={"binary_data_size": 8})]}, None,
     "binary input sizes add up to 8 bytes but 0 bytes follow the JSON header (too few); "
     "is the Inference-Header-Content-Length header missing?"),
    ({"inputs": [_inp(parameters={"binary_data_size": 8})]}, b"\0" * 6,
     "binary input sizes add up to 8 bytes but 6 bytes follow the JSON header (too few)"),
    ({"inputs": [_inp(parameters={"binary_data_size": 8})]}, b"\0" * 9,
     "binary input sizes add up to 8 bytes but 9 bytes follow the JSON header (too many)"),
    ({"inputs": [_inp(data=[1, 2, 3])]}, None, "input 'x': 'data' has 3 elements but shape [2] needs 2"),
    ({"inputs": [_inp(datatype="BYTES", data=["a"])]}, None,
     "input 'x': 'data' has 1 elements but shape [2] needs 2"),
    ({"inputs": [_inp(datatype="INT8", data=[1.5, 2])]}, None,
     "input 'x': 'data' for datatype INT8 must be JSON integers in [-128, 127], got non-integer or out-of-range "
     "numbers"),
    ({"inputs": [_inp(datatype="UINT64", data=[-1, 1.0])]}, None,
     "input 'x': a value is out of range for UINT64 [0, 18446744073709551615]"),
    ({"inputs": [_inp(datatype="INT8", data=[-128, 300])]}, None,
     "input 'x': value 300 is out of range for INT8 [-128, 127]"),
    ({"parameters": [], "inputs": []}, None, "'parameters' must be an object, got array"),
    ({}, None, "'inputs' is missing; expected an array of input tensors"),
    ({"inputs": [_inp(datatype=1, data=[1, 2])]}, None,
     f"input 'x': 'inputs[0].datatype' must be a string, one of {', '.join(DATATYPES)}, got integer 1"),
    ({"inputs": [], "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]}, None,
     "requested output 'y': 'outputs[0].parameters.binary_data' must be true or false, got integer 1"),
])
def test_whole_messages(req, binary, message):
    header = orjson.dumps(req)
    with pytest.raises(InvalidInput) as info:
        decode_infer_request(header + (binary or b""), len(header) if binary else None)
    assert str(info.value) == message


def test_requested_output_parameters_are_kept():
    header = orjson.dumps({"inputs": [], "outputs": [{"name": "y", "parameters": {"binary_data": True, "k": "v"}}]})
    (out,) = decode_infer_request(header, None).outputs
    assert (out.name, out.binary, out.parameters) == ("y", True, {"binary_data": True, "k": "v"})


def test_each_binary_input_reads_only_its_own_bytes():
    a, b = np.arange(2, dtype=np.float32), np.arange(10, 13, dtype=np.float32)
    header = orjson.dumps({"inputs": [_inp(name="a", parameters={"binary_data_size": 8}),
                                      _inp(name="b", shape=[3], parameters={"binary_data_size": 12})]})
    req = decode_infer_request(header + a.tobytes() + b.tobytes(), len(header))
    assert req.inputs["a"].tolist() == [0.0, 1.0] and req.inputs["b"].tolist() == [10.0, 11.0, 12.0]


def test_a_big_endian_output_goes_out_little_endian():
    request = decode_infer_request(orjson.dumps({"inputs": [], "parameters": {"binary_data_output": True}}), None)
    value = np.array([1.5, -2.0], dtype=">f4")
    body, headers = encode_infer_response("m", None, {"y": value}, request)
    blob = body[int(headers["Inference-Header-Content-Length"]):]
    assert blob == np.array([1.5, -2.0], dtype="<f4").tobytes()


def test_an_output_v2_has_no_datatype_for_is_a_backend_error_naming_it():
    request = decode_infer_request(orjson.dumps({"inputs": []}), None)
    with pytest.raises(BackendError) as info:
        encode_infer_response("m", None, {"c": np.zeros(2, np.complex64)}, request)
    assert str(info.value).startswith("output 'c': ") and "complex64" in str(info.value)


def test_an_unknown_requested_output_lists_the_models_outputs():
    request = decode_infer_request(orjson.dumps({"inputs": [], "outputs": [{"name": "w"}]}), None)
    with pytest.raises(InvalidInput) as info:
        encode_infer_response("m", None, {"y": np.zeros(1, np.float32), "z": np.zeros(1, np.float32)}, request)
    assert str(info.value) == "requested output 'w' is not an output of model 'm'; expected one of: y, z"


def test_a_shape_of_the_highest_rank_is_accepted():
    header = orjson.dumps({"inputs": [_inp(shape=[1] * MAX_RANK, data=[1.0])]})
    assert decode_infer_request(header, None).inputs["x"].shape == (1,) * MAX_RANK


def _orjson_error(text: bytes) -> str:
    with pytest.raises(orjson.JSONDecodeError) as info:
        orjson.loads(text)
    return str(info.value)


@pytest.mark.parametrize(("body", "header_length", "hint"), [
    (b"{not json", None, ""),
    (b'{"inputs": []}\x00\x01', None, "; binary data after the JSON needs the Inference-Header-Content-Length header"),
    (b'{"inputs": []}\x00\x01', 5, ""),  # a wrong header length: no hint about a missing one
    (b'{"inputs": []}', 0, ""),  # 0 is a length, of an empty (invalid) JSON header
])
def test_invalid_json_says_what_the_parser_said(body, header_length, hint):
    with pytest.raises(InvalidInput) as info:
        decode_infer_request(body, header_length)
    parsed = body if header_length is None else body[:header_length]
    assert str(info.value) == f"request JSON is invalid: {_orjson_error(parsed)}{hint}"
