"""Tensor specs and model signatures: what a model takes and gives."""

from __future__ import annotations

from functools import cached_property

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hotswap.errors import InvalidInput
from hotswap.models.datatypes import DATATYPES, numpy_dtype, v2_datatype

Tensors = dict[str, np.ndarray]


class TensorSpec(BaseModel):
    """One named tensor: v2 datatype and shape, where -1 is a variable dimension."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Tensor name as clients send it.")
    datatype: str = Field(description="v2 datatype: FP32, INT64, BYTES, ...")
    shape: tuple[int, ...] = Field(description="Dimensions including the batch dim; -1 = any size.")

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, value: str) -> str:
        if value not in DATATYPES:
            raise ValueError(f"expected one of {', '.join(DATATYPES)}")
        return value

    @field_validator("shape")
    @classmethod
    def _valid_dims(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(d < -1 for d in value):
            raise ValueError("dimensions must be >= 0, or -1 for a variable size")
        return value

    @property
    def dtype(self) -> np.dtype:
        return numpy_dtype(self.datatype)

    def example(self, batch: int = 1, free_dim: int = 4) -> np.ndarray:
        """A zero tensor matching this spec; -1 dims become `batch` (dim 0) or `free_dim`."""
        shape = [batch if i == 0 and d == -1 else (free_dim if d == -1 else d) for i, d in enumerate(self.shape)]
        if self.datatype == "BYTES":
            return np.full(shape, b"", dtype=object)
        return np.zeros(shape, dtype=self.dtype)

    def check(self, array: np.ndarray) -> None:
        """Raise InvalidInput unless `array` has this spec's datatype, rank and fixed dims."""
        if array.dtype != self.dtype and not (self.datatype == "BYTES" and array.dtype.kind in "SUO"):
            raise InvalidInput(
                f"input '{self.name}': datatype {_v2_name(array.dtype)} does not match the model, "
                f"expected {self.datatype}"
            )
        if array.ndim != len(self.shape):
            raise InvalidInput(
                f"input '{self.name}': shape {list(array.shape)} has rank {array.ndim}, "
                f"expected rank {len(self.shape)} like {list(self.shape)}"
            )
        for got, want in zip(array.shape, self.shape):
            if want != -1 and got != want:
                raise InvalidInput(
                    f"input '{self.name}': shape {list(array.shape)} does not match the model, "
                    f"expected {list(self.shape)} (-1 = any size)"
                )


def _v2_name(dtype: np.dtype) -> str:
    try:
        return v2_datatype(dtype)
    except KeyError:
        return str(dtype)


class Signature(BaseModel):
    """The inputs a model takes and the outputs it gives, in order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @cached_property
    def _inputs_by_name(self) -> dict[str, TensorSpec]:
        return {spec.name: spec for spec in self.inputs}  # built once, read per request

    def check_inputs(self, inputs: Tensors) -> None:
        """Raise InvalidInput naming the first missing, unknown or mismatched input."""
        expected = self._inputs_by_name
        for name in inputs:
            if name not in expected:
                raise InvalidInput(f"input '{name}' is not an input of this model; expected {', '.join(expected)}")
        for name, spec in expected.items():
            if name not in inputs:
                raise InvalidInput(f"input '{name}' is missing; expected inputs: {', '.join(expected)}")
            spec.check(inputs[name])
        if len(self.inputs) > 1:
            batch_sizes = {inputs[name].shape[0] for name in expected if inputs[name].ndim}
            if len(batch_sizes) > 1:
                raise InvalidInput(
                    f"inputs disagree on the batch dimension (dim 0): {sorted(batch_sizes)}; expected one size"
                )

    def mismatch(self, declared: Signature, artifact_name: str) -> str | None:
        """Why `declared` (from config) disagrees with this signature (from the artifact), or None.

        Names, datatypes and ranks must agree; dims may differ (the config may be stricter).
        """
        for kind in ("inputs", "outputs"):
            have = {s.name: s for s in getattr(self, kind)}
            for spec in getattr(declared, kind):
                real = have.get(spec.name)
                if real is None:
                    return f"declared {kind[:-1]} '{spec.name}' is not in {artifact_name}; it has {', '.join(have)}"
                if real.datatype != spec.datatype or len(real.shape) != len(spec.shape):
                    return (f"declared {kind[:-1]} '{spec.name}' is {spec.datatype}{list(spec.shape)} but "
                            f"{artifact_name} has {real.datatype}{list(real.shape)}")
        return None

    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]
