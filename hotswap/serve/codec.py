"""Open Inference Protocol v2 HTTP codec with Triton's binary tensor extension, as tritonclient.http 2.73 speaks it.

A body is a JSON header, then optionally raw tensor bytes split per tensor by `parameters.binary_data_size`;
the Inference-Header-Content-Length header says where the JSON ends.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
import orjson

from hotswap.errors import BackendError, InvalidInput
from hotswap.models.datatypes import DATATYPES, V2_TO_NUMPY, v2_datatype

_LEN = struct.Struct("<I")
# numpy kinds of `np.asarray(json_list)` that each target kind accepts ("V" is bfloat16).
# Integer targets take "f" only to recover uint64 values numpy promoted to float64.
_ACCEPTED = {"b": "b", "i": "iuf", "u": "iuf", "f": "iuf", "V": "iuf"}
_WANTED = {"b": "JSON booleans", "i": "JSON integers", "u": "JSON integers", "f": "JSON numbers", "V": "JSON numbers"}
_GOT = {"b": "booleans", "i": "integers", "u": "integers", "f": "floats", "U": "strings"}


@dataclass(slots=True)
class RequestedOutput:
    name: str
    binary: bool  # send this output as binary
    parameters: dict


@dataclass(slots=True)
class InferRequest:
    """A decoded request. Binary inputs may be read-only views on the request body."""

    id: str | None
    inputs: dict[str, np.ndarray]  # insertion order = request order
    parameters: dict  # request-level "parameters" (may be {})
    outputs: list[RequestedOutput] | None  # None = all outputs
    binary_output_default: bool  # request parameters.binary_data_output


def serialize_bytes_tensor(arr: np.ndarray) -> bytes:
    """Serialise a BYTES tensor row-major as 4-byte little-endian length + bytes per element.

    As tritonclient does, `bytes` elements go as they are and anything else as UTF-8 `str(x)`.
    """
    parts: list[bytes] = []
    for v in np.asarray(arr).ravel(order="C").tolist():
        b = v if isinstance(v, bytes) else str(v).encode("utf-8")
        parts += (_LEN.pack(len(b)), b)
    return b"".join(parts)


def deserialize_bytes_tensor(buf: bytes, count: int) -> np.ndarray:
    """Parse exactly `count` length-prefixed elements that fill all of `buf`.

    Returns a 1-D object array of `bytes`. Raises InvalidInput when `buf` is truncated,
    has bytes left over, or holds a different number of elements.
    """
    mv = memoryview(buf)
    size, off = len(mv), 0
    out: list[bytes] = []
    while off < size:
        if len(out) == count:
            raise InvalidInput(f"BYTES data holds more than the {count} elements needed ({size - off} bytes over)")
        if off + 4 > size:
            raise InvalidInput(f"BYTES element {len(out)}: truncated 4-byte length prefix at byte {off}")
        (n,) = _LEN.unpack_from(mv, off)
        off += 4
        if off + n > size:
            raise InvalidInput(f"BYTES element {len(out)}: length prefix says {n} bytes but only {size - off} remain")
        out.append(bytes(mv[off:off + n]))
        off += n
    if len(out) != count:
        raise InvalidInput(f"BYTES data holds {len(out)} elements but the shape needs {count}")
    return np.array(out, dtype=object)


def _fail(name: str, msg: str) -> InvalidInput:
    return InvalidInput(f"input {name!r}: {msg}")


def _flatten_strings(name: str, data: list, out: list[bytes]) -> None:
    for v in data:
        if isinstance(v, str):
            out.append(v.encode("utf-8"))
        elif isinstance(v, list):
            _flatten_strings(name, v, out)
        else:
            raise _fail(name, f"'data' for datatype BYTES must be strings, got {type(v).__name__} {v!r}")


def _json_tensor(name: str, datatype: str, dtype: np.dtype, data: object, shape: tuple[int, ...]) -> np.ndarray:
    """Decode a JSON input's `data` with numpy, rejecting values of the wrong JSON type."""
    want = math.prod(shape)
    if not isinstance(data, list):
        raise _fail(name, f"'data' must be a JSON array, got {type(data).__name__}")
    if datatype == "BYTES":
        flat: list[bytes] = []
        _flatten_strings(name, data, flat)
        if len(flat) != want:
            raise _fail(name, f"'data' has {len(flat)} elements but shape {list(shape)} needs {want}")
        return np.array(flat, dtype=object).reshape(shape)
    try:
        raw = np.asarray(data)  # one C pass that also tells bool/int/float/str apart
    except ValueError:
        raise _fail(name, "'data' is a ragged nested list; nest it evenly or send it flat") from None
    if raw.size != want:
        raise _fail(name, f"'data' has {raw.size} elements but shape {list(shape)} needs {want}")
    if want == 0:
        return np.empty(shape, dtype=dtype)
    if raw.dtype.kind not in _ACCEPTED[dtype.kind]:
        got = _GOT.get(raw.dtype.kind, "nulls, objects or out-of-range integers")
        raise _fail(name, f"'data' for datatype {datatype} must be {_WANTED[dtype.kind]}, got {got}")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if raw.dtype.kind == "f":
            if dtype != np.uint64 or not np.all(np.mod(raw, 1) == 0):
                raise _fail(name, f"'data' for datatype {datatype} must be JSON integers in "
                                  f"[{info.min}, {info.max}], got non-integer or out-of-range numbers")
            try:  # ints >= 2**63 mixed with smaller ones came out as float64; re-read them exactly
                raw = np.asarray(data, dtype=np.uint64)
            except OverflowError:
                raise _fail(name, f"a value is out of range for {datatype} [{info.min}, {info.max}]") from None
        lo, hi = raw.min(), raw.max()
        if lo < info.min or hi > info.max:
            bad = lo if lo < info.min else hi
            raise _fail(name, f"value {bad} is out of range for {datatype} [{info.min}, {info.max}]")
    return raw.astype(dtype, copy=False).reshape(shape)


