"""Incremental detokenising and stop strings, with SmolLM2's own tokenizer."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from hotswap.generate.text import TextStream


@pytest.fixture(scope="module")
def tokenizer(folder) -> Tokenizer:
    return Tokenizer.from_file(str(folder / "tokenizer.json"))


def feed(stream: TextStream, ids: list[int]) -> list[str]:
    pieces = []
    for token in ids:
        stream.push(token)
        pieces.append(stream.take(final=False))
        if stream.stopped:
            break
    pieces.append(stream.take(final=True))
    return pieces


def test_pieces_add_up_to_the_whole_decode_and_never_split_a_character(tokenizer):
    text = "Größe, café, 日本語 and emoji 🙂 too."
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    pieces = feed(TextStream(tokenizer), ids)
    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert not any("\ufffd" in piece for piece in pieces)
    assert len([p for p in pieces if p]) > 5  # streamed, not all at the end


def test_a_stop_string_across_tokens_is_never_shown(tokenizer):
    ids = tokenizer.encode("The capital of France is Paris. It is big.", add_special_tokens=False).ids
    pieces = feed(TextStream(tokenizer, ("s Paris", "zzz")), ids)
    assert "".join(pieces) == "The capital of France i"
    assert not any("Par" in piece for piece in pieces)


def test_the_earliest_of_several_stop_strings_wins(tokenizer):
    ids = tokenizer.encode("one, two; three", add_special_tokens=False).ids
    stream = TextStream(tokenizer, (";", ","))
    assert "".join(feed(stream, ids)) == "one" and stream.stopped


def test_special_tokens_add_no_text(tokenizer):
    eos = tokenizer.token_to_id("<|im_end|>")
    stream = TextStream(tokenizer)
    assert feed(stream, [eos]) == ["", ""]
