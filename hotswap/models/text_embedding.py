"""The `text-embedding` processor: UTF-8 text in, a pooled sentence embedding out.

    text       BYTES [-1]      -> tokenizer -> input_ids, attention_mask, token_type_ids INT64 [B, S]
    backend    token embeddings FP32 [B, S, H]
    embedding  FP32 [-1, H]    <- mean, CLS or last-token pooling over the attention mask, then L2 norm

With the defaults this is exactly sentence-transformers' all-MiniLM-L6-v2 pipeline
(truncate at 256 tokens, mean pooling, normalise). A batch is tokenised once and padded to
its longest row, so short texts batched together stay cheap. The tokenizer spreads a batch
over its own thread pool, except for an instance that owns one core (`own_core`, set where the
runner pinned the instances: serve/placement.py), which tokenises on its own thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field
from tokenizers import Encoding, Tokenizer

from hotswap.config import ProcessorConfig
from hotswap.errors import BackendError, ConfigError, InvalidInput
from hotswap.models.processing import Processor, ProcessorOptions
from hotswap.models.signature import Signature, Tensors, TensorSpec

#: Backend inputs this processor can produce, in the usual BERT order.
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_REQUIRED = ("input_ids", "attention_mask")
#: The tokenizers.Encoding attribute behind each backend input.
_ENCODING_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
#: Preferred backend output names, before falling back to the first output.
_EMBEDDING_OUTPUTS = ("token_embeddings", "last_hidden_state")


class TextEmbeddingOptions(ProcessorOptions):
    """Options of the `text-embedding` processor."""

    tokenizer: str = Field("tokenizer.json", description="Path to a Hugging Face tokenizer.json; relative "
                           "paths are resolved against the artifact's folder.")
    max_length: int = Field(256, ge=1, description="Longest token sequence, special tokens included; "
                            "longer texts are truncated.")
    max_chars: int | None = Field(None, ge=1, description="Characters kept of each text before tokenising "
                                  "(default 64 x max_length): the tokenizer sees a bounded text, and a token "
                                  "past max_length is dropped anyway.")
    input_name: str = Field("text", description="Name of the public BYTES input (UTF-8 text, one per row).")
    output_name: str = Field("embedding", description="Name of the public FP32 [-1, H] output.")
    pooling: Literal["mean", "cls", "last"] = Field(
        "mean", description="mean: average of the token embeddings under the attention mask; cls: the first "
        "token's embedding; last: the last token under the mask (decoder models such as e5-mistral).")
    normalize: bool = Field(True, description="Scale each embedding to unit L2 norm.")


class TextEmbeddingProcessor(Processor[TextEmbeddingOptions]):
    """Tokenises text for a BERT-like backend and pools its token embeddings."""

    name = "text-embedding"
    Options = TextEmbeddingOptions

    def __init__(self, options: TextEmbeddingOptions, base_dir: Path, backend_signature: Signature) -> None:
        self.tokenizer = load_tokenizer(options, Path(base_dir))
        padding = self.tokenizer.padding or {}  # load_tokenizer always sets it
        # What encode_batch pads with, for encodings padded one by one (`own_core`).
        self._pad = {key: padding[key] for key in ("direction", "pad_id", "pad_type_id", "pad_token")}
        # Filled by bind(), which super().__init__ calls: so these defaults must come first.
        self._backend_inputs: tuple[str, ...] = ()
        self._backend_output = ""
        super().__init__(options, base_dir, backend_signature)

    def bind(self, backend_signature: Signature) -> Signature:
        names = [spec.name for spec in backend_signature.inputs]
        missing = [name for name in _REQUIRED if name not in names]
        if missing:
            raise ConfigError(f"processor '{self.name}': the backend has no input {', '.join(missing)}; "
                              f"it has {', '.join(names) or 'none'}")
        unknown = [name for name in names if name not in TOKEN_INPUTS]
        if unknown:
            raise ConfigError(f"processor '{self.name}': cannot feed backend input {', '.join(unknown)}; "
                              f"it feeds {', '.join(TOKEN_INPUTS)}")
        if not backend_signature.outputs:
            raise ConfigError(f"processor '{self.name}': the backend has no outputs")
        outputs = {spec.name: spec for spec in backend_signature.outputs}
        chosen = next((outputs[n] for n in _EMBEDDING_OUTPUTS if n in outputs), backend_signature.outputs[0])
        self._backend_inputs = tuple(names)
        self._backend_output = chosen.name
        hidden = chosen.shape[-1] if len(chosen.shape) == 3 else -1
        opts = self.options
        return Signature(inputs=(TensorSpec(name=opts.input_name, datatype="BYTES", shape=(-1,)),),
                         outputs=(TensorSpec(name=opts.output_name, datatype="FP32", shape=(-1, hidden)),))

    def check(self, inputs: Tensors) -> Tensors:
        """Decode the text here, per request: one client's invalid UTF-8 gets its own 400, not a failed batch."""
        name = self.options.input_name
        values = np.asarray(inputs[name])
        keep = self.options.max_chars or 64 * self.options.max_length
        texts = [_decode(value, i, name)[:keep] for i, value in enumerate(values.reshape(-1))]
        return inputs | {name: np.array(texts, dtype=object).reshape(values.shape)}

    def preprocess(self, inputs: Tensors) -> Tensors:
        texts = [_decode(value, i, self.options.input_name)
                 for i, value in enumerate(np.asarray(inputs[self.options.input_name]).reshape(-1))]
        encodings = self._encode(texts) if texts else []
        out = {}
        for name in self._backend_inputs:
            rows = [getattr(e, _ENCODING_FIELDS[name]) for e in encodings]
            out[name] = np.array(rows, dtype=np.int64) if rows else np.zeros((0, 0), dtype=np.int64)
        return out

    def _encode(self, texts: list[str]) -> list[Encoding]:
        """`texts` tokenised and padded to the longest, by the tokenizer's own thread pool, or, for an
        instance that owns one core (whose pool would take the other instances' cores), text by text."""
        if not self.own_core:
            return self.tokenizer.encode_batch(texts)
        encodings = [self.tokenizer.encode(text) for text in texts]
        width = max(len(e.ids) for e in encodings)
        for encoding in encodings:
            encoding.pad(width, **self._pad)
        return encodings

    def postprocess(self, backend_inputs: Tensors, outputs: Tensors) -> Tensors:
        name = self._backend_output if self._backend_output in outputs else next(iter(outputs))
        tokens = np.asarray(outputs[name], dtype=np.float32)
        if tokens.ndim != 3:
            raise BackendError(f"processor '{self.name}': backend output '{name}' has shape "
                               f"{list(tokens.shape)}, expected [batch, sequence, hidden]")
        if self.options.pooling == "cls":
            pooled = tokens[:, 0, :] if tokens.shape[1] else np.zeros(tokens.shape[::2], np.float32)
        elif self.options.pooling == "last":
            pooled = _last_token(tokens, np.asarray(backend_inputs["attention_mask"]))
        else:
            mask = np.asarray(backend_inputs["attention_mask"], dtype=np.float32)
            summed = np.einsum("bsh,bs->bh", tokens, mask, dtype=np.float32)
            pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        if self.options.normalize:
            pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return {self.options.output_name: np.ascontiguousarray(pooled, dtype=np.float32)}


def _last_token(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each row's embedding at its last position under the mask, whichever side was padded."""
    if not tokens.shape[1]:
        return np.zeros(tokens.shape[::2], np.float32)
    # argmax over the reversed mask finds the last 1: right padding (ours) and left padding alike.
    last = tokens.shape[1] - 1 - np.argmax(mask[:, ::-1] != 0, axis=1)
    return tokens[np.arange(tokens.shape[0]), last, :]


def text_embedding_options(config: ProcessorConfig | None) -> TextEmbeddingOptions | None:
    """The options of a `text-embedding` processor config; None for any other processor."""
    if config is None or config.name != TextEmbeddingProcessor.name:
        return None
    return TextEmbeddingOptions.model_validate(dict(config.model_extra or {}))


class TokenCounter:
    """Counts the tokens the text-embedding processor feeds its backend, for usage reports.

    Same tokenizer file, character cut and truncation as the processor, so a count is what
    the model really consumed (special tokens included), not an estimate.
    """

    def __init__(self, options: TextEmbeddingOptions, base_dir: Path) -> None:
        self._tokenizer = load_tokenizer(options, Path(base_dir))
        self._tokenizer.no_padding()  # padding would count the batch's longest row for every text
        self._keep = options.max_chars or 64 * options.max_length

    def count(self, texts: Sequence[str]) -> int:
        """Tokens of `texts` after truncation, summed."""
        keep = self._keep
        return sum(len(e.ids) for e in self._tokenizer.encode_batch([text[:keep] for text in texts]))


def load_tokenizer(options: TextEmbeddingOptions, base_dir: Path) -> Tokenizer:
    """The tokenizer file, set to truncate at `max_length` and pad to the batch's longest row."""
    path = Path(options.tokenizer).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:
        raise ConfigError(f"processor.tokenizer: cannot load {path}: {exc}") from None
    padding = tokenizer.padding or {}  # keep the file's pad token, but pad to the batch's longest row
    pad_token = padding.get("pad_token", "[PAD]")
    pad_id = padding.get("pad_id", tokenizer.token_to_id(pad_token) or 0)
    tokenizer.no_padding()
    tokenizer.enable_padding(direction="right", pad_id=pad_id, pad_type_id=padding.get("pad_type_id", 0),
                             pad_token=pad_token)
    tokenizer.enable_truncation(options.max_length)
    return tokenizer


def _decode(value: object, index: int, input_name: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"input '{input_name}': element {index} is not valid UTF-8") from None
    raise InvalidInput(f"input '{input_name}': element {index} is {type(value).__name__}, expected UTF-8 bytes")
