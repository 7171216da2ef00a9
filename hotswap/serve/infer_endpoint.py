"""POST /v2/models/{model}[/versions/{version}]/infer: the one hot route, as plain ASGI.

Every other route goes through FastAPI's router, exception middleware and request objects.
Those layers cost more per request than hotswap's own decoding, batching and encoding of a
small request, so infer is answered here, in front of them: the path is matched by string,
the body read straight from `receive`, the answer sent as two ASGI messages. The errors are
the same as every route's: `{"error": ...}` with the error's status (Retry-After on a 503).
Its OpenAPI operation is described in hotswap.serve.schemas.
"""

from __future__ import annotations

import logging

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from hotswap.errors import ClientClosed, HotswapError, InvalidInput
from hotswap.serve.codec import decode_infer_request, encode_infer_response
from hotswap.serve.dataplane import DataPlane

log = logging.getLogger("hotswap.infer")

PREFIX = "/v2/models/"
SUFFIX = "/infer"
HEADER_LENGTH = b"inference-header-content-length"
#: Where hotswap's own HTTP protocol offers `answer(status, headers, body)`: a whole response in
#: one call (serve/protocol.py). Under any other ASGI server the answer is two ASGI messages.
ANSWER_EXTENSION = "hotswap.answer"


def infer_target(path: str) -> tuple[str, str | None] | None:
    """(model, version) for an infer path, None for any other path."""
    if not path.startswith(PREFIX) or not path.endswith(SUFFIX):
        return None
    parts = path[len(PREFIX):-len(SUFFIX)].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
        return parts[0], parts[2]
    return None


def request_timeout_s(parameters: dict) -> float | None:
    """Request `parameters.timeout` is in microseconds, as Triton and tritonclient use it."""
    value = parameters.get("timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise InvalidInput(f"parameters.timeout: expected a positive number of microseconds, got {value!r}")
    return value / 1e6


def header_length(scope: Scope) -> int | None:
    """The binary extension's Inference-Header-Content-Length, if sent."""
    for name, value in scope["headers"]:
        if name == HEADER_LENGTH:
            try:
                return int(value)
            except ValueError:
                raise InvalidInput("header Inference-Header-Content-Length: expected an integer, "
                                   f"got {value.decode('latin-1')!r}") from None
    return None


async def read_body(receive: Receive) -> bytes:
    message = await receive()
    if message["type"] != "http.request":
        raise ClientClosed("the client disconnected before sending its whole body")
    body = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while message.get("more_body", False):
        message = await receive()
        if message["type"] != "http.request":
            raise ClientClosed("the client disconnected before sending its whole body")
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


async def send_answer(send: Send, status: int, body: bytes, headers: dict[str, str], scope: Scope) -> None:
    extensions = scope.get("extensions")
    answer = extensions.get(ANSWER_EXTENSION) if extensions else None
    if answer is not None:
        await answer(status, headers, body)
        return
    raw = [(b"content-length", str(len(body)).encode())]
    raw += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class InferEndpoint:
    """ASGI middleware answering the infer route itself and passing every other request on."""

    def __init__(self, app: ASGIApp, plane: DataPlane) -> None:
        self.app = app
        self.plane = plane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = infer_target(scope["path"]) if scope["type"] == "http" else None
        if target is None:
            await self.app(scope, receive, send)
        elif scope["method"] != "POST":
            await send_answer(send, 405, orjson.dumps({"error": f"Method Not Allowed: {scope['method']} "
                                                                f"{scope['path']}; expected POST"}),
                              {"content-type": "application/json", "allow": "POST"}, scope)
        else:
            await self._infer(scope, receive, send, *target)

    async def _infer(self, scope: Scope, receive: Receive, send: Send, model: str, version: str | None) -> None:
        try:
            with self.plane.call(model, version) as call:
                decoded = decode_infer_request(await read_body(receive), header_length(scope))
                outputs = await call.infer(decoded.inputs, request_timeout_s(decoded.parameters), scope, receive)
                payload, headers = encode_infer_response(model, call.version, outputs, decoded)
        except HotswapError as exc:
            extra = {"retry-after": "1"} if exc.status == 503 else {}
            await send_answer(send, exc.status, orjson.dumps({"error": str(exc)}),
                              {"content-type": "application/json", **extra}, scope)
            return
        except Exception as exc:
            # The text may hold paths or internals: it goes to the log, the client gets the type only.
            log.exception("unexpected error on %s", scope["path"])
            message = f"internal error ({type(exc).__name__}); details are in the server log"
            await send_answer(send, 500, orjson.dumps({"error": message}), {"content-type": "application/json"}, scope)
            return
        await send_answer(send, 200, payload, headers, scope)
