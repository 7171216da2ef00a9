"""Token ids to text, incrementally, with stop strings.

Decoding one token at a time is wrong for byte-level tokenizers (a character may span tokens)
and decoding everything every step is quadratic. `TextStream` keeps two offsets, as TGI and
vLLM do: it decodes a short window and emits only what became final; text ending in U+FFFD (an
incomplete UTF-8 sequence) waits for the next token. Stop strings are searched in the text as
it grows; the tail that could still become a stop string is held back, so a client never sees
part of one.
"""

from __future__ import annotations

from typing import Any


class TextStream:
    """One sequence's generated text, fed a token at a time."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...] = ()) -> None:
        self._tokenizer = tokenizer  # a `tokenizers.Tokenizer`
        self._stop = tuple(s for s in stop if s)
        self._ids: list[int] = []
        self._prefix = 0  # tokens before this are final text
        self._read = 0  # tokens before this have been decoded into `text`
        self.text = ""  # all final text so far (never beyond a stop string)
        self._sent = 0  # characters of `text` handed out
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> None:
        """Add one generated token; sets `stopped` when the text reaches a stop string."""
        self._ids.append(token)
        before = self._decode(self._ids[self._prefix:self._read])
        after = self._decode(self._ids[self._prefix:])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return  # nothing final yet (a special token, or half a character)
        start = max(0, len(self.text) - max((len(s) for s in self._stop), default=0))
        self.text += after[len(before):]
        self._prefix, self._read = self._read, len(self._ids)
        hits = [found for found in (self.text.find(stop, start) for stop in self._stop) if found >= 0]
        if hits:  # the earliest stop string wins
            self.text = self.text[:min(hits)]
            self.stopped = True

    def take(self, final: bool) -> str:
        """Text not handed out yet; unless `final`, minus a tail that may begin a stop string."""
        end = len(self.text)
        if not final and not self.stopped:
            end -= _held_back(self.text, self._stop)
        end = max(end, self._sent)
        piece, self._sent = self.text[self._sent:end], end
        return piece


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest
