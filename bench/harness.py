"""Helpers for bench/throughput.py: processes, CPU accounting, hey, venvs, machine facts.

Everything here uses only the standard library, so it runs under any interpreter.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENVS = BENCH / ".venvs"
CLK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- CPU accounting -------------------------------------------------------------------
def busy_cores_total() -> tuple[float, float]:
    """(busy jiffies, wall seconds) from /proc/stat, to diff over an interval."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / CLK, time.monotonic()


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def _stat_cpu_seconds(stat: Path) -> float:
    """user+sys CPU seconds from a /proc .../stat file; 0.0 once its process or thread is gone."""
    try:
        parts = stat.read_text().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / CLK
    except (OSError, IndexError, ValueError):
        return 0.0


def tree_cpu_seconds(pid: int) -> float:
    """user+sys CPU seconds of `pid` and all its live descendants."""
    kids, total, stack = _children(), 0.0, [pid]
    while stack:
        p = stack.pop()
        total += _stat_cpu_seconds(Path(f"/proc/{p}/stat"))
        stack.extend(kids.get(p, []))
    return total


def wait_quiet(max_busy: float, max_wait_s: float) -> float:
    """Wait (up to max_wait_s) until the machine's busy cores over 1 s drop below
    `max_busy`; returns the last reading. Other users' jobs would skew every number."""
    deadline = time.monotonic() + max_wait_s
    while True:
        b0, t0 = busy_cores_total()
        time.sleep(1.0)
        b1, t1 = busy_cores_total()
        busy = (b1 - b0) / (t1 - t0)
        if busy < max_busy or time.monotonic() > deadline:
            if busy >= max_busy:
                log(f"machine still busy ({busy:.2f} cores) after {max_wait_s:.0f} s; measuring anyway")
            return busy
        log(f"waiting for a quiet machine ({busy:.2f} cores busy by other processes)")
        time.sleep(4)


# -- servers --------------------------------------------------------------------------
class Server:
    """A server subprocess in its own session; stop() ends that process group only."""

    def __init__(self, name: str, cmd: list[str], ready_url: str, log_path: Path,
                 env: dict | None = None, cwd: Path | None = None, cpus: str | None = None) -> None:
        self.name, self.ready_url, self.log_path = name, ready_url, log_path
        if cpus:
            cmd = ["taskset", "-c", cpus, *cmd]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                     start_new_session=True)
        self.pid = self.proc.pid

    def wait_ready(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}:\n"
                                   + self.log_path.read_text()[-3000:])
            try:
                with urllib.request.urlopen(self.ready_url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGINT, 15), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        try:  # workers the server forked into its session (LitServe, MLServer)
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()


def post_json(url: str, body: bytes, timeout: float = 60) -> dict:
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


# -- hey ------------------------------------------------------------------------------
_NUM = r"([0-9.]+)"


def parse_hey(text: str) -> dict:
    """The numbers of hey's text summary; latencies in ms."""
    def grab(pattern: str) -> float | None:
        m = re.search(pattern, text)
        return float(m.group(1)) if m else None

    status = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", text)}
    errors = {msg.strip(): int(n) for n, msg in re.findall(r"^\s+\[(\d+)\]\s+(.+)$",
                                                           text.split("Error distribution:")[-1], re.M)
              } if "Error distribution:" in text else {}
    total_s = grab(r"Total:\s+" + _NUM + " secs")
    ok = status.get(200, 0)
    pct = {p: grab(rf"\b{p}% in " + _NUM + " secs") for p in (50, 90, 99)}
    return {
        "total_s": total_s, "hey_rps": grab(r"Requests/sec:\s+" + _NUM),
        "throughput": ok / total_s if total_s else 0.0, "ok": ok,
        "p50_ms": pct[50] * 1000 if pct[50] is not None else None,
        "p90_ms": pct[90] * 1000 if pct[90] is not None else None,
        "p99_ms": pct[99] * 1000 if pct[99] is not None else None,
        "status": status, "errors": errors,
        "non_200": sum(n for c, n in status.items() if c != 200) + sum(errors.values()),
    }


def main_thread_cpu_seconds(pid: int) -> float:
    """user+sys CPU seconds of `pid`'s main thread (in a hotswap server, its event loop's)."""
    return _stat_cpu_seconds(Path(f"/proc/{pid}/task/{pid}/stat"))


