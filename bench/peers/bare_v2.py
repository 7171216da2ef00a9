"""The Python HTTP stack's own limit: a bare Starlette route on uvicorn that parses a v2 JSON body
with orjson and answers a fixed v2 response, computing nothing.

    python bare_v2.py --port N

Same uvicorn settings as hotswap (httptools, uvloop, no access log), so hotswap ÷ this is
the share of the request path that is hotswap's own.
"""

from __future__ import annotations

import argparse

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ANSWER = orjson.dumps({"model_name": "tiny", "model_version": "1", "outputs": [
    {"name": "y", "datatype": "FP32", "shape": [1, 4], "data": [0.0, 0.0, 0.0, 0.0]},
    {"name": "z", "datatype": "FP32", "shape": [1, 1], "data": [0.0]}]})


async def infer(request: Request) -> Response:
    body = orjson.loads(await request.body())
    if not isinstance(body, dict) or "inputs" not in body:
        return Response(b'{"error": "inputs: expected a list"}', 400, media_type="application/json")
    return Response(ANSWER, media_type="application/json")


async def ready(request: Request) -> Response:
    return Response(b'{"ready": true}', media_type="application/json")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = Starlette(routes=[Route("/v2/models/{model}/infer", infer, methods=["POST"]),
                            Route("/v2/health/ready", ready)])
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False,
                http="httptools", loop="uvloop")


if __name__ == "__main__":
    main()
