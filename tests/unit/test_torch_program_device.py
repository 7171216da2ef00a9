"""An exported program's own tensors follow it to the device (seen failing on an H200: MiniLM's
position ids stayed on the CPU and every request failed with a device mismatch)."""

from __future__ import annotations

import torch

from hotswap.backends.torch_backend import _module_on


class MakesItsOwnTensor(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.arange(x.shape[1], device=x.device)  # exported on CPU: names device=cpu


def _devices_named(graph: torch.fx.Graph) -> set[str]:
    return {str(node.kwargs["device"]) for node in graph.nodes if "device" in node.kwargs}


def test_tensors_the_graph_creates_move_with_the_weights():
    program = torch.export.export(MakesItsOwnTensor(), (torch.ones(2, 3),))
    assert _devices_named(program.graph) == {"cpu"}  # what the backend is given
    module = _module_on(program, torch.device("meta"))
    assert _devices_named(module.graph) == {"meta"}
    assert module(torch.ones(2, 3, device="meta")).device.type == "meta"


def test_on_its_own_device_the_program_still_computes():
    program = torch.export.export(MakesItsOwnTensor(), (torch.ones(2, 3),))
    out = _module_on(program, torch.device("cpu"))(torch.zeros(2, 3))
    assert out.tolist() == [[0.0, 1.0, 2.0]] * 2
