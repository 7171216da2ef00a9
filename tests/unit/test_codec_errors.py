"""Malformed v2 requests: each must be an InvalidInput (HTTP 400) that names the field, never a 500."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest

from hotswap.errors import InvalidInput
from hotswap.models.datatypes import V2_TO_NUMPY
from hotswap.serve.codec import decode_infer_request
from hotswap.serve.codec_header import MAX_ELEMENTS, MAX_RANK, InputSpec
from hotswap.serve.codec_tensors import json_tensor


def _raw(req: dict, binary: bytes = b"") -> tuple[bytes, int | None]:
    header = orjson.dumps(req)
    return header + binary, (len(header) if binary else None)


def _inp(**kw) -> dict:
    return {"name": "x", "shape": [2], "datatype": "FP32", **kw}


F4 = np.zeros(2, np.float32).tobytes()
MALFORMED = [
    (b"{not json", None, "request JSON is invalid"),
    (b"[]", None, "request JSON must be an object"),
    (b'{"inputs": []}', 100, "Inference-Header-Content-Length is 100"),
    (b'{"inputs": []}', -1, "Inference-Header-Content-Length is -1"),
    (*_raw({}), "'inputs' is missing"),
    (*_raw({"inputs": {"x": 1}}), "'inputs' must be an array of input tensors, got object"),
    (*_raw({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}), "'inputs\\[0\\].name'"),
    (*_raw({"inputs": [{"name": "x", "datatype": "FP32", "data": [1]}]}), "input 'x': 'shape' is missing"),
    (*_raw({"inputs": [{"name": "x", "shape": [1], "data": [1]}]}), "input 'x': 'datatype' is missing"),
    (*_raw({"inputs": [_inp(shape=[2, -1], data=[])]}), "'inputs\\[0\\].shape\\[1\\]' must be a non-negative integer"),
    (*_raw({"inputs": [_inp(shape="2", data=[])]}), "'inputs\\[0\\].shape' must be an array of non-negative integers"),
    (*_raw({"inputs": [_inp(shape=[1.5], data=[])]}), "'inputs\\[0\\].shape\\[0\\]' must be a non-negative integer"),
    (*_raw({"inputs": [_inp(datatype="FLOAT", data=[1, 2])]}), "unknown datatype 'FLOAT'; expected one of BOOL,"),
    (*_raw({"inputs": [_inp(data=[1, 2]), _inp(data=[1, 2])]}), "input 'x': duplicate input name"),
    (*_raw({"inputs": [_inp(data=[1, 2, 3])]}), "'data' has 3 elements but shape \\[2\\] needs 2"),
    (*_raw({"inputs": [_inp(shape=[2, 2], data=[[1, 2], [3]])]}), "ragged"),
    (*_raw({"inputs": [_inp(data=["1", "2"])]}), "'data' for datatype FP32 must be JSON numbers, got strings"),
    (*_raw({"inputs": [_inp(data=[1, None])]}), "must be JSON numbers, got nulls"),
    (*_raw({"inputs": [_inp(data=[True, False])]}), "must be JSON numbers, got booleans"),
    (*_raw({"inputs": [_inp(datatype="INT32", data=[1.5, 2])]}),
     "must be JSON integers in \\[-2147483648, 2147483647\\]"),
    (*_raw({"inputs": [_inp(datatype="UINT64", data=[-1, 2**63])]}), "out of range for UINT64"),
    (*_raw({"inputs": [_inp(datatype="UINT64", data=[0.5, 2**63])]}), "must be JSON integers in"),
    (*_raw({"inputs": [_inp(datatype="INT8", data=[1, 300])]}), "value 300 is out of range for INT8"),
    (*_raw({"inputs": [_inp(datatype="UINT8", data=[-1, 3])]}), "value -1 is out of range for UINT8"),
    (*_raw({"inputs": [_inp(datatype="BOOL", data=[0, 1])]}), "'data' for datatype BOOL must be JSON booleans"),
    (*_raw({"inputs": [_inp(datatype="BYTES", data=["a", 1])]}), "BYTES must be strings, got int"),
    (*_raw({"inputs": [_inp(data=3.0)]}), "'data' must be a JSON array"),
    (*_raw({"inputs": [_inp(data=[1, 2], parameters={"binary_data_size": 8})]}, F4), "has both 'data' and"),
    (*_raw({"inputs": [_inp()]}), "input 'x': has neither 'data' nor"),
    (*_raw({"inputs": [_inp(parameters={"binary_data_size": 4})]}, F4[:4]),
     "'parameters.binary_data_size' is 4 but FP32 \\[2\\] needs 8"),
    (*_raw({"inputs": [_inp(parameters={"binary_data_size": -8})]}, F4), "must be a non-negative integer"),
    (*_raw({"inputs": [_inp(parameters={"binary_data_size": 8})]}, F4[:6]), "add up to 8 bytes but 6 bytes.*too few"),
    (*_raw({"inputs": [_inp(parameters={"binary_data_size": 8})]}, F4 + b"!"), "but 9 bytes.*too many"),
    (orjson.dumps({"inputs": [_inp(parameters={"binary_data_size": 8})]}) + F4, None,
     "needs the Inference-Header-Content-Length header"),
    (*_raw({"inputs": [_inp(parameters={"binary_data_size": 8})]}), "but 0 bytes follow.*header missing"),
    (*_raw({"inputs": [_inp(datatype="BYTES", parameters={"binary_data_size": 5})]}, b"\x01\0\0\0a"),
     "input 'x': BYTES data holds 1 elements but the shape needs 2"),
    (*_raw({"inputs": [_inp(shape=[1], datatype="BYTES", parameters={"binary_data_size": 5})]}, b"\x09\0\0\0a"),
     "input 'x': BYTES element 0: length prefix says 9 bytes"),
    (*_raw({"inputs": [_inp(parameters={"shared_memory_region": "r"})]}), "shared memory"),
    (*_raw({"id": 5, "inputs": []}), "'id' must be a string"),
    (*_raw({"parameters": [], "inputs": []}), "'parameters' must be an object"),
    (*_raw({"parameters": {"binary_data_output": "yes"}, "inputs": []}), "binary_data_output' must be true"),
    (*_raw({"inputs": [], "outputs": {"y": 1}}), "'outputs' must be an array"),
    (*_raw({"inputs": [], "outputs": [{"parameters": {}}]}), "'outputs\\[0\\].name'"),
    (*_raw({"inputs": [], "outputs": [{"name": "y"}, {"name": "y"}]}), "requested output 'y': duplicate"),
    (*_raw({"inputs": [], "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]}),
     "'outputs\\[0\\].parameters.binary_data' must be true or false, got integer 1"),
]


@pytest.mark.parametrize(("body", "header_length", "fragment"), MALFORMED, ids=[m[2][:40] for m in MALFORMED])
def test_malformed_requests_raise_invalid_input(body, header_length, fragment):
    with pytest.raises(InvalidInput, match=fragment):
        decode_infer_request(body, header_length)


# --- a wrong JSON type in any field: body -> substring of the error -----------------------

def _one(**kw) -> dict:
    """A request with the one input `_inp(data=[1, 2], **kw)`."""
    return {"inputs": [_inp(**({"data": [1, 2]} | kw))]}


X = "input 'x': "
BYTES2 = {"datatype": "BYTES", "shape": [2]}
WRONG_TYPES = [
    (b'"x"', "request JSON must be an object, got string"),
    (b"1", "request JSON must be an object, got integer"),
    (b"null", "request JSON must be an object, got null"),
    ({"id": 5, "inputs": []}, "'id' must be a string, got integer 5"),
    ({"id": {}, "inputs": []}, "'id' must be a string, got object"),
    ({"id": ["a"], "inputs": []}, "'id' must be a string, got array"),
    ({"parameters": [], "inputs": []}, "'parameters' must be an object, got array"),
    ({"parameters": "p", "inputs": []}, "'parameters' must be an object, got string \"p\""),
    ({"parameters": None, "inputs": []}, "'parameters' must be an object, got null"),
    ({"parameters": {"k": {}}, "inputs": []}, "'parameters.k' must be a string, number or boolean, got object"),
    ({"parameters": {"k": [1]}, "inputs": []}, "'parameters.k' must be a string, number or boolean, got array"),
    ({"parameters": {"k": None}, "inputs": []}, "'parameters.k' must be a string, number or boolean, got null"),
    ({"parameters": {"binary_data_output": 1}, "inputs": []},
     "'parameters.binary_data_output' must be true or false, got integer 1"),
    ({"parameters": {"binary_data_output": "true"}, "inputs": []},
     "'parameters.binary_data_output' must be true or false, got string \"true\""),
    ({"inputs": {}}, "'inputs' must be an array of input tensors, got object"),
    ({"inputs": "x"}, "'inputs' must be an array of input tensors, got string"),
    ({"inputs": 3}, "'inputs' must be an array of input tensors, got integer"),
    ({"inputs": [1]}, "'inputs[0]' must be an object, got integer 1"),
    ({"inputs": [[]]}, "'inputs[0]' must be an object, got array"),
    ({"inputs": [None]}, "'inputs[0]' must be an object, got null"),
    ({"inputs": [_inp(name=1, data=[1, 2])]}, "'inputs[0].name' must be a non-empty string, got integer 1"),
    ({"inputs": [_inp(name={}, data=[1, 2])]}, "'inputs[0].name' must be a non-empty string, got object"),
    ({"inputs": [_inp(name="", data=[1, 2])]}, "'inputs[0].name' must be a non-empty string, got string \"\""),
    (_one(datatype={}), X + "'inputs[0].datatype' must be a string, one of BOOL, UINT8,"),
    (_one(datatype=["FP32"]), X + "'inputs[0].datatype' must be a string, one of BOOL,"),
    (_one(datatype=None), "'inputs[0].datatype' must be a string, one of BOOL,"),
    (_one(datatype=32), "'inputs[0].datatype' must be a string, one of BOOL,"),
    (_one(datatype="fp32"), X + "unknown datatype 'fp32'; expected one of BOOL,"),
    (_one(shape="3"), X + "'inputs[0].shape' must be an array of non-negative integers, got string \"3\""),
    (_one(shape=3), "'inputs[0].shape' must be an array of non-negative integers, got integer 3"),
    (_one(shape={}), "'inputs[0].shape' must be an array of non-negative integers, got object"),
    (_one(shape=None), "'inputs[0].shape' must be an array of non-negative integers, got null"),
    (_one(shape=[-1]), X + "'inputs[0].shape[0]' must be a non-negative integer, got integer -1"),
    (_one(shape=[2, -3]), "'inputs[0].shape[1]' must be a non-negative integer, got integer -3"),
    (_one(shape=[2.0]), "'inputs[0].shape[0]' must be a non-negative integer, got number 2.0"),
    (_one(shape=[True]), "'inputs[0].shape[0]' must be a non-negative integer, got boolean true"),
    (_one(shape=["2"]), "'inputs[0].shape[0]' must be a non-negative integer, got string \"2\""),
    (_one(shape=[[2]]), "'inputs[0].shape[0]' must be a non-negative integer, got array"),
    (_one(data={}), X + "'data' must be a JSON array, got object"),
    (_one(data="1 2"), X + "'data' must be a JSON array, got string"),
    (_one(data=None), X + "'data' must be a JSON array, got null"),
    (_one(data=[[1, 2]]), X + "'data' is nested deeper than shape [2] allows (1 levels of arrays)"),
    (_one(data=[[1], [2]]), X + "'data' is nested deeper than shape [2] allows"),
    (_one(shape=[2, 2], data=[[1, 2], [3, [4]]]), X + "'data' is a ragged nested list"),
    (_one(shape=[2, 2], data=[[1, 2], 3, 4]), X + "'data' is a ragged nested list"),
    (_one(data=[1, {}]), X + "'data' for datatype FP32 must be JSON numbers, got nulls, objects"),
    (_one(data=[[], []]), X + "'data' is nested deeper than shape [2] allows"),
    (_one(**BYTES2, data=[["a"], ["b"]]), X + "'data' is nested deeper than shape [2] allows"),
    (_one(**BYTES2, data=["a", {}]), X + "'data' for datatype BYTES must be strings, got object"),
    (_one(**BYTES2, data=["a", None]), X + "'data' for datatype BYTES must be strings, got null"),
    (_one(**BYTES2, data=["a", 1.5]), X + "'data' for datatype BYTES must be strings, got number"),
    (_one(parameters=[]), X + "'inputs[0].parameters' must be an object, got array"),
    (_one(parameters=None), X + "'inputs[0].parameters' must be an object, got null"),
    (_one(parameters={"p": {}}), X + "'inputs[0].parameters.p' must be a string, number or boolean, got object"),
    (_inp(parameters={"binary_data_size": "8"}), "'inputs[0].parameters.binary_data_size' must be a non-negative"),
    (_inp(parameters={"binary_data_size": 8.0}), "'inputs[0].parameters.binary_data_size' must be a non-negative"),
    (_inp(parameters={"binary_data_size": True}), "'inputs[0].parameters.binary_data_size' must be a non-negative"),
    (_inp(parameters={"binary_data_size": None}), "'inputs[0].parameters.binary_data_size' must be a string, num"),
    (_inp(parameters={"binary_data_size": -1}), "'inputs[0].parameters.binary_data_size' must be a non-negative"),
    ({"inputs": [], "outputs": {}}, "'outputs' must be an array of requested outputs, got object"),
    ({"inputs": [], "outputs": "y"}, "'outputs' must be an array of requested outputs, got string"),
    ({"inputs": [], "outputs": [1]}, "'outputs[0]' must be an object, got integer 1"),
    ({"inputs": [], "outputs": [["y"]]}, "'outputs[0]' must be an object, got array"),
    ({"inputs": [], "outputs": [{"name": 1}]}, "'outputs[0].name' must be a non-empty string, got integer 1"),
    ({"inputs": [], "outputs": [{"name": "y", "parameters": []}]},
     "requested output 'y': 'outputs[0].parameters' must be an object, got array"),
    ({"inputs": [], "outputs": [{"name": "y", "parameters": {"binary_data": "true"}}]},
     "'outputs[0].parameters.binary_data' must be true or false, got string \"true\""),
    ({"inputs": [], "outputs": [{"name": "y", "parameters": {"binary_data": None}}]},
     "'outputs[0].parameters.binary_data' must be a string, number or boolean, got null"),
]


def _body(req: dict | bytes) -> tuple[bytes, int | None]:
    if isinstance(req, bytes):
        return req, None
    if "inputs" not in req:  # a bare input: send it with the binary data its size asks for
        return _raw({"inputs": [req]}, bytes(8))
    return _raw(req)


@pytest.mark.parametrize(("req", "fragment"), WRONG_TYPES, ids=[f[1][:60] for f in WRONG_TYPES])
def test_wrong_json_type_is_invalid_input(req, fragment):
    with pytest.raises(InvalidInput) as e:
        decode_infer_request(*_body(req))
    assert fragment in str(e.value)


def test_long_values_are_cut_short_in_errors():
    with pytest.raises(InvalidInput, match=r"got string \"aaaa+\.\.\.$") as e:
        decode_infer_request(*_raw({"inputs": [_inp(shape="a" * 10_000, data=[])]}))
    with pytest.raises(InvalidInput, match=r"'id' must be a string, got integer 7$"):
        decode_infer_request(*_raw({"id": 7, "inputs": []}))
    assert len(str(e.value)) < 200


# --- nesting depth, bounds ----------------------------------------------------------------

def _json(req: dict) -> tuple[bytes, None]:
    """`req` as JSON text, which unlike orjson.dumps can hold integers beyond 64 bits."""
    return json.dumps(req).encode(), None


def _nested(depth: int, leaf: object) -> object:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


@pytest.mark.parametrize("datatype", ["BYTES", "FP32"])
@pytest.mark.parametrize("depth", [1000, 5000])
def test_deep_data_is_rejected_without_recursion(datatype, depth):
    leaf = "a" if datatype == "BYTES" else 1.0
    spec = InputSpec("x", datatype, V2_TO_NUMPY[datatype], (1,), None, _nested(depth, leaf))
    with pytest.raises(InvalidInput, match="input 'x': 'data' is nested deeper than shape \\[1\\] allows"):
        json_tensor(spec)
    # Through the whole request: orjson itself stops at 1024 levels, an InvalidInput too.
    body = b'{"inputs":[{"name":"x","datatype":"%s","shape":[1],"data":%s}]}' % (
        datatype.encode(), orjson.dumps(leaf).join([b"[" * depth, b"]" * depth]))
    frag = "'data' is nested deeper" if depth < 1024 else "request JSON is invalid"
    with pytest.raises(InvalidInput, match=frag):
        decode_infer_request(body, None)


def test_deep_data_after_the_first_element_is_ragged():
    spec = InputSpec("x", "FP32", V2_TO_NUMPY["FP32"], (2,), None, [1.0, _nested(5000, 1.0)])
    with pytest.raises(InvalidInput, match="ragged"):
        json_tensor(spec)


def test_data_nested_exactly_as_deep_as_the_shape():
    for datatype, leaf in [("BYTES", "a"), ("INT8", 3)]:
        spec = InputSpec("x", datatype, V2_TO_NUMPY[datatype], (1, 1, 1), None, _nested(3, leaf))
        assert json_tensor(spec).shape == (1, 1, 1)
    scalar = InputSpec("x", "INT8", V2_TO_NUMPY["INT8"], (), None, [3])  # rank 0 still takes a flat array
    assert json_tensor(scalar).shape == ()


BOUNDS = [
    (_raw(_one(shape=[2**40])), "'data' has 2 elements but shape [1099511627776] needs 1099511627776"),
    (_raw(_one(shape=[2**64 - 1])), f"'inputs[0].shape' [{2**64 - 1}] is too large"),
    (_json(_one(shape=[2**70])), "'inputs[0].shape[0]' must be a non-negative integer, got number 1.18"),
    (_raw(_one(shape=[0, 2**62, 4], data=[])), f"is too large; expected at most {MAX_ELEMENTS} elements"),
    (_raw(_one(shape=[1] * (MAX_RANK + 1))), f"has {MAX_RANK + 1} dimensions; expected at most {MAX_RANK}"),
    (_raw(_one(data=[1])), "'data' has 1 elements but shape [2] needs 2"),
    (_raw(_one(**BYTES2, data=["a", "b", "c"])), "'data' has 3 elements but shape [2] needs 2"),
    (_raw({"inputs": [_inp(parameters={"binary_data_size": 2**64 - 1})]}, bytes(8)),
     f"'parameters.binary_data_size' is {2**64 - 1} but FP32 [2] needs 8"),
    (_raw({"inputs": [_inp(**BYTES2, parameters={"binary_data_size": 2**64 - 1})]}, bytes(8)),
     f"binary input sizes add up to {2**64 - 1} bytes but 8 bytes follow the JSON header (too few)"),
    (_json({"inputs": [_inp(parameters={"binary_data_size": 2**70})]}),
     "'inputs[0].parameters.binary_data_size' must be a non-negative integer, got number"),
    (_raw({"inputs": [_inp(**BYTES2, parameters={"binary_data_size": 4}),
                      _inp(name="y", parameters={"binary_data_size": 8})]}, bytes(8)),
     "add up to 12 bytes but 8 bytes follow"),
    (_raw({"inputs": [_inp(shape=[2**40], parameters={"binary_data_size": 2**42})]}, bytes(8)),
     f"binary input sizes add up to {2**42} bytes but 8 bytes follow the JSON header (too few)"),
]


@pytest.mark.parametrize(("body", "fragment"), BOUNDS, ids=[b[1][:50] for b in BOUNDS])
def test_bounds(body, fragment):
    with pytest.raises(InvalidInput) as e:
        decode_infer_request(*body)
    assert fragment in str(e.value)


@pytest.mark.parametrize("datatype", ["FP64", "BYTES"])
def test_huge_empty_tensors_within_numpy_limits(datatype):
    shape = [0, MAX_ELEMENTS]
    req = decode_infer_request(*_raw({"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "data": []}]}))
    assert req.inputs["x"].shape == (0, MAX_ELEMENTS)
