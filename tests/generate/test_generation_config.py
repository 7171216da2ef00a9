"""The `generation:` section: what a config may say, and which chains can generate."""

from __future__ import annotations

from pathlib import Path

import pytest

from hotswap.config import parse_config
from hotswap.errors import ConfigError


def model(**fields) -> dict:
    return {"models": [{"name": "chat", "source": "builtin:smollm2", "generation": {},
                        "backends": [{"name": "torch", "device": "cpu"}], **fields}]}


def test_a_chain_without_torch_cannot_generate():
    with pytest.raises(ConfigError, match="generation runs only on the torch backend.*onnxruntime"):
        parse_config(model(backends=[{"name": "onnxruntime"}]))


def test_generation_takes_no_processor_and_no_failover():
    with pytest.raises(ConfigError, match="no `inputs`, `outputs` or `processor`"):
        parse_config(model(processor={"name": "text-embedding"}))
    with pytest.raises(ConfigError, match="failover"):
        parse_config(model(failover={}))


@pytest.mark.parametrize(("knob", "value"), [("max_sequences", 0), ("max_sequences", 257), ("max_kv_tokens", 2**23),
                                             ("max_tokens_limit", 0), ("prefill_chunk_tokens", 8), ("bogus", 1)])
def test_every_knob_is_bounded(knob, value):
    with pytest.raises(ConfigError, match=f"generation.{knob}"):
        parse_config(model(generation={knob: value}))


def test_default_max_tokens_within_the_limit():
    with pytest.raises(ConfigError, match="max_tokens_default"):
        parse_config(model(generation={"max_tokens_default": 600, "max_tokens_limit": 500}))
    config = parse_config(model(generation={"max_sequences": 8}))
    assert config.models[0].generation.max_sequences == 8


def test_a_local_folder_outside_model_roots_is_refused(folder, tmp_path):
    from hotswap.serve.app import create_app

    config = parse_config({"server": {"model_roots": [str(tmp_path)]}, **model(source=str(folder))})
    with pytest.raises(ConfigError, match="outside server.model_roots"):
        create_app(config)


@pytest.mark.parametrize(("name", "device"), [("cpu", "cpu"), ("cuda", "cuda:0"), ("ascend", "npu:0")])
def test_example_configs_generate_on_their_device(name, device):
    from hotswap.backends.registry import discover_backends
    from hotswap.backends.torch_backend import TorchBackend, TorchOptions
    from hotswap.config import load_config

    config = load_config(Path(__file__).resolve().parents[2] / "examples" / f"generate-{name}.yaml",
                         discover_backends())
    model = config.models[0]
    assert model.generation is not None and model.backends[0].options["device"] == device
    if device != "cpu":  # here without the device: the entry would be skipped with the probe's reason
        import torch

        reason = TorchBackend.probe(TorchOptions(device=device))
        assert reason is not None or (device.startswith("cuda") and torch.cuda.is_available())


def test_a_folder_must_be_a_causal_lm_with_safetensors_and_a_tokenizer(folder, tmp_path):
    import json
    import shutil

    from hotswap.generate.model import check_folder, resolve_folder

    assert resolve_folder(str(folder), None) == folder
    copy = tmp_path / "model"
    copy.mkdir()
    shutil.copy(folder / "config.json", copy / "config.json")
    with pytest.raises(ConfigError, match="no .safetensors"):
        check_folder(copy)
    (copy / "model.safetensors").symlink_to(folder / "model.safetensors")
    with pytest.raises(ConfigError, match="tokenizer.json"):
        check_folder(copy)
    (copy / "tokenizer.json").symlink_to(folder / "tokenizer.json")
    check_folder(copy)
    (copy / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(ConfigError, match="not a causal LM"):
        check_folder(copy)
    with pytest.raises(ConfigError, match="cannot generate"):
        resolve_folder("builtin:minilm", None)
