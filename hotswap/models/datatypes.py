"""Open Inference Protocol v2 datatypes and their numpy equivalents."""

from __future__ import annotations

import ml_dtypes
import numpy as np

#: v2 datatype name -> numpy dtype. BYTES is an object array of `bytes`; BF16 uses
#: ml_dtypes' bfloat16 (2 bytes on the wire, as Triton sends it).
V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "BYTES": np.dtype(object),
}

NUMPY_TO_V2: dict[np.dtype, str] = {dt: name for name, dt in V2_TO_NUMPY.items()}
# numpy's fixed-width string dtypes also travel as BYTES.
DATATYPES = tuple(V2_TO_NUMPY)


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype for a v2 datatype name; KeyError names the bad value."""
    try:
        return V2_TO_NUMPY[datatype]
    except KeyError:
        raise KeyError(f"unknown datatype {datatype!r}, expected one of {', '.join(DATATYPES)}") from None


def v2_datatype(dtype: np.dtype) -> str:
    """The v2 datatype name of a numpy dtype (str/bytes dtypes map to BYTES)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "SUO":
        return "BYTES"
    try:
        return NUMPY_TO_V2[dtype]
    except KeyError:
        raise KeyError(f"numpy dtype {dtype} has no v2 datatype") from None
