"""The JSON header of a v2 inference request: parsing, and the JSON type of every field.

Each wrong type is an InvalidInput naming the field's path (`inputs[0].datatype`) and what it
should be, so no malformed header can reach numpy or a dict lookup and come out as a 500.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import orjson

from hotswap.errors import InvalidInput
from hotswap.models.datatypes import DATATYPES, V2_TO_NUMPY

# numpy 1.x's ndarray limit (2.x allows 64); no served model comes near it.
MAX_RANK = 32
# The most elements, zero dimensions left out, whose size in bytes numpy can hold for every
# dtype here (the widest is 8 bytes): beyond it numpy refuses even an empty array.
MAX_ELEMENTS = 2**60 - 1
_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number",
               type(None): "null"}
_MISSING = object()
#: An input without `parameters` (read only, never stored).
_NO_PARAMETERS: dict = {}


@dataclass(slots=True)
class RequestedOutput:
    """One entry of the request's `outputs`."""

    name: str
    binary: bool  # send this output as binary
    parameters: dict


@dataclass(slots=True)
class InputSpec:
    """One entry of the request's `inputs`, its fields checked; `data` is checked when decoded."""

    name: str
    datatype: str
    dtype: np.dtype
    shape: tuple[int, ...]
    binary_size: int | None  # parameters.binary_data_size; None: the tensor is in `data`
    data: object


@dataclass(slots=True)
class Header:
    """The request header's fields, each of the right JSON type."""

    id: str | None
    parameters: dict
    inputs: list[InputSpec]
    outputs: list[RequestedOutput] | None  # None = all outputs
    binary_output_default: bool


