"""Mutation results kept in the repository: `docs/mutation-results.json`.

mutmut keeps its results under `mutants/`, which git ignores: a fresh clone (CI, a new checkout, a new
machine) starts from nothing and has to run every mutant again, hours for `serve` on two cores, and the
score in docs/TESTING.md cannot be checked there. `scripts/mutate.py` therefore writes every result to
this file after each run and seeds `mutants/` from it before a run that finds no results of its own.

A result is kept per function with mutmut's own hash of that function's source (sha256 of its AST, 12
hex digits): mutmut drops the results of a function whose hash changed, and so does `load`, which reads
such a function's mutants as not run. Survivors that were run only within the per-mutant test budget
(the "capped" marks of tests/mutation_plugin.py) are kept with their names.

The file's shape, per source file: `{"hashes": {function: hash}, "exit": {function: [exit code of
mutant 1, 2, ...]}, "capped": [mutant names]}`; an exit code of null is a mutant not run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAVED = ROOT / "docs" / "mutation-results.json"
MUTANT = re.compile(r"^(?P<module>.+?)\.(?P<function>x[^.]+)__mutmut_(?P<number>\d+)$")


def module_of(source: str) -> str:
    """hotswap/serve/codec.py -> hotswap.serve.codec, the prefix of its mutants' names (a package's
    __init__.py has the package's name, as mutmut names its mutants)."""
    return source.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def _meta_files(mutants: Path) -> dict[str, Path]:
    """Source path (hotswap/serve/codec.py) -> its mutmut meta file under `mutants`."""
    return {str(meta.relative_to(mutants)).removesuffix(".meta"): meta
            for meta in sorted(mutants.glob("hotswap/**/*.py.meta"))}


def save(mutants: Path, capped_dir: Path, saved: Path = SAVED) -> int:
    """Write the results under `mutants` to `saved`; the number of mutants written."""
    files: dict[str, dict[str, object]] = {}
    count = 0
    for source, meta_path in _meta_files(mutants).items():
        meta = json.loads(meta_path.read_text())
        exit_codes: dict[str, list[int | None]] = {}
        for name, code in sorted(meta["exit_code_by_key"].items(), key=lambda item: _order(item[0])):
            match = MUTANT.match(name)
            if match is None or match["module"] != module_of(source):
                raise ValueError(f"{meta_path}: a mutant name this file cannot hold: {name}")
            codes = exit_codes.setdefault(match["function"], [])
            if int(match["number"]) != len(codes) + 1:
                raise ValueError(f"{meta_path}: {name} does not follow mutant {len(codes)} of its function")
            codes.append(code)
            count += 1
        capped = sorted(name for name in meta["exit_code_by_key"] if (capped_dir / name).exists())
        files[source] = {"hashes": dict(sorted(meta["hash_by_function_name"].items())), "exit": exit_codes,
                         "capped": capped}
    saved.write_text(_dump(files), encoding="utf-8")
    return count


def _dump(files: dict[str, dict]) -> str:
    """JSON with one line per function (its hash, its mutants' exit codes), so that a diff shows which
    functions' results changed."""
    def line(value: object) -> str:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    out = ["{"]
    for i, (source, entry) in enumerate(sorted(files.items())):
        out.append(f" {line(source)}: {{")
        out.append(f'  "capped": {line(sorted(entry["capped"]))},')
        for key in ("exit", "hashes"):
            rows = [f"   {line(name)}: {line(value)}" for name, value in sorted(entry[key].items())]
            out.append(f'  "{key}": {{' + ("\n" + ",\n".join(rows) + "\n  " if rows else "") + "}" +
                       ("," if key == "exit" else ""))
        out.append(" }" + ("," if i < len(files) - 1 else ""))
    out.append("}")
    return "\n".join(out) + "\n"


def _order(name: str) -> tuple[str, int]:
    match = MUTANT.match(name)
    return (match["function"], int(match["number"])) if match else (name, 0)


def _function(name: str) -> str:
    match = MUTANT.match(name)
    return match["function"] if match else ""


def _as_now(root: Path, source: str, entry: dict) -> tuple[dict[str, int | None], set[str]]:
    """One file's saved results as they stand for its source under `root` now: (exit code by mutant
    name, capped names); a changed function's mutants read as not run, a function gone is left out."""
    from mutmut.mutation.file_mutation import compute_function_hashes

    path = root / source
    current = compute_function_hashes(path.read_text()) if path.exists() else {}
    results: dict[str, int | None] = {}
    kept: set[str] = set()
    for function, codes in entry["exit"].items():
        if function not in current:
            continue
        same = current[function] == entry["hashes"].get(function)
        if same:
            kept.add(function)
        for n, code in enumerate(codes, start=1):
            results[f"{module_of(source)}.{function}__mutmut_{n}"] = code if same else None
    return results, {name for name in entry["capped"] if _function(name) in kept}


def _saved(saved: Path) -> dict[str, dict]:
    return json.loads(saved.read_text(encoding="utf-8")) if saved.exists() else {}


def restore(mutants: Path, capped_dir: Path, root: Path = ROOT, saved: Path = SAVED) -> int:
    """Seed `mutants` with the saved results of every source file it holds no results for, as they
    stand for the source now (mutmut, which generates the mutants next, keeps the results of functions
    whose hash is unchanged). The number of mutants seeded with a result."""
    have = _meta_files(mutants)
    count = 0
    for source, entry in _saved(saved).items():
        if source in have:
            continue
        exit_codes, capped = _as_now(root, source, entry)
        meta = mutants / f"{source}.meta"
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps({"exit_code_by_key": exit_codes, "hash_by_function_name": entry["hashes"],
                                    "type_check_error_by_key": {}, "durations_by_key": {},
                                    "estimated_durations_by_key": {}}, indent=4))
        capped_dir.mkdir(parents=True, exist_ok=True)
        for name in capped:
            (capped_dir / name).touch()
        count += sum(code is not None for code in exit_codes.values())
    return count


def load(root: Path = ROOT, saved: Path = SAVED) -> tuple[dict[str, int | None], set[str]]:
    """The saved results as they stand for the source tree under `root`: (exit code by mutant name,
    capped names)."""
    results: dict[str, int | None] = {}
    capped: set[str] = set()
    for source, entry in _saved(saved).items():
        file_results, file_capped = _as_now(root, source, entry)
        results.update(file_results)
        capped |= file_capped
    return results, capped
