"""Export steps of a model folder: transformers model -> ONNX and torch.export, each checked against torch.

Imported only while preparing (it imports torch and transformers); hotswap.models.hf_encoder
runs these steps in order inside its locked temporary folder.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from hotswap.models.hf_encoder import PreparationError
from hotswap.models.hf_folder import HFFolder
from hotswap.models.signature import Signature, TensorSpec
from hotswap.models.text_embedding import TextEmbeddingOptions, load_tokenizer

OPSET = 17
TOKEN_TYPES = ("input_ids", "attention_mask", "token_type_ids")
_SAMPLE = ["A short one.", "hotswap serves one endpoint over any accelerator, whatever the hardware.",
           "Größe, café, 日本語"]
Compare = Callable[[str, np.ndarray, np.ndarray], None]


class ExportModule(torch.nn.Module):
    """A transformers model with positional token inputs -> last_hidden_state, ready to export."""

    def __init__(self, model: torch.nn.Module, causal: bool) -> None:
        super().__init__()
        self.model = model
        # A decoder would otherwise build and return its key/value cache: not part of an embedding graph.
        self._extra = {"use_cache": False} if causal else {}


class TokenEmbeddings(ExportModule):
    """input_ids, attention_mask -> last_hidden_state: the graph the text-embedding processor feeds."""

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **self._extra).last_hidden_state


class TypedTokenEmbeddings(ExportModule):
    """The same with token_type_ids, for BERT-like models whose forward takes them."""

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state


def load_model(hf: HFFolder) -> tuple[ExportModule, tuple[str, ...]]:
    """The folder's model in float32 eval mode, wrapped, and the names of its inputs in order."""
    try:
        import transformers
    except ImportError as exc:
        raise PreparationError("preparing a model folder needs 'transformers' (pip install transformers)") from exc
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        # No remote code: only architectures transformers itself implements (hf_folder checked model_type).
        model = transformers.AutoModel.from_pretrained(str(hf.path), local_files_only=True, dtype=torch.float32,
                                                       weights_only=True, trust_remote_code=False)
    except Exception as exc:
        raise PreparationError(f"{hf.weights}: transformers cannot load the model: {exc}") from exc
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
    if not hf.decoder and "token_type_ids" in inspect.signature(model.forward).parameters:
        return TypedTokenEmbeddings(model, False).float().eval(), TOKEN_TYPES
    return TokenEmbeddings(model, hf.decoder).float().eval(), TOKEN_TYPES[:2]


def samples(hf: HFFolder, names: tuple[str, ...]) -> tuple[tuple, tuple]:
    """Padded token batches: one to trace with (padding keeps the mask path), one to check with."""
    tokenizer = load_tokenizer(TextEmbeddingOptions(tokenizer="tokenizer.json", max_length=hf.max_length), hf.path)
    fields = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}

    def batch(texts):
        enc = tokenizer.encode_batch(texts)
        return tuple(torch.tensor([getattr(e, fields[name]) for e in enc], dtype=torch.int64) for name in names)

    return batch(_SAMPLE[:2]), batch([*_SAMPLE, _SAMPLE[1] * 8])


def export_onnx(model: ExportModule, example: tuple, names: tuple[str, ...], out: Path) -> None:
    # The legacy (TorchScript-based) exporter: dynamic_axes give a batch- and length-free graph.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example, str(out / "model.onnx"), dynamo=False, opset_version=OPSET,
                          input_names=list(names), output_names=["token_embeddings"],
                          dynamic_axes={name: {0: "batch", 1: "sequence"} for name in (*names, "token_embeddings")})


def check_onnx(out: Path, check: tuple, names: tuple[str, ...], expected: np.ndarray, compare: Compare) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = dict(zip(names, (t.numpy() for t in check), strict=True))
    # The exporter drops inputs the graph never reads (token_type_ids of a single-segment model).
    got = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]
    compare("model.onnx (onnxruntime)", under_mask(got, check), under_mask(expected, check))


def export_program(model: ExportModule, example: tuple, check: tuple, names: tuple[str, ...],
                   max_positions: int, out: Path, compare: Compare) -> Signature | None:
    """model.pt2 (torch.export), or TorchScript model.pt where export fails: then its signature,
    which the file itself does not carry (the source hands it to the torch backend)."""
    batch, seq = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("seq", min=1, max=max_positions)
    expected = under_mask(reference(model, check), check)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(model, example, strict=False,
                                          dynamic_shapes={name: {0: batch, 1: seq} for name in names})
        torch.export.save(program, str(out / "model.pt2"))
        with torch.inference_mode():
            got = torch.export.load(str(out / "model.pt2")).module()(*check).numpy()
        compare("model.pt2 (torch.export)", under_mask(got, check), expected)
        return None
    except PreparationError:
        raise
    except Exception as exc:
        import logging

        logging.getLogger("hotswap.models.hf_encoder").warning(
            "torch.export failed (%s: %s); falling back to TorchScript model.pt", type(exc).__name__, exc)
        (out / "model.pt2").unlink(missing_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.jit.trace(model, example).save(str(out / "model.pt"))
    with torch.inference_mode():
        got = torch.jit.load(str(out / "model.pt"))(*check).numpy()
    compare("model.pt (TorchScript)", under_mask(got, check), expected)
    return token_signature(names, expected.shape[-1])


def token_signature(names: tuple[str, ...], hidden: int) -> Signature:
    """The exported graph's tensors: INT64 token inputs [batch, seq] -> FP32 token_embeddings."""
    return Signature(inputs=tuple(TensorSpec(name=n, datatype="INT64", shape=(-1, -1)) for n in names),
                     outputs=(TensorSpec(name="token_embeddings", datatype="FP32", shape=(-1, -1, hidden)),))


def reference(model: ExportModule, check: tuple) -> np.ndarray:
    """What torch itself computes for `check`: the exports are compared with this."""
    with torch.inference_mode():
        return model(*check).numpy()


def under_mask(tokens: np.ndarray, check: tuple) -> np.ndarray:
    """Token embeddings with padded positions zeroed: no pooling reads them, and a causal model's
    padded rows differ between runtimes (0.003 on SmolLM2) while the real ones agree to 1e-4."""
    return tokens * check[1].numpy()[..., None]
