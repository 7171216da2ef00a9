"""scripts/mutation_results.py: mutation results kept in the repository survive a fresh clone, and only
while the mutated function's source is unchanged."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("mutmut")
from mutmut.mutation.file_mutation import compute_function_hashes  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "mutation_results.py"

SOURCE = '''
def scale(x):
    return x * 2


class Box:
    def size(self):
        return 3
'''


@pytest.fixture(scope="module")
def results_module():
    spec = importlib.util.spec_from_file_location("mutation_results", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutation_results"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("mutation_results", None)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A source tree with hotswap/serve/calc.py and mutmut's results for it under mutants/."""
    source = tmp_path / "hotswap" / "serve" / "calc.py"
    source.parent.mkdir(parents=True)
    source.write_text(SOURCE)
    hashes = compute_function_hashes(SOURCE)
    assert set(hashes) == {"x_scale", "xǁBoxǁsize"}
    meta = tmp_path / "mutants" / "hotswap" / "serve" / "calc.py.meta"
    meta.parent.mkdir(parents=True)
    codes = {"hotswap.serve.calc.x_scale__mutmut_1": 1, "hotswap.serve.calc.x_scale__mutmut_2": 0,
             "hotswap.serve.calc.x_scale__mutmut_3": None, "hotswap.serve.calc.xǁBoxǁsize__mutmut_1": 0}
    meta.write_text(json.dumps({"exit_code_by_key": codes, "hash_by_function_name": hashes,
                                "type_check_error_by_key": {}, "durations_by_key": {},
                                "estimated_durations_by_key": {}}))
    capped = tmp_path / "mutants" / "mutation-capped"
    capped.mkdir()
    (capped / "hotswap.serve.calc.x_scale__mutmut_2").touch()
    return tmp_path


def test_results_saved_are_restored_into_a_fresh_clone(results_module, tree: Path, tmp_path: Path) -> None:
    saved = tree / "results.json"
    assert results_module.save(tree / "mutants", tree / "mutants" / "mutation-capped", saved) == 4

    clone = tmp_path / "clone"
    (clone / "hotswap" / "serve").mkdir(parents=True)
    (clone / "hotswap" / "serve" / "calc.py").write_text(SOURCE)
    seeded = results_module.restore(clone / "mutants", clone / "mutants" / "mutation-capped", clone, saved)

    assert seeded == 3  # the mutant never run stays without a result
    meta = json.loads((clone / "mutants" / "hotswap" / "serve" / "calc.py.meta").read_text())
    original = json.loads((tree / "mutants" / "hotswap" / "serve" / "calc.py.meta").read_text())
    assert meta["exit_code_by_key"] == original["exit_code_by_key"]
    assert meta["hash_by_function_name"] == original["hash_by_function_name"]
    assert sorted(p.name for p in (clone / "mutants" / "mutation-capped").iterdir()) == [
        "hotswap.serve.calc.x_scale__mutmut_2"]


def test_a_changed_function_reads_as_not_run_and_a_removed_one_is_gone(results_module, tree: Path) -> None:
    saved = tree / "results.json"
    results_module.save(tree / "mutants", tree / "mutants" / "mutation-capped", saved)
    (tree / "hotswap" / "serve" / "calc.py").write_text(SOURCE.replace("x * 2", "x * 4").split("class Box")[0])

    results, capped = results_module.load(tree, saved)

    assert results == {"hotswap.serve.calc.x_scale__mutmut_1": None, "hotswap.serve.calc.x_scale__mutmut_2": None,
                       "hotswap.serve.calc.x_scale__mutmut_3": None}
    assert capped == set()


def test_an_unchanged_source_keeps_every_result(results_module, tree: Path) -> None:
    saved = tree / "results.json"
    results_module.save(tree / "mutants", tree / "mutants" / "mutation-capped", saved)

    results, capped = results_module.load(tree, saved)

    assert results["hotswap.serve.calc.x_scale__mutmut_1"] == 1
    assert results["hotswap.serve.calc.xǁBoxǁsize__mutmut_1"] == 0
    assert capped == {"hotswap.serve.calc.x_scale__mutmut_2"}


def test_restore_leaves_a_file_that_has_results_of_its_own(results_module, tree: Path) -> None:
    saved = tree / "results.json"
    results_module.save(tree / "mutants", tree / "mutants" / "mutation-capped", saved)
    meta = tree / "mutants" / "hotswap" / "serve" / "calc.py.meta"
    before = meta.read_text()

    assert results_module.restore(tree / "mutants", tree / "mutants" / "mutation-capped", tree, saved) == 0
    assert meta.read_text() == before


def test_save_refuses_a_gap_in_a_functions_mutants(results_module, tree: Path) -> None:
    meta = tree / "mutants" / "hotswap" / "serve" / "calc.py.meta"
    data = json.loads(meta.read_text())
    del data["exit_code_by_key"]["hotswap.serve.calc.x_scale__mutmut_2"]
    meta.write_text(json.dumps(data))

    with pytest.raises(ValueError, match="x_scale__mutmut_3 does not follow mutant 1"):
        results_module.save(tree / "mutants", tree / "mutants" / "mutation-capped", tree / "results.json")
