"""A Hugging Face model folder as a source: exported to ONNX and torch.export into the cache, offline.

    source: /path/to/folder        (or hf:/path/to/folder)   a folder with config.json

Artifacts go to `<root>/<key>/` (`root` is `<home>/hf`, or `<home>/minilm` for builtin:minilm),
where `key` hashes the weights, tokenizer, config and the exporting toolchain, so new weights,
a new torch or a new recipe build a fresh folder instead of reusing a stale one:

    model.onnx      inputs input_ids, attention_mask[, token_type_ids] INT64 [batch, seq];
                    output token_embeddings FP32 [batch, seq, hidden]
    model.pt2       the same module through torch.export (dynamic batch, seq up to the position table)
    model.pt        instead of model.pt2 where torch.export fails: a TorchScript trace
    tokenizer.json  the folder's tokenizer, for the text-embedding processor
    manifest.json   names, sizes and sha256s of the above, and model.pt's signature (TorchScript
                    carries no tensor names; the source hands it to the torch backend); written last

Building is atomic and safe across processes: it runs under a file lock in a temporary
folder that is renamed into place only when complete and verified. Pooling, normalisation
and max length are read from the folder at every start (hf_folder), not cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from hotswap.models.hf_folder import HFFolder, read_folder
from hotswap.models.signature import Signature
from hotswap.models.sources import ModelSource

log = logging.getLogger("hotswap.models.hf_encoder")

#: Bump when the export changes, so existing caches are rebuilt.
RECIPE_VERSION = "1"
TOLERANCE = 1e-4
_TMP_PREFIX = ".tmp-"
Compare = Callable[[str, np.ndarray, np.ndarray], None]


class PreparationError(RuntimeError):
    """A model folder could not be prepared (export failed or did not match torch)."""


def compare(what: str, got: np.ndarray, expected: np.ndarray) -> None:
    """An exported artifact's output must equal torch's within TOLERANCE."""
    if got.shape != expected.shape:
        raise PreparationError(f"{what}: output shape {list(got.shape)}, expected {list(expected.shape)}")
    err = float(np.abs(got - expected).max())
    if not err <= TOLERANCE:
        raise PreparationError(f"{what}: differs from torch by {err:.3g} (> {TOLERANCE})")
    log.debug("%s matches torch (max abs error %.3g)", what, err)


def prepare_folder(folder: Path, root: Path, label: str = "model", progress: bool = False,
                   check: Compare = compare) -> ModelSource:
    """Artifacts of the model in `folder` under `root/<key>/`, built once and then reused.

    `label` names the model in logs and the progress bar; `check` compares each export with torch.
    """
    start = time.perf_counter()
    hf = read_folder(Path(folder).resolve())
    final = Path(root) / cache_key(hf)
    files, state = build_once(final, "model.onnx", lambda out: _build(hf, out, final.name, label, progress, check),
                              label)
    seconds = time.perf_counter() - start
    log.info("%s %s in %.2f s: %s", label, "cache hit" if state == "cache" else "built", seconds, final)
    artifacts = [final / name for name in ("model.onnx", "model.pt2", "model.pt") if name in files]
    return ModelSource(artifacts=artifacts, processor=hf.processor(),
                       notes={"prepared": state, "seconds": f"{seconds:.2f}", "folder": str(hf.path)},
                       signatures=_signatures(final))


def _signatures(final: Path) -> dict[str, Signature]:
    """The manifest's signatures of artifacts without tensor names (the TorchScript fallback's)."""
    manifest = json.loads((final / "manifest.json").read_text())
    return {name: Signature.model_validate(spec) for name, spec in manifest.get("signatures", {}).items()}


def cache_key(hf: HFFolder) -> str:
    """Short hash of the weights, tokenizer and config (size + first and last MiB) and the toolchain."""
    toolchain = "|".join([RECIPE_VERSION, *(package_version(p) for p in ("torch", "transformers", "onnx"))])
    digest = hashlib.sha256(toolchain.encode())
    for path in (hf.weights, hf.path / "tokenizer.json", hf.path / "config.json"):
        size = path.stat().st_size
        digest.update(f"|{path.name}:{size}|".encode())
        with path.open("rb") as fh:
            digest.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                digest.update(fh.read())
    return digest.hexdigest()[:16]


def package_version(package: str) -> str:
    """The installed version of `package`, or "none"."""
    try:
        return version(package)
    except PackageNotFoundError:
        return "none"


def build_once(final: Path, required: str, build: Callable[[Path], None], label: str) -> tuple[dict, str]:
    """Make `final` with `build(tmp)` once across processes; its manifest's files and "cache" or "built".

    `build` fills a temporary folder and writes its manifest (write_manifest) last; the folder
    is renamed to `final` only then, so `final` is complete or absent. `required` must be in it.
    """
    files = _valid_files(final, required)
    if files is not None:
        return files, "cache"
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(final.parent / ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another process preparing %s in %s", label, final.parent)
        lock.acquire()
    try:
        files = _valid_files(final, required)  # another process may have built it meanwhile
        if files is not None:
            return files, "cache"
        _build_locked(final, build, label)
        files = _valid_files(final, required)
        if files is None:
            raise PreparationError(f"{final}: manifest does not match the files just built")
        return files, "built"
    finally:
        lock.release()


def _valid_files(final: Path, required: str) -> dict | None:
    """The manifest's files if `final` is complete (every file present, sizes as recorded)."""
    try:
        manifest = json.loads((final / "manifest.json").read_text())
        files = manifest["files"]
        if manifest.get("recipe_version") != RECIPE_VERSION or required not in files:
            return None
        if all((final / name).stat().st_size == entry["size"] for name, entry in files.items()):
            return files
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def _build_locked(final: Path, build: Callable[[Path], None], label: str) -> None:
    """Build into a temp folder and rename it to `final`; the caller holds the lock."""
    for stale in final.parent.glob(_TMP_PREFIX + "*"):  # left by a crashed run: nobody else builds now
        log.info("removing partial build %s", stale)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX + final.name + "-", dir=final.parent))
    try:
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it 0700; a shared cache must stay readable
        if final.exists():  # incomplete or corrupted: replace it
            log.warning("rebuilding invalid %s cache %s", label, final)
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _build(hf: HFFolder, out: Path, key: str, label: str, progress: bool, check: Compare) -> None:
    from hotswap.models import hf_export

    with _steps(label, progress) as step:
        step("loading weights")
        model, names = hf_export.load_model(hf)
        shutil.copyfile(hf.path / "tokenizer.json", out / "tokenizer.json")
        example, checks = hf_export.samples(hf, names)
        expected = hf_export.reference(model, checks)
        step("exporting ONNX")
        hf_export.export_onnx(model, example, names, out)
        step("checking ONNX with onnxruntime")
        hf_export.check_onnx(out, checks, names, expected, check)
        step("exporting torch program")
        torchscript = hf_export.export_program(model, example, checks, names, hf.max_positions, out, check)
        step("writing manifest")
        write_manifest(out, key, ("model.onnx", "model.pt2", "model.pt", "tokenizer.json"),
                       {"model.pt": torchscript.model_dump(mode="json")} if torchscript else None)


