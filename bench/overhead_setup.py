"""The contenders of bench/overhead.py: how each server starts and which endpoints it is measured on.

A Contender starts one server (or, for "raw", none: the MiniLM pipeline in-process) and lists
its Endpoints; every endpoint is measured at each of its concurrency levels, one hey run each.
Responses are checked once per endpoint before measuring: the tiny model's `y` must match
onnxruntime in this process (the bare route answers a fixed v2 body, so only its shape is checked).
"""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import servers
from before_after import body, start, tiny_model
from harness import BENCH, REPO, Server, free_port

LOGS = BENCH / "logs"
BATCH, DELAY_MS = 32, 2.0
BATCHED, UNBATCHED = f"on ({BATCH}, {DELAY_MS:g} ms)", "off (1)"
#: MiniLM also as `instances: 2` (one onnxruntime thread each on two cores) with batches of 16:
#: the c=32 clients split between two batches, so one computes while the other's answers go out
#: and its next requests come in and are tokenised; the raw loop gets the same two-loop variant.
INSTANCES = 2
SPLIT = f"{INSTANCES} instances"  # the rows' name suffix
SPLIT_BATCHING = f"on ({BATCH // INSTANCES}, {DELAY_MS:g} ms) × {SPLIT}"
X = [0.5] * 8
#: About 8, 24 and 128 MiniLM tokens, counting [CLS] and [SEP] (the exact counts go into the results).
TEXTS = {8: "How do I reset my password",
         24: "How do I reset my password if I can no longer reach the email address linked to my old account?",
         128: " ".join(["The quick brown fox jumps over the lazy dog near the old stone bridge at dawn."] * 7)
         + " It was a very cold morning."}


@dataclass
class Endpoint:
    name: str                          # row label, unique over all contenders
    workload: str                      # "tiny" or "minilm-<tokens>"
    body_kind: str                     # "JSON", "binary", "LitServe JSON"
    batching: str
    path: str                          # appended to the server's base URL
    body: bytes
    levels: tuple[int, ...]
    check: Callable[[dict], bool]      # the decoded response is right
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    loops: int = 1                     # raw MiniLM: concurrent loops, each on BATCH // loops copies


@dataclass
class Contender:
    name: str
    start: Callable[[dict], tuple[Server, str]] | None  # ctx -> (server, base URL); None: in-process raw
    endpoints: list[Endpoint]


def post(url: str, ep: Endpoint, timeout: float = 60) -> dict:
    req = urllib.request.Request(url, ep.body, {"Content-Type": ep.content_type, **ep.headers})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def _v2_output(response: dict, name: str) -> list:
    return next(o["data"] for o in response["outputs"] if o["name"] == name)


def _close(got, want: np.ndarray) -> bool:
    got = np.asarray(got, dtype=np.float32).reshape(-1)
    return got.shape == want.shape and bool(np.allclose(got, want, atol=1e-5))