def _read_input(i: int, spec: object) -> tuple[str, str, np.dtype, tuple[int, ...], dict]:
    """Validate one input's name/shape/datatype/parameters; returns them."""
    if not isinstance(spec, dict):
        raise InvalidInput(f"'inputs[{i}]' must be an object, got {type(spec).__name__}")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"'inputs[{i}].name' must be a non-empty string, got {name!r}")
    for key in ("shape", "datatype"):
        if key not in spec:
            raise _fail(name, f"'{key}' is missing")
    shape = spec["shape"]
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise _fail(name, f"'shape' must be a list of non-negative integers, got {shape!r}")
    datatype = spec["datatype"]
    if datatype not in V2_TO_NUMPY:
        raise _fail(name, f"unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}")
    params = spec.get("parameters", {})
    if not isinstance(params, dict):
        raise _fail(name, f"'parameters' must be an object, got {type(params).__name__}")
    if "shared_memory_region" in params:
        raise _fail(name, "shared memory inputs are not supported; send 'data' or binary data")
    return name, datatype, V2_TO_NUMPY[datatype], tuple(shape), params


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


def decode_infer_request(body: bytes, header_length: int | None) -> InferRequest:
    """Decode a v2 inference request body.

    `header_length` is the Inference-Header-Content-Length header (None: the body is all JSON).
    Raises InvalidInput, naming the field and what was expected, for any malformed body.
    """
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
        raise InvalidInput(f"request JSON must be an object, got {type(req).__name__}")
    req_id = req.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise InvalidInput(f"'id' must be a string, got {type(req_id).__name__}")
    params = req.get("parameters", {})
    if not isinstance(params, dict):
        raise InvalidInput(f"'parameters' must be an object, got {type(params).__name__}")
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise InvalidInput(f"'parameters.binary_data_output' must be true or false, got {binary_default!r}")
    specs = req.get("inputs")
    if not isinstance(specs, list):
        raise InvalidInput(f"'inputs' {'is missing' if specs is None else 'is not a list'}; expected a list of tensors")

    inputs: dict[str, np.ndarray | None] = {}  # None: binary, filled below in request order
    binary: list[tuple[str, str, np.dtype, tuple[int, ...], int]] = []
    for i, spec in enumerate(specs):
        name, datatype, dtype, shape, p = _read_input(i, spec)
        if name in inputs:
            raise _fail(name, "duplicate input name; each input may appear once")
        nbytes = p.get("binary_data_size")
        if nbytes is None:
            if "data" not in spec:
                raise _fail(name, "has neither 'data' nor 'parameters.binary_data_size'")
            inputs[name] = _json_tensor(name, datatype, dtype, spec["data"], shape)
            continue
        if "data" in spec:
            raise _fail(name, "has both 'data' and 'parameters.binary_data_size'; send exactly one")
        if type(nbytes) is not int or nbytes < 0:
            raise _fail(name, f"'parameters.binary_data_size' must be a non-negative integer, got {nbytes!r}")
        need = math.prod(shape) * dtype.itemsize
        if datatype != "BYTES" and nbytes != need:
            raise _fail(name, f"'parameters.binary_data_size' is {nbytes} but {datatype} {list(shape)} needs {need}")
        binary.append((name, datatype, dtype, shape, nbytes))
        inputs[name] = None

    total, remaining = sum(b[-1] for b in binary), size - header_length
    if total != remaining:
        hint = "; is the Inference-Header-Content-Length header missing?" if remaining == 0 else ""
        raise InvalidInput(f"binary input sizes add up to {total} bytes but {remaining} bytes follow the JSON "
                           f"header ({'too few' if remaining < total else 'too many'}){hint}")
    off = header_length
    for name, datatype, dtype, shape, nbytes in binary:
        if datatype == "BYTES":
            try:
                arr = deserialize_bytes_tensor(memoryview(body)[off:off + nbytes], math.prod(shape))
            except InvalidInput as e:
                raise _fail(name, str(e)) from None
        else:
            arr = np.frombuffer(body, dtype=dtype, count=nbytes // dtype.itemsize, offset=off)
            if not arr.flags.aligned:  # the JSON header has any length; kernels want aligned data
                arr = arr.copy()
        inputs[name] = arr.reshape(shape)
        off += nbytes
    outputs = _read_outputs(req.get("outputs"), binary_default)
    return InferRequest(req_id, inputs, params, outputs, binary_default)  # type: ignore[arg-type]


def _read_outputs(specs: object, binary_default: bool) -> list[RequestedOutput] | None:
    if specs is None or specs == []:  # tritonclient omits the key to mean all outputs; [] reads the same
        return None
    if not isinstance(specs, list):
        raise InvalidInput(f"'outputs' must be a list of requested outputs, got {type(specs).__name__}")
    outs: list[RequestedOutput] = []
    for i, spec in enumerate(specs):
        name = spec.get("name") if isinstance(spec, dict) else None
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"'outputs[{i}].name' must be a non-empty string, got {name!r}")
        if any(o.name == name for o in outs):
            raise InvalidInput(f"requested output {name!r}: duplicate output name; request each once")
        p = spec.get("parameters", {})
        binary = p.get("binary_data", binary_default) if isinstance(p, dict) else None
        if not isinstance(binary, bool):
            raise InvalidInput(f"requested output {name!r}: 'parameters' must be an object whose "
                               f"'parameters.binary_data' is true or false")
        outs.append(RequestedOutput(name, binary, p))
    return outs