def write_manifest(out: Path, key: str, names: tuple[str, ...], signatures: dict | None = None) -> None:
    """manifest.json for those of `names` present in `out`: sizes, sha256s and the toolchain, and
    the `signatures` of artifacts that carry no tensor names, by file name."""
    import onnx
    import onnxruntime as ort
    import torch

    present = [n for n in names if (out / n).exists()]
    manifest = {
        "recipe_version": RECIPE_VERSION, "key": key, "opset": 17, "torch": torch.__version__,
        "onnx": onnx.__version__, "onnxruntime": ort.__version__, "transformers": package_version("transformers"),
        "numpy": np.__version__,
        "files": {n: {"size": (out / n).stat().st_size, "sha256": _sha256(out / n)} for n in present},
        **({"signatures": signatures} if signatures else {}),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def _steps(label: str, progress: bool, total: int = 5) -> Iterator[Callable[[str], None]]:
    """`step(description)` per stage; a rich progress bar on stderr when `progress`."""
    if not progress:
        yield lambda description: log.debug("%s: %s", label, description)
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn(f"[bold]{label}[/] {{task.description}}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                  console=Console(stderr=True)) as bar:
        task, done = bar.add_task("starting", total=total), iter(range(total))
        yield lambda description: bar.update(task, completed=next(done), description=description)
        bar.update(task, completed=total, description="done")