def run_hey(url: str, body_file: Path, concurrency: int, seconds: float, cpus: str | None,
            server_pid: int | None = None, content_type: str = "application/json",
            headers: dict[str, str] | None = None) -> dict:
    """One hey run; adds CPU use of hey, of the server tree and of everything else."""
    extra = [arg for k, v in (headers or {}).items() for arg in ("-H", f"{k}: {v}")]
    cmd = ["hey", "-z", f"{seconds:g}s", "-c", str(concurrency), "-m", "POST", "-T", content_type, *extra,
           "-D", str(body_file), "-disable-compression", "-t", "60", url]
    if cpus:  # pin hey, and size its Go scheduler to the cores it may use
        cmd = ["taskset", "-c", cpus, "hey", "-cpus", str(len(cpus.split(","))), *cmd[1:]]
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    srv0 = tree_cpu_seconds(server_pid) if server_pid else 0.0
    main0 = main_thread_cpu_seconds(server_pid) if server_pid else 0.0
    b0, t0 = busy_cores_total()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    b1, t1 = busy_cores_total()
    srv1 = tree_cpu_seconds(server_pid) if server_pid else 0.0
    main1 = main_thread_cpu_seconds(server_pid) if server_pid else 0.0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise RuntimeError(f"hey failed ({out.returncode}): {out.stderr[-2000:]}")
    res = parse_hey(out.stdout)
    wall = t1 - t0
    hey_cpu = (after.ru_utime + after.ru_stime - before_children.ru_utime - before_children.ru_stime) / wall
    res.update(concurrency=concurrency, seconds=seconds, wall_s=wall, hey_cpu=hey_cpu,
               server_cpu=(srv1 - srv0) / wall, main_thread_cpu=(main1 - main0) / wall, total_cpu=(b1 - b0) / wall)
    res["background_cpu"] = max(0.0, res["total_cpu"] - res["server_cpu"] - hey_cpu) if server_pid else None
    return res


_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def run_wrk(url: str, body_file: Path, concurrency: int, seconds: float, cpus: str | None,
            content_type: str = "application/json", headers: dict[str, str] | None = None) -> dict:
    """One wrk run (POSTing body_file): its latency percentiles to the microsecond, where hey's
    summary rounds to 0.1 ms (too coarse for the c=1 target). Latencies in ms."""
    script = body_file.with_suffix(".lua")
    lines = [f'local f = io.open([==[{body_file}]==], "rb")', "wrk.body = f:read('*a')", "f:close()",
             'wrk.method = "POST"', f'wrk.headers["Content-Type"] = [==[{content_type}]==]']
    lines += [f"wrk.headers[ [==[{k}]==] ] = [==[{v}]==]" for k, v in (headers or {}).items()]
    script.write_text("\n".join(lines) + "\n")
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--latency", "-s", str(script), url]
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr[-2000:]}")
    pct = {int(p): float(v) * _WRK_UNITS[u]
           for p, v, u in re.findall(r"^\s+(\d+)%\s+([0-9.]+)(us|ms|s)\s*$", out.stdout, re.M)}
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out.stdout)
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out.stdout)
    return {"p50_ms": pct.get(50), "p90_ms": pct.get(90), "p99_ms": pct.get(99),
            "rps": float(rps.group(1)) if rps else None, "non_2xx": int(non_2xx.group(1)) if non_2xx else 0}


# -- venvs ----------------------------------------------------------------------------
def ensure_venv(name: str, packages: list[str], pins: Path | None) -> Path:
    """bench/.venvs/<name> with `packages`; the resolved set is frozen into `pins` the first
    time and installed from `pins` afterwards. Returns the venv's python."""
    venv = VENVS / name
    python = venv / "bin" / "python"
    marker = venv / ".bench-installed"
    want = pins.read_text() if pins is not None and pins.exists() else " ".join(packages)
    if marker.exists() and marker.read_text() == want:
        return python
    if not python.exists():
        log(f"creating venv {venv}")
        subprocess.run([shutil.which("python3") or sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if pins is not None and pins.exists():
        log(f"installing {pins.name} into {venv}")
        subprocess.run([*pip, "-r", str(pins)], check=True)
    else:
        log(f"installing {' '.join(packages)} into {venv}")
        subprocess.run([*pip, *packages], check=True)
        if pins is not None:
            frozen = subprocess.run([str(python), "-m", "pip", "freeze", "--disable-pip-version-check"],
                                    check=True, capture_output=True, text=True).stdout
            pins.write_text(f"# resolved by bench/throughput.py from: {' '.join(packages)}\n{frozen}")
            want = pins.read_text()
    marker.write_text(want)
    return python


def venv_versions(python: Path, dists: list[str]) -> dict[str, str]:
    code = ("import json,sys,importlib.metadata as m\n"
            "print(json.dumps({d: m.version(d) for d in sys.argv[1:]}))")
    out = subprocess.run([str(python), "-c", code, *dists], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


# -- machine --------------------------------------------------------------------------
def machine_info() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    return {"nproc": os.cpu_count(), "cpu_model": model.group(1).strip() if model else "unknown",
            "ram_gib": round(mem_kb / 1024 / 1024, 1), "kernel": os.uname().release,
            "python": sys.version.split()[0]}
