"""TensorSpec and Signature: the InvalidInput messages every backend shares."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from hotswap.errors import InvalidInput
from hotswap.models.signature import Signature, TensorSpec

IDS = TensorSpec(name="input_ids", datatype="INT64", shape=(-1, -1))
MASK = TensorSpec(name="attention_mask", datatype="INT64", shape=(-1, -1))
IMAGE = TensorSpec(name="image", datatype="FP32", shape=(-1, 3, 4, 4))
TEXT = TensorSpec(name="text", datatype="BYTES", shape=(-1,))
OUT = TensorSpec(name="out", datatype="FP32", shape=(-1, 2))

TEXT_SIG = Signature(inputs=(IDS, MASK), outputs=(OUT,))


def ids(batch=2, length=5):
    return np.zeros((batch, length), np.int64)


def test_valid_inputs_pass():
    TEXT_SIG.check_inputs({"input_ids": ids(), "attention_mask": ids()})
    Signature(inputs=(IMAGE,), outputs=(OUT,)).check_inputs({"image": np.zeros((7, 3, 4, 4), np.float32)})


def test_missing_input():
    with pytest.raises(InvalidInput) as info:
        TEXT_SIG.check_inputs({"input_ids": ids()})
    assert str(info.value) == "input 'attention_mask' is missing; expected inputs: input_ids, attention_mask"
    assert info.value.status == 400


def test_unknown_input():
    with pytest.raises(InvalidInput) as info:
        TEXT_SIG.check_inputs({"input_ids": ids(), "attention_mask": ids(), "token_type_ids": ids()})
    assert str(info.value) == ("input 'token_type_ids' is not an input of this model; "
                               "expected input_ids, attention_mask")


def test_unknown_is_reported_before_missing():
    with pytest.raises(InvalidInput, match="input 'input_idz' is not an input of this model"):
        TEXT_SIG.check_inputs({"input_idz": ids(), "attention_mask": ids()})


def test_wrong_dtype():
    with pytest.raises(InvalidInput) as info:
        TEXT_SIG.check_inputs({"input_ids": ids().astype(np.int32), "attention_mask": ids()})
    assert str(info.value) == "input 'input_ids': datatype INT32 does not match the model, expected INT64"


def test_dtype_without_a_v2_name_is_shown_as_numpy():
    spec = TensorSpec(name="x", datatype="FP32", shape=(-1,))
    with pytest.raises(InvalidInput, match="datatype complex64 does not match the model, expected FP32"):
        spec.check(np.zeros(2, np.complex64))


def test_wrong_rank():
    with pytest.raises(InvalidInput) as info:
        TEXT_SIG.check_inputs({"input_ids": np.zeros((2, 5, 1), np.int64), "attention_mask": ids()})
    assert str(info.value) == "input 'input_ids': shape [2, 5, 1] has rank 3, expected rank 2 like [-1, -1]"


def test_wrong_fixed_dim():
    sig = Signature(inputs=(IMAGE,), outputs=(OUT,))
    with pytest.raises(InvalidInput) as info:
        sig.check_inputs({"image": np.zeros((2, 3, 4, 5), np.float32)})
    assert str(info.value) == ("input 'image': shape [2, 3, 4, 5] does not match the model, "
                               "expected [-1, 3, 4, 4] (-1 = any size)")


def test_fixed_batch_dim():
    spec = TensorSpec(name="x", datatype="FP32", shape=(1, 8))
    spec.check(np.zeros((1, 8), np.float32))
    with pytest.raises(InvalidInput, match=r"shape \[2, 8\] does not match the model, expected \[1, 8\]"):
        spec.check(np.zeros((2, 8), np.float32))


def test_inconsistent_batch_dims():
    with pytest.raises(InvalidInput) as info:
        TEXT_SIG.check_inputs({"input_ids": ids(batch=2), "attention_mask": ids(batch=3)})
    assert str(info.value) == "inputs disagree on the batch dimension (dim 0): [2, 3]; expected one size"


def test_non_batch_dims_may_differ_between_inputs():
    TEXT_SIG.check_inputs({"input_ids": ids(length=5), "attention_mask": ids(length=7)})


def test_bytes_accepts_object_and_string_arrays():
    spec = TEXT
    spec.check(np.array([b"a", b"bc"], dtype=object))
    spec.check(np.array([b"a", b"bc"]))  # |S2
    spec.check(np.array(["a", "bc"]))  # <U2
    with pytest.raises(InvalidInput, match="datatype FP32 does not match the model, expected BYTES"):
        spec.check(np.zeros(2, np.float32))


def test_scalar_input_is_a_rank_error():
    spec = TensorSpec(name="x", datatype="FP32", shape=(-1,))
    with pytest.raises(InvalidInput, match="rank 0, expected rank 1"):
        spec.check(np.ones((), np.float32))


def test_spec_validation():
    with pytest.raises(ValidationError, match="expected one of"):
        TensorSpec(name="x", datatype="FLOAT32", shape=(-1,))
    with pytest.raises(ValidationError, match="dimensions must be >= 0, or -1"):
        TensorSpec(name="x", datatype="FP32", shape=(-2, 3))
    with pytest.raises(ValidationError):
        TensorSpec(name="x", datatype="FP32", shape=(1,), extra=1)
    assert TensorSpec(name="x", datatype="FP32", shape=[0, 3]).shape == (0, 3)


def test_example_tensors():
    assert IMAGE.example(batch=2).shape == (2, 3, 4, 4) and IMAGE.example().dtype == np.float32
    assert IDS.example(batch=3, free_dim=7).shape == (3, 7) and IDS.example().dtype == np.int64
    text = TEXT.example(batch=2)
    assert text.dtype == object and list(text) == [b"", b""]
    for spec in (IMAGE, IDS, TEXT):
        spec.check(spec.example())


def test_signature_helpers():
    assert TEXT_SIG.output_names() == ["out"]
    with pytest.raises(ValidationError):
        TEXT_SIG.inputs = ()  # frozen
