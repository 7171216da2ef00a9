"""The v2 codec's exact messages and boundaries, each pinned by a mutant that survived the rest of the suite.

Error texts go back to clients verbatim in a 400, so their wording is behaviour: these tests read whole
messages (anchored), where the broader suites only search for a fragment.
"""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from hotswap.errors import InvalidInput
from hotswap.serve.codec import decode_infer_request, deserialize_bytes_tensor, serialize_bytes_tensor
from hotswap.serve.codec_header import json_type, wrong


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