def encode_infer_response(
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: dict[str, np.ndarray],
    request: InferRequest,
    parameters: dict | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Encode a v2 inference response; returns (body, extra HTTP headers).

    Sends the outputs `request.outputs` names (all, in dict order, when None), as binary per
    RequestedOutput.binary, or `request.binary_output_default` when outputs is None. A BYTES
    output asked for as JSON whose elements are not all valid UTF-8 goes as binary instead:
    JSON strings cannot carry arbitrary bytes, and tritonclient reads either form. JSON has
    no NaN/Inf; orjson writes them as null (which tritonclient reads back as NaN).
    """
    if request.outputs is None:
        chosen = [(name, request.binary_output_default) for name in outputs]
    else:
        for ro in request.outputs:
            if ro.name not in outputs:
                raise InvalidInput(f"requested output {ro.name!r} is not an output of model {model_name!r}; "
                                   f"expected one of: {', '.join(outputs)}")
        chosen = [(ro.name, ro.binary) for ro in request.outputs]

    entries: list[dict] = []
    blobs: list[bytes] = []
    for name, binary in chosen:
        arr = np.asarray(outputs[name])
        if arr.dtype.byteorder == ">":  # the wire is little-endian
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        try:
            datatype = v2_datatype(arr.dtype)
        except KeyError as e:
            raise BackendError(f"output {name!r}: {e.args[0]}") from None
        entry: dict = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if not binary:
            if datatype == "BYTES":
                entry["data"] = _bytes_as_json(arr)
                binary = entry["data"] is None
            elif datatype == "BF16":
                entry["data"] = arr.ravel().astype(np.float32)  # exact; orjson has no bfloat16
            else:
                entry["data"] = np.ascontiguousarray(arr).ravel()  # orjson writes this natively
        if binary:
            blob = serialize_bytes_tensor(arr) if datatype == "BYTES" else np.ascontiguousarray(arr).tobytes()
            entry.pop("data", None)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        entries.append(entry)

    resp = {"model_name": model_name, "model_version": model_version, "id": request_id, "parameters": parameters}
    resp = {k: v for k, v in resp.items() if v is not None and v != {}} | {"outputs": entries}
    header = orjson.dumps(resp, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, {"Content-Type": "application/json"}
    return b"".join([header, *blobs]), {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


def _bytes_as_json(arr: np.ndarray) -> list[str] | None:
    """BYTES elements as JSON strings, or None when one is not valid UTF-8."""
    try:
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in arr.ravel().tolist()]
    except UnicodeDecodeError:
        return None
