"""Model files are code: a source outside `server.model_roots` is never opened.

The test artifact is the tiny network's torch.export archive with one weight re-packed as a
pickle whose unpickling also opens (creates) a marker file: torch.export.load runs it, and
the model still computes the right answer, so nothing would look wrong to the operator.
"""

from __future__ import annotations

import builtins
import io
import json
import operator
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from api_support import TINY_IO, LiveServer, infer_tiny, running_server, tiny_input
from security_support import serve, triton_error

from hotswap.config import parse_config
from hotswap.errors import ConfigError
from hotswap.serve.app import create_app


class _Touch:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), "a")


class _Armed:
    """Unpickles to `tensor`, opening `marker` on the way: (open(marker), tensor)[1]."""

    def __init__(self, marker: Path, tensor) -> None:
        self.marker, self.tensor = marker, tensor

    def __reduce__(self):
        return operator.getitem, ((_Touch(self.marker), self.tensor), 1)


def arm(clean: Path, armed: Path, marker: Path) -> Path:
    """Copy the .pt2 archive `clean` to `armed`, its `linear.bias` weight now a pickle that opens `marker`."""
    import torch

    bias = torch.export.load(str(clean)).state_dict["linear.bias"]
    payload = io.BytesIO()
    torch.save(_Armed(marker, bias), payload)
    armed.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(clean) as src, zipfile.ZipFile(armed, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("weights/model_weights_config.json"):
                config = json.loads(data)
                config["config"]["linear.bias"]["use_pickle"] = True
                data = json.dumps(config).encode()
            elif info.filename.endswith("weights/weight_1"):
                data = payload.getvalue()
            dst.writestr(info, data)
    return armed


@pytest.fixture(scope="module")
def places(tmp_path_factory, tiny) -> dict[str, Path]:
    """A trusted folder (the only model root) holding the clean tiny.pt2, and an untrusted one with the armed copy."""
    trusted, untrusted = tmp_path_factory.mktemp("trusted"), tmp_path_factory.mktemp("untrusted")
    (trusted / "tiny.pt2").write_bytes(tiny.exported.read_bytes())
    marker = untrusted / "MARKER"
    return {"trusted": trusted, "untrusted": untrusted, "marker": marker,
            "armed": arm(tiny.exported, untrusted / "evil.pt2", marker)}


def torch_model(name: str, source: str) -> dict:
    return {"name": name, "source": source, "backends": [{"name": "torch", "device": "cpu"}], **TINY_IO}


def test_the_armed_file_really_runs_code_when_torch_loads_it(tiny, tmp_path):
    """Control for the tests below: torch.export.load opens the marker and still computes the right answer."""
    import torch

    marker = tmp_path / "MARKER"
    program = torch.export.load(str(arm(tiny.exported, tmp_path / "evil.pt2", marker)))
    assert marker.exists()
    x = tiny_input(2)
    y = program.module()(torch.from_numpy(x))[0].detach().numpy()
    np.testing.assert_allclose(y, tiny.reference({"x": x})["y"], atol=1e-5, rtol=0)


def try_to_serve(registry, server: dict, source: str, config_dir: Path | None) -> ConfigError | None:
    """create_app's refusal, or None after serving the model (loading its file) if it was accepted."""
    config = parse_config({"server": server, "models": [torch_model("evil", source)]}, "test", registry)
    try:
        app = create_app(config, registry, config_dir=config_dir)
    except ConfigError as exc:
        return exc
    with running_server(app):
        return None


def test_create_app_refuses_a_source_outside_the_roots(registry, places):
    """An absolute path outside server.model_roots: ConfigError naming models.0.source and the roots; no code ran."""
    error = try_to_serve(registry, {"model_roots": [str(places["trusted"])]}, str(places["armed"]), None)
    assert not places["marker"].exists(), "the model file was loaded"
    assert error is not None
    assert "models.0.source" in str(error) and "server.model_roots" in str(error)
    assert str(places["trusted"]) in str(error)


def test_the_default_roots_are_the_config_folder_and_cache(registry, places):
    """Without model_roots, a file beside the config loads and the armed one elsewhere is refused."""
    assert try_to_serve(registry, {}, "tiny.pt2", places["trusted"]) is None
    error = try_to_serve(registry, {}, str(places["armed"]), places["trusted"])
    assert not places["marker"].exists(), "the model file was loaded"
    assert error is not None and "models.0.source" in str(error)


def test_relative_and_symlinked_paths_cannot_leave_the_roots(registry, places):
    """`../untrusted/evil.pt2` and a symlink inside the root pointing out are both refused: paths are resolved."""
    link = places["trusted"] / "link.pt2"
    link.unlink(missing_ok=True)
    link.symlink_to(places["armed"])
    server = {"model_roots": [str(places["trusted"])]}
    for source in (f"../{places['untrusted'].name}/evil.pt2", "link.pt2"):
        error = try_to_serve(registry, server, source, places["trusted"])
        assert not places["marker"].exists(), f"{source}: the model file was loaded"
        assert error is not None and "models.0.source" in str(error), source


def test_a_folder_source_with_a_symlink_out_is_refused(registry, places, tmp_path_factory):
    """A folder inside the root is checked file by file: one artifact linking out refuses the whole source."""
    folder = places["trusted"] / "folder"
    folder.mkdir(exist_ok=True)
    (folder / "model.pt2").unlink(missing_ok=True)
    (folder / "model.pt2").symlink_to(places["armed"])
    error = try_to_serve(registry, {"model_roots": [str(places["trusted"])]}, str(folder), None)
    assert not places["marker"].exists(), "the model file was loaded"
    assert error is not None and "models.0.source" in str(error)


@pytest.fixture(scope="module")
def trusted_server(registry, places) -> Iterator[LiveServer]:
    """Serves the clean tiny.pt2 from the trusted root, with the repository API on."""
    server = {"model_control": "explicit", "model_roots": [str(places["trusted"])]}
    with serve(registry, server, [torch_model("tiny", str(places["trusted"] / "tiny.pt2"))]) as live:
        yield live


def test_a_load_override_pointing_at_the_file_is_400(trusted_server, places, tiny):
    """A run-time load naming the armed file as source is 400 and the file is never opened."""
    client = trusted_server.client()
    with triton_error(400, "cannot change source"):
        client.load_model("tiny", config=json.dumps({"source": str(places["armed"])}))
    client.load_model("tiny", config=json.dumps({"instances": 1}))  # a reload that is allowed
    assert not places["marker"].exists(), "the model file was loaded"
    x = tiny_input(2, seed=9)
    np.testing.assert_allclose(infer_tiny(client, "tiny", x).as_numpy("y"), tiny.reference({"x": x})["y"],
                               atol=1e-5, rtol=0)