def json_type(value: object) -> str:
    """The JSON name of a decoded JSON value's type, for error messages."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def wrong(path: str, expected: str, value: object, prefix: str = "") -> InvalidInput:
    """An InvalidInput saying the field at `path` must be `expected` but holds `value`."""
    got = json_type(value)
    if not isinstance(value, (dict, list)):  # containers could be huge; their type says enough
        try:
            text = orjson.dumps(value).decode()
        except orjson.JSONEncodeError:  # not from JSON: a Python int beyond 64 bits, say
            text = repr(value)
        got += f" {text[:40]}{'...' if len(text) > 40 else ''}"
    return InvalidInput(f"{prefix}'{path}' must be {expected}, got {got}")


def parse_header(body: bytes, header_length: int | None) -> tuple[dict, int]:
    """Parse the JSON header of `body`; returns it and where the binary data starts."""
    size = len(body)
    if header_length is None:
        header_length = size
    elif not 0 <= header_length <= size:
        raise InvalidInput(f"Inference-Header-Content-Length is {header_length}; expected 0 to body length {size}")
    try:
        req = orjson.loads(memoryview(body)[:header_length])
    except orjson.JSONDecodeError as e:
        hint = ""
        if header_length == size and _json_then_more(body):  # binary data but no header
            hint = "; binary data after the JSON needs the Inference-Header-Content-Length header"
        raise InvalidInput(f"request JSON is invalid: {e}{hint}") from None
    if not isinstance(req, dict):
        raise InvalidInput(f"request JSON must be an object, got {json_type(req)}")
    return req, header_length


def _json_then_more(body: bytes) -> bool:
    """Whether `body` is a JSON document followed by more bytes (binary data sent without the header).

    Binary tensor data is seldom valid UTF-8, and orjson then reports only that, so look at
    the part before the first invalid byte."""
    try:
        bytes(body).decode("utf-8")
        end = len(body)
    except UnicodeDecodeError as bad:
        end = bad.start
    try:
        orjson.loads(memoryview(body)[:end])
    except orjson.JSONDecodeError as e:
        return "after document" in str(e)
    return end < len(body)


def read_header(req: dict) -> Header:
    """Check the JSON type of every field of a parsed request header."""
    req_id = req.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise wrong("id", "a string", req_id)
    params = read_parameters("parameters", req.get("parameters", {}))
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise wrong("parameters.binary_data_output", "true or false", binary_default)
    specs = req.get("inputs")
    if specs is None:
        raise InvalidInput("'inputs' is missing; expected an array of input tensors")
    if not isinstance(specs, list):
        raise wrong("inputs", "an array of input tensors", specs)
    inputs = [read_input(i, spec) for i, spec in enumerate(specs)]
    names: set[str] = set()
    for spec in inputs:
        if spec.name in names:
            raise InvalidInput(f"input {spec.name!r}: duplicate input name; each input may appear once")
        names.add(spec.name)
    outputs = read_outputs(req.get("outputs"), binary_default)
    return Header(req_id, params, inputs, outputs, binary_default)


def read_parameters(path: str, value: object, prefix: str = "") -> dict:
    """Check a `parameters` object: the protocol allows string, number and boolean values only."""
    if not isinstance(value, dict):
        raise wrong(path, "an object", value, prefix)
    for key, v in value.items():
        if not isinstance(v, (str, int, float)):  # bool is an int
            raise wrong(f"{path}.{key}", "a string, number or boolean", v, prefix)
    return value


def read_input(i: int, spec: object) -> InputSpec:
    """Check the fields of `inputs[i]`; its `data`, if any, is left to the tensor decoder.

    Error texts (the field's path, the input's name) are only built for an error: this runs for
    every input of every request."""
    if not isinstance(spec, dict):
        raise wrong(f"inputs[{i}]", "an object", spec)
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise wrong(f"inputs[{i}].name", "a non-empty string", name)
    for key in ("shape", "datatype"):
        if key not in spec:
            raise InvalidInput(f"input {name!r}: '{key}' is missing")
    datatype = spec["datatype"]
    if not isinstance(datatype, str):
        raise wrong(f"inputs[{i}].datatype", f"a string, one of {', '.join(DATATYPES)}", datatype,
                    f"input {name!r}: ")
    dtype = V2_TO_NUMPY.get(datatype)
    if dtype is None:
        raise InvalidInput(f"input {name!r}: unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}")
    shape = read_shape(i, name, spec["shape"])
    params = spec.get("parameters", _NO_PARAMETERS)
    if params is not _NO_PARAMETERS:
        read_parameters(f"inputs[{i}].parameters", params, f"input {name!r}: ")
        if "shared_memory_region" in params:
            raise InvalidInput(f"input {name!r}: shared memory inputs are not supported; send 'data' or binary data")
    result = InputSpec(name, datatype, dtype, shape, None, spec.get("data", _MISSING))
    size = params.get("binary_data_size", _MISSING)
    if size is _MISSING and result.data is not _MISSING:
        return result
    _read_payload(i, result, size)
    return result


def _read_payload(i: int, spec: InputSpec, size: object) -> None:
    """Check that `spec` has exactly one of `data` and a binary `size` fitting its shape; set the latter."""
    prefix = f"input {spec.name!r}: "
    if size is _MISSING:
        if spec.data is _MISSING:
            raise InvalidInput(f"{prefix}has neither 'data' nor 'parameters.binary_data_size'")
        return
    if spec.data is not _MISSING:
        raise InvalidInput(f"{prefix}has both 'data' and 'parameters.binary_data_size'; send exactly one")
    if type(size) is not int or size < 0:  # type(): a JSON boolean is no size
        raise wrong(f"inputs[{i}].parameters.binary_data_size", "a non-negative integer", size, prefix)
    need = math.prod(spec.shape) * spec.dtype.itemsize
    if spec.datatype != "BYTES" and size != need:
        raise InvalidInput(f"{prefix}'parameters.binary_data_size' is {size} but {spec.datatype} "
                           f"{list(spec.shape)} needs {need}")
    spec.binary_size, spec.data = size, None


def read_shape(i: int, name: str, shape: object) -> tuple[int, ...]:
    """Check the `shape` of `inputs[i]` (named `name`): an array of non-negative integers that numpy can hold."""
    if type(shape) is list and len(shape) <= MAX_RANK and all(type(d) is int and d >= 0 for d in shape):
        if math.prod(d for d in shape if d) <= MAX_ELEMENTS:
            return tuple(shape)
    path, prefix = f"inputs[{i}].shape", f"input {name!r}: "
    if not isinstance(shape, list):
        raise wrong(path, "an array of non-negative integers", shape, prefix)
    if len(shape) > MAX_RANK:
        raise InvalidInput(f"{prefix}'{path}' has {len(shape)} dimensions; expected at most {MAX_RANK}")
    for j, d in enumerate(shape):
        if type(d) is not int or d < 0:  # type(): a JSON boolean is no dimension
            raise wrong(f"{path}[{j}]", "a non-negative integer", d, prefix)
    raise InvalidInput(f"{prefix}'{path}' {shape} is too large; expected at most {MAX_ELEMENTS} elements")


def read_outputs(specs: object, binary_default: bool) -> list[RequestedOutput] | None:
    """Check the request's `outputs`; None when it asks for all of them."""
    if specs is None or specs == []:  # tritonclient omits the key to mean all outputs; [] reads the same
        return None
    if not isinstance(specs, list):
        raise wrong("outputs", "an array of requested outputs", specs)
    outs: list[RequestedOutput] = []
    names: set[str] = set()
    for i, spec in enumerate(specs):
        path = f"outputs[{i}]"
        if not isinstance(spec, dict):
            raise wrong(path, "an object", spec)
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise wrong(f"{path}.name", "a non-empty string", name)
        prefix = f"requested output {name!r}: "
        if name in names:
            raise InvalidInput(f"{prefix}duplicate output name; request each once")
        params = read_parameters(f"{path}.parameters", spec.get("parameters", {}), prefix)
        binary = params.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise wrong(f"{path}.parameters.binary_data", "true or false", binary, prefix)
        names.add(name)
        outs.append(RequestedOutput(name, binary, params))
    return outs
