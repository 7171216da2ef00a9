"""Shared fixtures: tiny models exported once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hotswap.testing import TinyModels, build_tiny_models

# Tests never reach a model hub: sentence-transformers/transformers load local files only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> TinyModels:
    """The tiny network in every format. With $HOTSWAP_TEST_TINY_CACHE set (`make mutate`, which starts
    thousands of short sessions) it is exported there once and copied into each session's temp folder."""
    cache = os.environ.get("HOTSWAP_TEST_TINY_CACHE")
    if not cache:
        return build_tiny_models(tmp_path_factory.mktemp("tiny"))
    return _cached_tiny_models(Path(cache), tmp_path_factory.mktemp("tiny"))


def _cached_tiny_models(cache: Path, directory: Path) -> TinyModels:
    import shutil

    import numpy as np
    from filelock import FileLock

    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / ".lock")):
        if not (cache / "reference.npz").exists():
            built = build_tiny_models(cache)
            np.savez(cache / "reference.npz", weight=built.weight, bias=built.bias)
    for name in ("tiny.onnx", "tiny.pt", "tiny.pt2"):
        shutil.copyfile(cache / name, directory / name)
    reference = np.load(cache / "reference.npz")
    return TinyModels(directory / "tiny.onnx", directory / "tiny.pt", directory / "tiny.pt2",
                      reference["weight"], reference["bias"])


@pytest.fixture(scope="session")
def minilm_source():
    """builtin:minilm prepared once and cached across runs ($HOTSWAP_TEST_HOME, else .pytest_cache)."""
    from hotswap.models.minilm import prepare

    home = os.environ.get("HOTSWAP_TEST_HOME") or Path(__file__).resolve().parents[1] / ".pytest_cache" / "hotswap_home"
    return prepare(Path(home))


#: The tiny causal LM's vocabulary: its special tokens, then its words (the tokenizer is word-level:
#: one token per whitespace-separated word).
TINY_LLM_VOCAB = {w: i for i, w in enumerate(["<s>", "</s>", "<unk>", "<pad>", "system", "user", "assistant", ":",
                                               *(f"w{i}" for i in range(60))])}


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory) -> Path:
    """A causal-LM folder hotswap generates with, in about a second and offline: a 2-layer Llama with
    random weights (fixed seed), a word-level fast tokenizer and a chat template. Its text is
    gibberish but deterministic; tests/generate checks real text against transformers on SmolLM2."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    folder = tmp_path_factory.mktemp("tiny_llm")
    vocab = TINY_LLM_VOCAB
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    words.decoder = decoders.WordPiece(prefix="##")  # joins the words with spaces
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=words, bos_token="<s>", eos_token="</s>",
                                                     unk_token="<unk>", pad_token="<pad>")
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
                               "{% if add_generation_prompt %}assistant :{% endif %}")
    tokenizer.save_pretrained(folder)
    config = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                      max_position_embeddings=4096, bos_token_id=0, eos_token_id=1, pad_token_id=3)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # special tokens' logits 0, below the best word's: greedy text is all words
        model.lm_head.weight[:4] = 0
    model.save_pretrained(folder, safe_serialization=True)
    return folder
