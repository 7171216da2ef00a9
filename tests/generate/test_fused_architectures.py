"""The fused step on decoder architectures other than SmolLM2's Llama: tiny, randomly initialised models
built from transformers' own configs (no weights to download), each checked against plain unpadded
forwards of every sequence on its own, and the load-time check that refuses a model the fused step
would answer wrongly."""

from __future__ import annotations

import pytest
import torch
import transformers

from hotswap.errors import BackendError
from hotswap.generate.fused import fused_forward, use_packed_attention, verify_fused
from hotswap.generate.kvcache import PaddedBatch, left_padded

CONFIGS = {
    "qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config, "gemma": transformers.GemmaConfig,
    "phi3": transformers.Phi3Config, "granite": transformers.GraniteConfig, "olmo2": transformers.Olmo2Config,
    "gpt_neox": transformers.GPTNeoXConfig, "starcoder2": transformers.Starcoder2Config,
    # StableLM's decoder layers do not pass their keyword arguments on to attention: a packed step
    # handed down that way never reached it, and every fused step was silently wrong.
    "stablelm": transformers.StableLmConfig,
}
RUNNING = [list(range(30, 50)), list(range(60, 67))]
NEW = [list(range(100, 113)), list(range(200, 204))]
PAD = 0


def tiny(config_class) -> torch.nn.Module:
    config = config_class(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          pad_token_id=PAD)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_a_fused_step_gives_each_sequence_the_logits_of_its_own_forward(kind):
    model = tiny(CONFIGS[kind])
    device = torch.device("cpu")
    with torch.inference_mode():
        # Plain transformers, one unpadded sequence at a time: what each row must get.
        decode_want = [model(torch.tensor([seq + [11 + i]])).logits[0, -1] for i, seq in enumerate(RUNNING)]
        read_want = [model(torch.tensor([seq])).logits[0, -1] for seq in NEW]
        use_packed_attention(model)
        running = PaddedBatch(model, device)
        running.forward(*left_padded(RUNNING, PAD, device))
        decoded, read = fused_forward(model, running, [11, 12], PaddedBatch(model, device),
                                      *left_padded(NEW, PAD, device))
    assert read is not None
    for got, want in zip([*decoded, *read], [*decode_want, *read_want], strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    verify_fused(model, device, PAD)  # and the load-time check accepts it


def test_a_forward_whose_attention_bypasses_the_packed_step_is_an_error_not_wrong_logits():
    model = tiny(transformers.Qwen2Config)
    device = torch.device("cpu")
    use_packed_attention(model)
    model.set_attn_implementation("sdpa")  # attention no longer goes through hotswap's implementation
    with torch.inference_mode():
        running = PaddedBatch(model, device)
        running.forward(*left_padded(RUNNING, PAD, device))
        with pytest.raises(BackendError, match=r"Qwen2ForCausalLM did not attend through the packed step "
                                               r"\(2 layers cached, 0 attended there\)"):
            fused_forward(model, running, [11, 12], PaddedBatch(model, device), *left_padded(NEW, PAD, device))


def test_sliding_window_models_are_refused_with_the_reason():
    model = tiny(transformers.MistralConfig)
    with pytest.raises(ValueError, match="DynamicSlidingWindowLayer layers; the padded batch supports "
                                         "full-attention"):
        verify_fused(model, torch.device("cpu"), PAD)


def folder_of(model: torch.nn.Module, tokenizer_folder, target) -> str:
    """A local causal-LM folder: the tiny model's safetensors with SmolLM2's tokenizer and chat template."""
    import shutil

    model.save_pretrained(target, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (tokenizer_folder / name).exists():
            shutil.copy(tokenizer_folder / name, target / name)
    return str(target)


def tiny_with_vocab(config_class) -> torch.nn.Module:
    config = config_class(vocab_size=49_152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                          pad_token_id=PAD, tie_word_embeddings=True)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def test_a_local_folder_of_another_architecture_serves_greedy_text_equal_to_generate(folder, tmp_path):
    import httpx

    from hotswap.backends.registry import discover_backends
    from hotswap.config import parse_config
    from hotswap.serve.app import create_app
    from tests.api.api_support import running_server

    model = tiny_with_vocab(transformers.Qwen2Config)
    source = folder_of(model, folder, tmp_path / "qwen2")
    text = "The capital of France is"
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    prompt = tokenizer(text, add_special_tokens=True)["input_ids"]
    with torch.inference_mode():
        ids = torch.tensor([prompt])
        want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                              min_new_tokens=8)[0, len(prompt):].tolist()
    config = {"server": {"model_roots": [str(tmp_path)]},
              "models": [{"name": "q", "source": source, "generation": {}, "backends": [{"name": "torch"}]}]}
    registry = discover_backends()
    with running_server(create_app(parse_config(config, "test", registry), registry)) as server:
        body = {"model": "q", "prompt": text, "max_tokens": 8, "temperature": 0, "ignore_eos": True}
        answer = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        metadata = httpx.get(f"{server.url}/v2/models/q", timeout=30).json()
    assert answer.json()["usage"]["completion_tokens"] == 8
    assert metadata["backend"]["architecture"] == "Qwen2ForCausalLM"
    assert answer.json()["choices"][0]["text"] == tokenizer.decode(want, skip_special_tokens=True)


def test_a_sliding_window_folder_is_skipped_with_its_reason(folder, tmp_path):
    import asyncio

    from hotswap.backends.registry import discover_backends
    from hotswap.config import ModelConfig
    from hotswap.errors import BackendUnavailable
    from hotswap.generate.service import GenerationService
    from hotswap.serve.metrics import Metrics

    source = folder_of(tiny_with_vocab(transformers.MistralConfig), folder, tmp_path / "mistral")
    config = ModelConfig(name="m", source=source, generation={}, backends=[{"name": "torch"}])
    service = GenerationService(config, discover_backends(), Metrics(), None, False)
    with pytest.raises(BackendUnavailable, match=r"no chain entry can generate \(#0 torch: load failed: "
                                                 r"ValueError: this model's cache has DynamicSlidingWindowLayer"):
        asyncio.run(service.start())