def binary_body() -> tuple[bytes, dict[str, str]]:
    """The v2 binary tensor extension: JSON header, then x as 32 little-endian float32 bytes."""
    data = np.asarray(X, dtype="<f4").tobytes()
    header = json.dumps({"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(data)}}]}).encode()
    return header + data, {"Inference-Header-Content-Length": str(len(header))}


def prepare(ctx: dict) -> None:
    """The tiny model's file and hotswap model entry, and its reference output, into ctx."""
    import onnxruntime as ort

    ctx["tiny"] = tiny_model(ctx["tmp"] / "tiny")
    session = ort.InferenceSession(ctx["tiny"]["source"], providers=["CPUExecutionProvider"])
    ctx["y_ref"] = session.run(["y"], {"x": np.asarray([X], dtype=np.float32)})[0].reshape(-1)


def _base(url: str) -> str:
    return url[:url.index("/", len("http://"))]


def _hotswap_tiny(ctx: dict) -> tuple[Server, str]:
    unbatched = {**ctx["tiny"], "name": "tiny-nb",
                 "batching": {"max_batch_size": 1, "max_queue_delay_ms": 0, "max_queue_size": 4096}}
    server, port = start("hotswap-tiny", REPO, ctx["tmp"], [ctx["tiny"], unbatched], LOGS)
    return server, f"http://127.0.0.1:{port}"


def _bare(ctx: dict) -> tuple[Server, str]:
    port = free_port()
    server = Server("bare", [sys.executable, str(servers.PEERS / "bare_v2.py"), "--port", str(port)],
                    f"http://127.0.0.1:{port}/v2/health/ready", LOGS / "bare.log")
    return server, f"http://127.0.0.1:{port}"


def _mlserver(ctx: dict) -> tuple[Server, str]:
    target = servers.mlserver(ctx["py"]["mlserver"], ctx["tmp"], LOGS, Path(ctx["tiny"]["source"]), "", BATCH,
                              DELAY_MS, None, model="tiny", implementation="tiny_mlserver.TinyRuntime")
    return target.server, _base(target.url)


def _litserve(ctx: dict) -> tuple[Server, str]:
    target = servers.litserve(ctx["py"]["litserve"], LOGS, Path(ctx["tiny"]["source"]), "", BATCH, DELAY_MS,
                              None, script="tiny_litserve.py")
    return target.server, _base(target.url)


def _hotswap_minilm(ctx: dict) -> tuple[Server, str]:
    target = servers.hotswap(ctx["tmp"], LOGS, TEXTS[8], BATCH, DELAY_MS, None, label="hotswap-minilm")
    return target.server, _base(target.url)


def _hotswap_minilm_split(ctx: dict) -> tuple[Server, str]:
    target = servers.hotswap(ctx["tmp"], LOGS, TEXTS[8], BATCH // INSTANCES, DELAY_MS, None,
                             extra={"instances": INSTANCES}, label="hotswap-minilm-split")
    return target.server, _base(target.url)


def contenders(ctx: dict, only: str, peers: bool) -> list[Contender]:
    """Everything to measure, in the order of the report; `only` is "tiny", "minilm" or "all"."""
    y_ok = lambda r: _close(_v2_output(r, "y"), ctx.get("y_ref"))  # noqa: E731
    v2 = body("tiny", None)
    binary, headers = binary_body()
    tiny, both = "/v2/models/tiny/infer", (1, 64)
    out = []
    if only in ("tiny", "all"):
        out += [Contender("hotswap-tiny", _hotswap_tiny, [
                    Endpoint("hotswap JSON batched", "tiny", "JSON", BATCHED, tiny, v2, both, y_ok),
                    Endpoint("hotswap JSON unbatched", "tiny", "JSON", UNBATCHED, "/v2/models/tiny-nb/infer",
                             v2, both, y_ok),
                    Endpoint("hotswap binary batched", "tiny", "binary", BATCHED, tiny, binary, both, y_ok,
                             "application/octet-stream", headers)]),
                Contender("bare", _bare, [Endpoint("bare Starlette", "tiny", "JSON", "-", tiny, v2, both,
                                                   lambda r: len(_v2_output(r, "y")) == 4)])]
        if peers:
            out += [Contender("mlserver", _mlserver, [Endpoint("MLServer", "tiny", "JSON", BATCHED, tiny, v2,
                                                               both, y_ok)]),
                    Contender("litserve", _litserve, [Endpoint(
                        "LitServe", "tiny", "LitServe JSON", BATCHED, "/predict", json.dumps({"x": X}).encode(),
                        both, lambda r: _close(r["y"], ctx.get("y_ref")))])]
    if only in ("minilm", "all"):
        out += minilm_contenders()
    return out


def minilm_contenders() -> list[Contender]:
    """hotswap's MiniLM with one instance and with INSTANCES, and the raw loop alike."""
    ok = lambda r: len(r["outputs"][0]["data"]) == 384  # noqa: E731
    path = "/v2/models/minilm/infer"
    return [Contender("hotswap-minilm", _hotswap_minilm, [
                Endpoint(f"hotswap MiniLM {n} tok", f"minilm-{n}", "JSON", BATCHED, path, body("minilm", text),
                         (32,), ok) for n, text in TEXTS.items()]),
            Contender("hotswap-minilm-split", _hotswap_minilm_split, [
                Endpoint(f"hotswap MiniLM {n} tok, {SPLIT}", f"minilm-{n}", "JSON", SPLIT_BATCHING, path,
                         body("minilm", text), (32,), ok) for n, text in TEXTS.items()]),
            Contender("raw", None, [Endpoint(f"raw MiniLM {n} tok", f"minilm-{n}", "in-process", f"batch {BATCH}",
                                             "", text.encode(), (32,), bool) for n, text in TEXTS.items()]),
            Contender("raw-split", None, [
                Endpoint(f"raw MiniLM {n} tok, {INSTANCES} loops", f"minilm-{n}", "in-process",
                         f"batch {BATCH // INSTANCES} × {INSTANCES} loops", "", text.encode(), (32,), bool,
                         loops=INSTANCES) for n, text in TEXTS.items()])]
