"""server.model_roots, pinned by mutants (`make mutate`, docs/TESTING.md): the default roots (the config's
folder and the cache), a model file outside them refused whole, relative, `builtin:`, `hf:` and folder
sources (a symlink out of a root), and a relative source loading from the config's folder."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from hotswap.backends.registry import discover_backends
from hotswap.errors import ConfigError
from hotswap.models.sources import hotswap_home
from hotswap.serve.metrics import Metrics
from hotswap.serve.repository import ModelRepository, model_roots
from tests.unit import mutants_repository_support as support
from tests.unit.mutants_repository_support import X, _config, _roots_config

registry = support.registry  # the backends' registry, with the gated and failing test backends


def test_model_roots_default_to_the_config_folder_and_the_cache(tiny, registry, tmp_path):
    config = _config(tiny, registry)
    assert model_roots(config, None) == [Path(tiny.onnx).parent.resolve()]
    config.server.model_roots = None
    assert model_roots(config, tmp_path) == [tmp_path.resolve(), hotswap_home().resolve()]
    assert model_roots(config, None) == [Path.cwd().resolve(), hotswap_home().resolve()]


def test_a_model_file_outside_the_roots_is_refused_whole(tiny, registry, tmp_path):
    config = _config(tiny, registry)
    config.server.model_roots = [tmp_path]
    with pytest.raises(ConfigError) as info:
        ModelRepository(config, registry, Metrics())
    assert str(info.value) == (
        f"models.0.source: {tiny.onnx} lies outside server.model_roots ({tmp_path.resolve()}); model files are "
        "code, add its folder to server.model_roots if it is trusted")


def _refused(config, config_dir: Path | None = None) -> str | None:
    try:
        ModelRepository(config, discover_backends(), Metrics(), config_dir)
    except ConfigError as exc:
        return str(exc)
    return None


def test_model_roots_check_relative_builtin_and_hf_sources(tiny, registry, tmp_path):
    folder = Path(tiny.onnx).parent
    relative = {"name": "rel", "source": Path(tiny.onnx).name, "backends": [{"name": "onnxruntime"}]}
    builtin = {"name": "gen", "source": "builtin:smollm2", "backends": [{"name": "torch"}], "generation": {}}
    hf = {"name": "hf", "source": f"hf:{tiny.onnx}", "backends": [{"name": "onnxruntime"}]}
    outside = {"name": "out", "source": str(tmp_path / "x.onnx"), "backends": [{"name": "onnxruntime"}]}
    (tmp_path / "x.onnx").write_bytes(Path(tiny.onnx).read_bytes())
    # Relative sources are read from the config's folder, which is also a default root.
    assert _refused(_roots_config(tiny, registry, None, relative), folder) is None
    assert _refused(_roots_config(tiny, registry, [folder], relative), folder) is None
    assert _refused(_roots_config(tiny, registry, [folder], builtin, hf)) is None
    second = tmp_path / "other-root"
    assert _refused(_roots_config(tiny, registry, [folder, second], builtin, outside)) == (
        f"models.1.source: {tmp_path / 'x.onnx'} lies outside server.model_roots ({folder.resolve()}, "
        f"{second.resolve()}); model files are code, add its folder to server.model_roots if it is trusted")


def test_a_folder_source_has_each_artifact_checked(tiny, registry, tmp_path):
    """A symlinked model file inside a root that points out of it is refused."""
    root = tmp_path / "root"
    (root / "model").mkdir(parents=True)
    (root / "model" / "tiny.onnx").symlink_to(tiny.onnx)
    (root / "model" / "notes.txt").symlink_to(tmp_path)
    folder_model = {"name": "folder", "source": str(root / "model"), "backends": [{"name": "onnxruntime"}]}
    message = _refused(_roots_config(tiny, registry, [root], folder_model))
    assert message is not None and message.startswith(f"models.0.source: {root / 'model'} lies outside")
    (root / "model" / "tiny.onnx").unlink()
    assert _refused(_roots_config(tiny, registry, [root], folder_model)) is None


def test_a_relative_source_loads_from_the_config_s_folder(tiny, registry):
    relative = {"name": "rel", "source": Path(tiny.onnx).name, "backends": [{"name": "onnxruntime"}]}
    config = _roots_config(tiny, registry, None, relative)

    async def go():
        repo = ModelRepository(config, registry, Metrics(), Path(tiny.onnx).parent)
        await repo.load_all()
        try:
            return await repo.ready_runner("rel").infer({"x": X}, None)
        finally:
            await repo.close()

    np.testing.assert_allclose(asyncio.run(go())["y"], tiny.reference({"x": X})["y"], rtol=0, atol=1e-5)
