"""Chain order decides: with two entries that both load, the first one serves.

A folder source holds the tiny network as tiny.onnx, tiny.pt and tiny.pt2, so both the
onnxruntime (CPU) and the torch (cpu) entries can load it here.
"""

from __future__ import annotations

import pytest

from hotswap.backends.onnxruntime_backend import OnnxRuntimeBackend
from hotswap.backends.registry import BackendRegistry
from hotswap.backends.selection import select_backend
from hotswap.backends.torch_backend import TorchBackend
from hotswap.config import ModelConfig
from hotswap.models.sources import resolve_source
from hotswap.testing import TINY_SIGNATURE, TinyModels

REGISTRY = BackendRegistry(available={"torch": TorchBackend, "onnxruntime": OnnxRuntimeBackend})
ORT = {"name": "onnxruntime"}
TORCH = {"name": "torch", "device": "cpu"}


def _model(folder, *chain) -> ModelConfig:
    return ModelConfig(name="tiny", source=str(folder), backends=list(chain),
                       inputs=[s.model_dump() for s in TINY_SIGNATURE.inputs],
                       outputs=[s.model_dump() for s in TINY_SIGNATURE.outputs])


@pytest.mark.parametrize(("chain", "winner", "artifact"), [
    ((ORT, TORCH), OnnxRuntimeBackend, "tiny.onnx"),
    ((TORCH, ORT), TorchBackend, "tiny.pt2"),
])
def test_first_loadable_entry_wins(tiny: TinyModels, chain, winner, artifact):
    """Both entries load here; the one listed first is selected (position 0, nothing skipped),
    and swapping the order swaps the winner."""
    folder = tiny.onnx.parent
    source = resolve_source(str(folder))
    assert {p.name for p in source.artifacts} >= {"tiny.onnx", "tiny.pt2"}
    for entry in chain:  # the premise: each entry loads on its own
        _, alone = select_backend(_model(folder, entry), source, REGISTRY)
        alone.close()
    selection, backend = select_backend(_model(folder, *chain), source, REGISTRY)
    try:
        assert selection.backend_cls is winner and isinstance(backend, winner)
        assert selection.position == 0 and selection.skipped == []
        assert source.artifact_for(winner.formats).name == artifact
        assert backend.describe()["device"] == "cpu"
    finally:
        backend.close()
