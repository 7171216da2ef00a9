"""Tensor payloads of a v2 request: JSON `data`, and the raw bytes of Triton's binary tensor extension."""

from __future__ import annotations

import math
import struct

import numpy as np

from hotswap.errors import InvalidInput
from hotswap.serve.codec_header import InputSpec, json_type

_LEN = struct.Struct("<I")
# numpy kinds of `np.asarray(json_list)` that each target kind accepts ("V" is bfloat16).
# Integer targets take "f" only to recover uint64 values numpy promoted to float64.
_ACCEPTED = {"b": "b", "i": "iuf", "u": "iuf", "f": "iuf", "V": "iuf"}
_WANTED = {"b": "JSON booleans", "i": "JSON integers", "u": "JSON integers", "f": "JSON numbers", "V": "JSON numbers"}
_GOT = {"b": "booleans", "i": "integers", "u": "integers", "f": "floats", "U": "strings"}


def serialize_bytes_tensor(arr: np.ndarray) -> bytes:
    """Serialise a BYTES tensor row-major as 4-byte little-endian length + bytes per element.

    As tritonclient does, `bytes` elements go as they are and anything else as UTF-8 `str(x)`.
    """
    parts: list[bytes] = []
    for v in np.asarray(arr).ravel(order="C").tolist():
        b = v if isinstance(v, bytes) else str(v).encode("utf-8")
        parts += (_LEN.pack(len(b)), b)
    return b"".join(parts)


def deserialize_bytes_tensor(buf: bytes | memoryview, count: int) -> np.ndarray:
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


def binary_tensor(body: bytes, offset: int, size: int, spec: InputSpec) -> np.ndarray:
    """The tensor of binary input `spec` from the `size` bytes at `offset` in `body`.

    The caller has checked that the slice lies inside `body` and, but for BYTES, fits the shape.
    """
    if spec.datatype == "BYTES":
        try:
            arr = deserialize_bytes_tensor(memoryview(body)[offset:offset + size], math.prod(spec.shape))
        except InvalidInput as e:
            raise _fail(spec.name, str(e)) from None
    else:
        arr = np.frombuffer(body, dtype=spec.dtype, count=size // spec.dtype.itemsize, offset=offset)
        if not arr.flags.aligned:  # the JSON header has any length; kernels want aligned data
            arr = arr.copy()
    return arr.reshape(spec.shape)


def json_tensor(spec: InputSpec) -> np.ndarray:
    """Decode an input's JSON `data`, flat or nested no deeper than its shape, rejecting wrong JSON types."""
    name, shape, data = spec.name, spec.shape, spec.data
    if not isinstance(data, list):
        raise _fail(name, f"'data' must be a JSON array, got {json_type(data)}")
    want = math.prod(shape)
    if spec.datatype == "BYTES":
        flat = _flatten_strings(name, data, shape)
        if len(flat) != want:
            raise _fail(name, f"'data' has {len(flat)} elements but shape {list(shape)} needs {want}")
        return np.array(flat, dtype=object).reshape(shape)
    if _nesting(data, _levels(shape)) > _levels(shape):
        raise _too_deep(name, shape)
    return _numeric_tensor(spec, want)


def _levels(shape: tuple[int, ...]) -> int:
    """How deep `data` may nest: one array level per dimension, and flat data is always allowed."""
    return max(len(shape), 1)


def _too_deep(name: str, shape: tuple[int, ...]) -> InvalidInput:
    return _fail(name, f"'data' is nested deeper than shape {list(shape)} allows ({_levels(shape)} levels of "
                       f"arrays); nest it as the shape or send it flat")


def _nesting(data: list, limit: int) -> int:
    """How deep `data` nests along its first elements, counting no further than `limit` + 1.

    numpy finds ragged data on its own; this only keeps it from being handed deeper data."""
    depth = 0
    value: object = data
    while isinstance(value, list) and depth <= limit:
        depth += 1
        value = value[0] if value else None
    return depth


def _flatten_strings(name: str, data: list, shape: tuple[int, ...]) -> list[bytes]:
    """BYTES `data` flattened row-major, with an explicit stack: recursion would overflow on deep data."""
    out: list[bytes] = []
    levels = _levels(shape)
    stack = [iter(data)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, str):
                out.append(v.encode("utf-8"))
            elif isinstance(v, list):
                if len(stack) == levels:
                    raise _too_deep(name, shape)
                stack.append(iter(v))
                break  # go on with the inner array, then come back to this one
            else:
                raise _fail(name, f"'data' for datatype BYTES must be strings, got {json_type(v)}")
        else:
            stack.pop()
    return out


def _numeric_tensor(spec: InputSpec, want: int) -> np.ndarray:
    """Decode non-BYTES JSON `data` with numpy, rejecting values of the wrong JSON type."""
    name, datatype, dtype, shape = spec.name, spec.datatype, spec.dtype, spec.shape
    try:
        raw = np.asarray(spec.data)  # one C pass that also tells bool/int/float/str apart
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
        raw = _checked_integers(spec, raw)
    return raw.astype(dtype, copy=False).reshape(shape)


def _checked_integers(spec: InputSpec, raw: np.ndarray) -> np.ndarray:
    """`raw` if all its values are integers in the range of `spec.dtype`; raises InvalidInput otherwise."""
    name, datatype, dtype = spec.name, spec.datatype, spec.dtype
    info = np.iinfo(dtype)
    if raw.dtype.kind == "f":
        if dtype != np.uint64 or not np.all(np.mod(raw, 1) == 0):
            raise _fail(name, f"'data' for datatype {datatype} must be JSON integers in "
                              f"[{info.min}, {info.max}], got non-integer or out-of-range numbers")
        try:  # ints >= 2**63 mixed with smaller ones came out as float64; re-read them exactly
            raw = np.asarray(spec.data, dtype=np.uint64)
        except OverflowError:
            raise _fail(name, f"a value is out of range for {datatype} [{info.min}, {info.max}]") from None
    lo, hi = raw.min(), raw.max()
    if lo < info.min or hi > info.max:
        bad = lo if lo < info.min else hi
        raise _fail(name, f"value {bad} is out of range for {datatype} [{info.min}, {info.max}]")
    return raw
