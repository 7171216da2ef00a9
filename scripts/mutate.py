"""`make mutate`: a bounded, resumable mutation run (mutmut) over one group of hotswap's mutants, then its score.

    python scripts/mutate.py [GROUP] [--minutes 20] [--fresh | --retry-survivors] [--restat] [--report | --table]

GROUP is serve (the default), backends, or a narrower prefix such as serve.codec: the mutants named
hotswap.GROUP*; several, comma-separated (serve.codec,serve.batch), make one group. Within the time given it

1. runs, with `mutmut run`, the group's mutants that have no result yet: all of them on a first run or
   with --fresh; later only those not reached before and those of functions changed since (mutmut drops
   the results of a function whose source changed). Each runs its cheapest tests first and at most
   $HOTSWAP_MUTATE_BUDGET_S seconds of them (tests/mutation_plugin.py);
2. runs again each survivor whose run was capped (with --retry-survivors: every survivor not judged
   equivalent, and every mutant no test reached, after tests were added for them): first within 30 s
   of its tests, then, if still capped, with every test that reaches it;
3. stops at the deadline with SIGINT (mutmut keeps every result it has), so the next run goes on from there;
4. writes every result to docs/mutation-results.json, from which a run that finds no `mutants/` results
   for a file (a fresh clone) starts (scripts/mutation_results.py);

then prints the counts and the score (with --report or --table alone, from `mutants/` or, where it has
nothing, from docs/mutation-results.json), (killed + timed out) / (all - judged equivalent), where the mutants
judged equivalent are the ones named in backticks in docs/TESTING.md's table. It exits 1 when a group
with every mutant run scores below --min.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import mutation_results

ROOT = Path(__file__).resolve().parents[1]
MUTANTS = ROOT / "mutants"
CAPPED = MUTANTS / "mutation-capped"  # written by tests/mutation_plugin.py
EQUIVALENT = re.compile(r"^\|\s*`(hotswap\.[^`]+__mutmut_\d+)`")
#: mutmut's exit codes (mutmut.stats.status_by_exit_code) as the score counts them.
CAUGHT = {1: "killed", 3: "killed", 36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout",
          -11: "crashed", -9: "crashed", -6: "crashed"}
SURVIVED = {0: "survived", 5: "no tests", 33: "no tests"}
#: Below this many seconds left, a further mutmut pass (clean run of the tests first) is not started.
MIN_PASS_S = 180
#: Survivors run again first within this much recorded test time (most capped ones are caught by a unit
#: test just past the first budget), then those still capped with every test that reaches them (minutes
#: each where a function is reached by many live-server tests).
RETRY_BUDGETS_S = (30.0, 0.0)


def prefixes(group: str) -> tuple[str, ...]:
    return tuple(f"hotswap.{part.strip()}" for part in group.split(",") if part.strip())


def load_results(group: str) -> tuple[dict[str, int | None], set[str]]:
    """(exit code by mutant name, names of the survivors whose run was capped) of the group: from
    `mutants/` where it holds a source file's results, else from docs/mutation-results.json as it stands
    for the source now (a fresh clone has no `mutants/`)."""
    saved, saved_capped = mutation_results.load()
    results: dict[str, int | None] = {}
    capped: set[str] = set()
    here = set()
    for meta in sorted(MUTANTS.glob("hotswap/**/*.py.meta")):
        here.add(mutation_results.module_of(str(meta.relative_to(MUTANTS)).removesuffix(".meta")))
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            results[name] = code
            if (CAPPED / name).exists():
                capped.add(name)
    for name, code in saved.items():
        if (match := mutation_results.MUTANT.match(name)) and match["module"] not in here:
            results[name] = code
            if name in saved_capped:
                capped.add(name)
    return {n: c for n, c in results.items() if n.startswith(prefixes(group))}, capped


def equivalent_mutants() -> set[str]:
    doc = ROOT / "docs" / "TESTING.md"
    if not doc.exists():
        return set()
    return {m.group(1) for line in doc.read_text().splitlines() if (m := EQUIVALENT.match(line))}


def drop_stale_tests() -> None:
    """Delete test files under mutants/tests that the tree no longer has: mutmut copies tests in but
    never removes a renamed or deleted one, and a stale copy can break its test collection (two
    test modules with one basename)."""
    for copy in (MUTANTS / "tests").rglob("*.py") if (MUTANTS / "tests").is_dir() else ():
        if not (ROOT / copy.relative_to(MUTANTS)).exists():
            copy.unlink()


def run_mutmut(names: list[str], budget_s: float, deadline: float, children: int) -> bool:
    """One `mutmut run` of `names`; False when it was stopped at the deadline."""
    env = dict(os.environ, HOTSWAP_MUTATE_BUDGET_S=str(budget_s))
    env.setdefault("HOTSWAP_TEST_TINY_CACHE", str(ROOT / ".pytest_cache" / "mutate_tiny"))
    env.setdefault("HOTSWAP_TEST_PLUGIN_CACHE", str(ROOT / ".pytest_cache" / "mutate_plugins"))
    env.setdefault("HOTSWAP_TEST_HOME", str(ROOT / ".pytest_cache" / "hotswap_home"))
    mutmut = Path(sys.executable).with_name("mutmut")
    shown = names if len(names) <= 3 else [*names[:3], f"... ({len(names)} mutants)"]
    print(f"$ mutmut run --max-children {children} {' '.join(shown)}   [test budget {budget_s:g}s]", flush=True)
    proc = subprocess.Popen([str(mutmut), "run", "--max-children", str(children), *names], cwd=ROOT, env=env,
                            start_new_session=True)
    try:
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        print("\ntime is up: stopping mutmut (the results so far are kept)", flush=True)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return False
    if rc != 0:
        raise SystemExit(f"mutmut run failed (exit {rc}): do the tests pass? (`make test`)")
    return True


def classify(name: str, code: int | None, equivalent: set[str], capped: set[str]) -> str:
    """One mutant's status: killed, timeout, crashed, equivalent, not run, capped, survived, no tests, or
    `exit N` (suspicious, or an error in mutmut's worker)."""
    if code in CAUGHT:
        return CAUGHT[code]
    if name in equivalent and code in SURVIVED:
        return "equivalent"
    if code is None:
        return "not run"
    if code in SURVIVED:
        return "capped" if code == 0 and name in capped else SURVIVED[code]
    return f"exit {code}"


def report(group: str, minimum: float) -> int:
    results, capped = load_results(group)
    names = ", ".join(f"{p}*" for p in prefixes(group))
    if not results:
        print(f"no mutants named {names} under mutants/")
        return 1
    equivalent = equivalent_mutants()
    tally: Counter[str] = Counter()
    open_mutants: list[tuple[str, str]] = []
    for name, code in sorted(results.items()):
        status = classify(name, code, equivalent, capped)
        tally[status] += 1
        if status not in CAUGHT.values() and status != "equivalent":
            open_mutants.append((status, name))
    caught = sum(tally[k] for k in set(CAUGHT.values()))
    judged = len(results) - tally["equivalent"]
    score = 100.0 * caught / judged if judged else 100.0
    for status, name in open_mutants:
        if status != "not run":
            print(f"  {status:<9} {name}")
    print(f"\nmutants {names}: {len(results)}: " + ", ".join(f"{k} {v}" for k, v in sorted(tally.items())))
    print(f"score: {caught}/{judged} = {score:.1f}% of the non-equivalent mutants (minimum {minimum:g}%)")
    if tally["not run"] or tally["capped"]:
        print(f"{tally['not run'] + tally['capped']} mutants still to run: `make mutate MUTATE={group}` goes on")
        return 0
    if open_mutants:
        print("look at one with `.venv/bin/mutmut show NAME`; kill it with a test, or judge it in docs/TESTING.md")
    return 0 if score >= minimum else 1


def table(group: str) -> None:
    """The group's state per module, as the markdown table docs/TESTING.md keeps."""
    equivalent = equivalent_mutants()
    rows: dict[str, Counter[str]] = {}
    columns = ("mutants", "killed", "timeout", "crashed", "equivalent", "survived", "capped", "no tests", "not run",
               "other exit")
    results, capped = load_results(group)
    for name, code in results.items():
        tally = rows.setdefault(name.split(".x", 1)[0].removeprefix("hotswap."), Counter())
        tally["mutants"] += 1
        status = classify(name, code, equivalent, capped)
        tally[status if status in columns else "other exit"] += 1
    print("| module | " + " | ".join(columns) + " | score so far |")
    print("| --- " * (len(columns) + 2) + "|")
    for module, tally in sorted(rows.items()):
        caught = tally["killed"] + tally["timeout"] + tally["crashed"]
        judged = tally["mutants"] - tally["equivalent"]
        score = f"{100 * caught / judged:.1f} %" if judged else "-"
        print(f"| `{module}` | " + " | ".join(str(tally[c]) for c in columns) + f" | {score} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("group", nargs="?", default="serve", help="serve, backends, or a prefix such as serve.codec")
    parser.add_argument("--minutes", type=float, default=20.0, help="stop after this long (default 20)")
    parser.add_argument("--fresh", action="store_true", help="run every mutant of the group again")
    parser.add_argument("--retry-survivors", action="store_true",
                        help="run every survivor not judged equivalent again, with all its tests")
    parser.add_argument("--report", action="store_true", help="only print the counts and the score")
    parser.add_argument("--table", action="store_true", help="only print the state per module (markdown)")
    parser.add_argument("--save", action="store_true",
                        help="only write mutants/'s results to docs/mutation-results.json (a run stopped by hand)")
    parser.add_argument("--restat", action="store_true",
                        help="map every test to the functions it runs again first (keeps every result)")
    parser.add_argument("--min", type=float, default=90.0, help="lowest acceptable score in percent (default 90)")
    parser.add_argument("--children", type=int, default=2, help="mutants run at once (default 2)")
    args = parser.parse_args(argv)
    if args.report:
        return report(args.group, args.min)
    if args.table:
        table(args.group)
        return 0
    if args.save:
        return save()

    # A shell's background job starts with SIGINT ignored, and mutmut, which this stops with SIGINT at the
    # deadline, would inherit that; a handler of our own is reset to the default in the child instead.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    drop_stale_tests()
    if args.restat:
        # mutmut maps only tests it has not seen before: a function added since is mapped to the
        # new tests alone. Without its stats file it runs every test once more; results stay.
        (MUTANTS / "mutmut-stats.json").unlink(missing_ok=True)
    budget_s = float(os.environ.get("HOTSWAP_MUTATE_BUDGET_S") or 5)
    deadline = time.monotonic() + args.minutes * 60
    if seeded := mutation_results.restore(MUTANTS, CAPPED):
        print(f"{seeded} results from {mutation_results.SAVED.relative_to(ROOT)} (functions unchanged since)")
    results, _ = load_results(args.group)
    if args.fresh or not results:
        todo = [f"{prefix}*" for prefix in prefixes(args.group)]
    else:
        todo = [n for n, c in results.items() if c is None]
    finished = run_mutmut(todo, budget_s, deadline, args.children) if todo else True
    # That run re-generated the mutants first: functions changed since the last run lost their results.
    todo = [n for n, c in load_results(args.group)[0].items() if c is None]
    if finished and todo and deadline - time.monotonic() > MIN_PASS_S:
        finished = run_mutmut(todo, budget_s, deadline, args.children)
    equivalent = equivalent_mutants()
    for retry_budget_s in RETRY_BUDGETS_S:
        results, capped = load_results(args.group)
        again = [n for n, c in results.items() if n not in equivalent
                 and ((c == 0 and n in capped) or (args.retry_survivors and c in SURVIVED))]
        if not (finished and again and deadline - time.monotonic() > MIN_PASS_S):
            break
        within = f"{retry_budget_s:g} s of their tests" if retry_budget_s else "all of their tests"
        print(f"\n{len(again)} survivors: again with {within}", flush=True)
        finished = run_mutmut(again, retry_budget_s, deadline, args.children)
    save()
    return report(args.group, args.min)


def save() -> int:
    saved = mutation_results.save(MUTANTS, CAPPED)
    print(f"{saved} mutants written to {mutation_results.SAVED.relative_to(ROOT)} (commit it with the tests)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
