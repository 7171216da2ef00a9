"""Test plugin backend `dummy`: numpy, CPU only, serves x FP32[-1, -1] -> y = x * 2.

Any file with the suffix `.dummy` is a loadable artifact; its content is ignored.
"""

from __future__ import annotations

from pathlib import Path

from hotswap.backends.base import Backend, BackendOptions
from hotswap.models.signature import Signature, Tensors, TensorSpec

SIGNATURE = Signature(inputs=(TensorSpec(name="x", datatype="FP32", shape=(-1, -1)),),
                      outputs=(TensorSpec(name="y", datatype="FP32", shape=(-1, -1)),))


class DummyBackend(Backend[BackendOptions]):
    """A CPU-only numpy backend that doubles its input."""

    name = "dummy"
    Options = BackendOptions
    formats = (".dummy",)

    def __init__(self) -> None:
        self._loaded = False

    @classmethod
    def version(cls) -> str:
        return "dummy 0.1.0"

    @classmethod
    def probe(cls, options: BackendOptions) -> str | None:
        return None

    def _load(self, artifact: Path, options: BackendOptions, declared: Signature | None) -> Signature:
        self._loaded = True
        return SIGNATURE

    def run(self, inputs: Tensors) -> Tensors:
        return {"y": inputs["x"] * 2}

    def describe(self) -> dict[str, str]:
        return {"device": "cpu", "precision": "as given", "runtime": self.version()}

    def close(self) -> None:
        self._loaded = False
