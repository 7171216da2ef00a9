"""pytest plugin for `make mutate` only: mutmut loads it with `-p tests.mutation_plugin` (pyproject [tool.mutmut]).

For each mutant mutmut runs, in a forked worker, the tests that reached the mutated function during its
stats run, with `-x`. This plugin makes that affordable and correct:

- node ids whose parametrize id pytest escaped (a backslash) do not match when passed back on the command
  line; they are widened to the whole test function so the mutant's run does not die of a usage error;
- test modules run cheapest first (by the per-test durations mutmut recorded in mutants/mutmut-stats.json;
  a module that starts a uvicorn server costs more), keeping each module's own order so module fixtures
  start once, so a mutant that is caught is usually caught by a unit test in well under a second;
- $HOTSWAP_MUTATE_BUDGET_S (seconds, unset = no cap) keeps, in that order, only the tests whose recorded
  time fits that budget for each mutant. A capped mutant that survives may be caught by a test left out: it
  is marked in mutants/mutation-capped/ and scripts/mutate.py runs it again with every test. Such a budgeted
  run is stopped after WATCHDOG_S (45 s) of wall time with SIGXCPU, as mutmut stops a mutant past its own timeout
  (a timeout: caught): mutmut's timeout counts every test mapped to the function, minutes for one that
  starts with a live server, so each mutant that hangs a server cost that long;
- in mutmut's stats run, the functions a test module's fixtures ran (a live server started for the module,
  its shutdown after the module's last test) are mapped to every test of that module: mutmut maps a
  function only to the test during whose setup, call or teardown it ran, so a module fixture's start was
  mapped to the module's first test alone, and its teardown, run after mutmut's own teardown hook, to the
  next module's first test. Their mutants then ran against one unrelated test and "survived".

Outside a mutant's run (stats, clean and forced-fail runs) only the node id repair and that mapping apply.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest

#: Mutants whose run left tests out (mutants/mutation-capped/NAME); scripts/mutate.py re-runs those that
#: survived with every test.
CAPPED = Path("mutation-capped")
#: Added to a module's recorded test time when it serves over real uvicorn (server start, model loads).
SERVER_MODULE_COST_S = 1.5
#: Wall-clock bound of a budgeted mutant's run (its tests' recorded time is at most the budget, 5 s).
WATCHDOG_S = 45.0
#: Stats run: the functions each test module's fixtures ran (setups, and teardowns mutmut did not see).
_FIXTURE_HITS: dict[str, set[str]] = {}
#: Stats run: what the last teardown ran after mutmut's hook had recorded that test (not the next setup's).
_late_hits: set[str] = set()


def _mutant_under_test() -> bool:
    return "__mutmut_" in os.environ.get("MUTANT_UNDER_TEST", "")


def pytest_load_initial_conftests(early_config, parser, args: list[str]) -> None:
    seen: set[str] = set()
    repaired: list[str] = []
    for arg in args:
        if "::" in arg:
            if "\\" in arg:
                arg = arg.split("[", 1)[0]
            if arg in seen:
                continue
            seen.add(arg)
        repaired.append(arg)
    args[:] = repaired


def _recorded_durations() -> dict[str, float]:
    path = Path("mutmut-stats.json")  # mutmut runs the tests from inside mutants/
    try:
        return json.loads(path.read_text())["duration_by_test"]
    except (OSError, ValueError, KeyError):
        return {}


def _recorded(durations: dict[str, float], nodeid: str) -> float:
    """The test's recorded call time; a test missing there (a widened id) is guessed at a typical one."""
    return durations.get(nodeid, 0.5 if nodeid.startswith("tests/api/") else 0.05)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _mutant_under_test() or not items:
        return
    durations = _recorded_durations()
    cost: dict[str, float] = {}
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        if module not in cost:
            cost[module] = SERVER_MODULE_COST_S if module.startswith("tests/api/") else 0.0
        cost[module] += _recorded(durations, item.nodeid)
    order = {module: rank for rank, module in enumerate(sorted(cost, key=lambda m: (cost[m], m)))}
    items.sort(key=lambda item: order[item.nodeid.split("::", 1)[0]])  # stable: each module keeps its order

    budget = float(os.environ.get("HOTSWAP_MUTATE_BUDGET_S") or 0)
    if budget <= 0:
        return
    watchdog = threading.Timer(max(WATCHDOG_S, 10 * budget), os.kill, (os.getpid(), signal.SIGXCPU))
    watchdog.daemon = True
    watchdog.start()
    kept: list[pytest.Item] = []
    started: set[str] = set()
    spent = 0.0
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        step = _recorded(durations, item.nodeid)
        if module not in started and module.startswith("tests/api/"):
            step += SERVER_MODULE_COST_S
        if kept and spent + step > budget:
            break
        kept.append(item)
        started.add(module)
        spent += step
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=items[len(kept):])
        items[:] = kept
        CAPPED.mkdir(exist_ok=True)
        (CAPPED / os.environ["MUTANT_UNDER_TEST"]).touch()


def _stats_run() -> bool:
    return os.environ.get("MUTANT_UNDER_TEST") == "stats"


def _module(item: pytest.Item) -> str:
    return item.nodeid.removeprefix("mutants/").split("::", 1)[0]


def _state():
    from mutmut.state import state  # only in mutmut's own process, which runs the stats session

    return state()


def _hits() -> set[str]:
    return _state()._stats


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    yield
    if _stats_run():
        _FIXTURE_HITS.setdefault(_module(item), set()).update(_hits() - _late_hits)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    global _late_hits
    yield
    if _stats_run():  # mutmut's teardown hook ran before the fixtures' finalizers: these are theirs
        _late_hits = set(_hits())
        _FIXTURE_HITS.setdefault(_module(item), set()).update(_late_hits)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """A mutant run with every one of its tests is no longer capped; after a stats run, map each module's
    fixture functions to every test of the module."""
    if _mutant_under_test() and not float(os.environ.get("HOTSWAP_MUTATE_BUDGET_S") or 0) > 0:
        (CAPPED / os.environ["MUTANT_UNDER_TEST"]).unlink(missing_ok=True)
    if not _stats_run() or not _FIXTURE_HITS:
        return
    tests: dict[str, list[str]] = {}
    for item in session.items:
        tests.setdefault(_module(item), []).append(item.nodeid.removeprefix("mutants/"))
    mapping = _state().tests_by_mangled_function_name
    for module, functions in _FIXTURE_HITS.items():
        for function in functions:
            mapping[function].update(tests.get(module, ()))
