"""Open Inference Protocol v2 HTTP codec with Triton's binary tensor extension, as tritonclient.http 2.73 speaks it.

A body is a JSON header, then optionally raw tensor bytes split per tensor by `parameters.binary_data_size`;
the Inference-Header-Content-Length header says where the JSON ends. codec_header checks the header's
fields, codec_tensors decodes the tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson

from hotswap.errors import BackendError, InvalidInput
from hotswap.models.datatypes import v2_datatype
from hotswap.serve.codec_header import InputSpec, RequestedOutput, parse_header, read_header
from hotswap.serve.codec_tensors import binary_tensor, deserialize_bytes_tensor, json_tensor, serialize_bytes_tensor

#: The HTTP headers of an all-JSON answer (shared, never modified).
JSON_HEADERS = {"Content-Type": "application/json"}

__all__ = [
    "InferRequest",
    "RequestedOutput",
    "decode_infer_request",
    "deserialize_bytes_tensor",
    "encode_infer_response",
    "serialize_bytes_tensor",
]


@dataclass(slots=True)
class InferRequest:
    """A decoded request. Binary inputs may be read-only views on the request body."""

    id: str | None
    inputs: dict[str, np.ndarray]  # insertion order = request order
    parameters: dict  # request-level "parameters" (may be {})
    outputs: list[RequestedOutput] | None  # None = all outputs
    binary_output_default: bool  # request parameters.binary_data_output


def decode_infer_request(body: bytes, header_length: int | None) -> InferRequest:
    """Decode a v2 inference request body.

    `header_length` is the Inference-Header-Content-Length header (None: the body is all JSON).
    Raises InvalidInput, naming the field and what was expected, for any malformed body.
    """
    req, header_length = parse_header(body, header_length)
    header = read_header(req)
    decoded: dict[str, np.ndarray] = {}
    binary: list[tuple[InputSpec, int]] = []
    for spec in header.inputs:
        if spec.binary_size is None:
            decoded[spec.name] = json_tensor(spec)
        else:
            binary.append((spec, spec.binary_size))
    decoded |= _binary_tensors(body, header_length, binary)
    inputs = {spec.name: decoded[spec.name] for spec in header.inputs}  # back in request order
    return InferRequest(header.id, inputs, header.parameters, header.outputs, header.binary_output_default)


def _binary_tensors(body: bytes, offset: int, binary: list[tuple[InputSpec, int]]) -> dict[str, np.ndarray]:
    """Slice the bytes after the JSON header, in request order, into the binary inputs."""
    total, remaining = sum(size for _, size in binary), len(body) - offset
    if total != remaining:  # also keeps every slice below inside the body
        hint = "; is the Inference-Header-Content-Length header missing?" if remaining == 0 else ""
        raise InvalidInput(f"binary input sizes add up to {total} bytes but {remaining} bytes follow the JSON "
                           f"header ({'too few' if remaining < total else 'too many'}){hint}")
    tensors: dict[str, np.ndarray] = {}
    for spec, size in binary:
        tensors[spec.name] = binary_tensor(body, offset, size, spec)
        offset += size
    return tensors


def encode_infer_response(
    model: str,
    version: str | None,
    outputs: dict[str, np.ndarray],
    request: InferRequest,
    *,
    parameters: dict | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Encode a v2 inference response to `request`; returns (body, extra HTTP headers).

    Sends the outputs `request.outputs` names (all, in dict order, when None), as binary per
    RequestedOutput.binary, or `request.binary_output_default` when outputs is None. The
    response carries `request.id`, and `version` and `parameters` unless None or empty.
    """
    entries: list[dict] = []
    blobs: list[bytes] = []
    for name, binary in _chosen_outputs(model, outputs, request):
        entry, blob = _encode_output(name, outputs[name], binary)
        entries.append(entry)
        if blob is not None:
            blobs.append(blob)
    resp: dict[str, object] = {"model_name": model}
    if version is not None:
        resp["model_version"] = version
    if request.id is not None:
        resp["id"] = request.id
    if parameters:
        resp["parameters"] = parameters
    resp["outputs"] = entries
    header = orjson.dumps(resp, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, JSON_HEADERS
    return b"".join([header, *blobs]), {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


def _chosen_outputs(model: str, outputs: dict[str, np.ndarray], request: InferRequest) -> list[tuple[str, bool]]:
    """The (name, binary) of each output to send, in response order."""
    if request.outputs is None:
        return [(name, request.binary_output_default) for name in outputs]
    for ro in request.outputs:
        if ro.name not in outputs:
            raise InvalidInput(f"requested output {ro.name!r} is not an output of model {model!r}; "
                               f"expected one of: {', '.join(outputs)}")
    return [(ro.name, ro.binary) for ro in request.outputs]


def _encode_output(name: str, value: np.ndarray, binary: bool) -> tuple[dict, bytes | None]:
    """One output's JSON entry, and its bytes when it goes as binary.

    A BYTES output asked for as JSON whose elements are not all valid UTF-8 goes as binary
    instead: JSON strings cannot carry arbitrary bytes, and tritonclient reads either form.
    JSON has no NaN/Inf; orjson writes them as null (which tritonclient reads back as NaN).
    """
    arr = np.asarray(value)
    if arr.dtype.byteorder == ">":  # the wire is little-endian
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    try:
        datatype = v2_datatype(arr.dtype)
    except KeyError as e:
        raise BackendError(f"output {name!r}: {e.args[0]}") from None
    if not binary:
        if datatype == "BYTES":
            text = _bytes_as_json(arr)
            if text is not None:
                return {"name": name, "datatype": datatype, "shape": list(arr.shape), "data": text}, None
        else:
            # orjson writes a contiguous 1-d array natively; it has no bfloat16, so BF16 goes as exact FP32.
            data = arr.ravel().astype(np.float32) if datatype == "BF16" else np.ascontiguousarray(arr).ravel()
            return {"name": name, "datatype": datatype, "shape": list(arr.shape), "data": data}, None
    blob = serialize_bytes_tensor(arr) if datatype == "BYTES" else np.ascontiguousarray(arr).tobytes()
    return {"name": name, "datatype": datatype, "shape": list(arr.shape),
            "parameters": {"binary_data_size": len(blob)}}, blob


def _bytes_as_json(arr: np.ndarray) -> list[str] | None:
    """BYTES elements as JSON strings, or None when one is not valid UTF-8."""
    try:
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in arr.ravel().tolist()]
    except UnicodeDecodeError:
        return None
