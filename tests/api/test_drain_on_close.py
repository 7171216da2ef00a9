"""Server shutdown over real uvicorn: requests in flight are answered, then every backend is closed.

The server is started and stopped inside the test (not the module's shared server), with
two instances of one model and a 1 s batch-fill window so the requests are really queued
when shutdown begins.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref

import numpy as np
from api_support import infer_tiny, running_server, server_section, tiny_input

from hotswap.config import parse_config
from hotswap.serve.app import create_app


def test_shutdown_answers_queued_requests_then_closes_every_backend(registry, tiny, tmp_path_factory):
    """Three requests wait in the batcher when uvicorn is told to exit; each gets its own rows, and once
    the server has stopped the runner holds no instance, both backends dropped their onnxruntime
    session and the sessions are freed (the lifespan's data-plane close ran)."""
    config = parse_config({"server": server_section(tmp_path_factory), "models": [
        {"name": "tiny", "source": str(tiny.onnx), "backends": [{"name": "onnxruntime"}], "instances": 2,
         "batching": {"max_batch_size": 64, "max_queue_delay_ms": 1000, "adaptive_delay": False}}]},
        "test", registry)
    xs = [tiny_input(rows, seed=40 + rows) for rows in (1, 2, 3)]
    answers: dict[int, np.ndarray | Exception] = {}

    with running_server(create_app(config, registry)) as server:
        runner = server.app.state.dataplane.repository.ready_runner("tiny")
        backends = [pipeline.backend for pipeline in runner._pipelines]
        sessions = [weakref.ref(backend._session) for backend in backends]

        def send(index: int) -> None:
            client = server.client()
            try:
                answers[index] = infer_tiny(client, "tiny", xs[index]).as_numpy("y")
            except Exception as exc:  # noqa: BLE001 - reported below
                answers[index] = exc
            finally:
                client.close()

        threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(len(xs))]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while len(runner._waiting) < len(xs):
            assert time.monotonic() < deadline, "the requests never queued"
            time.sleep(0.01)
        assert answers == {}
    # running_server has set should_exit and joined uvicorn: shutdown, lifespan included, is over.
    for thread in threads:
        thread.join(30)
    for index, x in enumerate(xs):
        assert not isinstance(answers[index], Exception), answers[index]
        np.testing.assert_allclose(answers[index], tiny.reference({"x": x})["y"], atol=1e-5, rtol=0)
    assert len(backends) == 2 and runner._pipelines == []
    assert [backend._session for backend in backends] == [None, None]
    gc.collect()
    assert [ref() for ref in sessions] == [None, None], "an onnxruntime session outlived shutdown"
    assert server.app.state.dataplane.repository.runners() == []
