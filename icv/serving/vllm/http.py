"""vLLM's OpenAI server with the ``steering`` request field: an endpoint plugin and a middleware.

:class:`SteeringEndpoints` is the ``vllm.endpoint_plugins`` entry point (vLLM loads
it when ``VLLM_PLUGINS`` names ``icv``).  It adds ``GET /v1/vectors`` and
:class:`SteeringMiddleware`, inside vLLM's own middleware (so after its API-key
check and CORS), which for ``POST /v1/completions`` and ``/v1/chat/completions``:

* reads the ``steering`` and ``steering_positions`` fields with
  :func:`icv.serving.parse_steering` and checks them against the loaded vectors:
  anything wrong is a 4xx in OpenAI's error shape, before vLLM sees the request;
* replaces them by the ``icv_steering`` extra argument (``vllm_xargs``) that the
  workers read, and sets ``cache_salt`` to the steering's fingerprint, so the
  prefix cache reuses a prompt's KV only under the same steering;
* adds ``steering`` to the response (to every event of a stream), as the transformers
  engine does: ``{"vectors": [{"vector", "strength"}...], "positions": ...}`` with every
  strength explicit, or ``null`` for none.

At start-up the plugin asks every worker (``collective_rpc``) what it steers with and
refuses to serve unless each hooked its model with the same vectors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.requests import ClientDisconnect, Request

from ...errors import RequestError
from ..http import error_response, read_body
from ..library import VectorLibrary
from ..request import (
    POSITIONS_FIELD,
    STEERING_FIELD,
    WHEN_FIELD,
    SteeringSpec,
    parse_steering,
    steering_json,
)
from .contract import PLUGIN_NAME, STATUS_METHOD, STEERING_ARG, cache_salt, encode, load_library, vector_paths
from .offline import check_workers

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

STEERED_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})
MAX_BODY_ENV = "ICV_MAX_BODY_BYTES"
DEFAULT_MAX_BODY = 4 * 1024 * 1024


class SteeringEndpoints:
    """The endpoint plugin: ``GET /v1/vectors``, the middleware, and the start-up check."""

    name = PLUGIN_NAME
    required_tasks = ("generate",)

    def attach_router(self, app: Any) -> None:
        from fastapi import APIRouter

        router = APIRouter()

        @router.get("/v1/vectors")
        async def vectors() -> dict[str, Any]:
            library = getattr(app.state, "icv_library", None)
            return {"object": "list", "data": library.describe() if library else []}

        app.include_router(router)
        app.add_middleware(SteeringMiddleware)

    async def init_state(self, engine_client: Any, state: Any, args: Any) -> None:
        state.icv_library = None
        if engine_client is None or not vector_paths():
            return
        library = load_library(engine_client.model_config)
        check_workers(await engine_client.collective_rpc(STATUS_METHOD), library.names)
        state.icv_library = library


class SteeringMiddleware:
    """Pure ASGI: turns the ``steering`` field into vLLM's extra argument and reports it back."""

    def __init__(
        self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_body: int | None = None
    ) -> None:
        self.app = app
        self.max_body = (
            max_body if max_body is not None else int(os.environ.get(MAX_BODY_ENV, DEFAULT_MAX_BODY))
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in STEERED_PATHS:
            await self.app(scope, receive, send)
            return
        library = getattr(scope["app"].state, "icv_library", None) if "app" in scope else None
        try:
            body = await read_body(Request(scope, receive), self.max_body)
            spec, body = rewrite(body, library)
        except ClientDisconnect:
            return  # gone before its request was whole: nothing to answer
        except RequestError as error:
            await error_response(error)(scope, receive, send)
            return
        await self.app(
            scope, _replay(body, receive), _annotating(send, {STEERING_FIELD: steering_json(spec)})
        )


def rewrite(body: bytes, library: VectorLibrary | None) -> tuple[SteeringSpec | None, bytes]:
    """``(steering, body for vLLM)``: the request's steering checked, resolved and moved into its extra args.

    A body that is not a JSON object goes to vLLM unchanged (its own 400 says why).
    """
    try:
        request = json.loads(body)
    except ValueError:
        return None, body
    if not isinstance(request, dict):
        return None, body
    xargs = request.get("vllm_xargs")
    if xargs is not None and not isinstance(xargs, dict):
        return None, body
    if xargs and STEERING_ARG in xargs:
        raise RequestError(
            f"'vllm_xargs.{STEERING_ARG}' is the server's: ask for steering with the "
            f"'{STEERING_FIELD}' field",
            param="vllm_xargs",
            code="invalid_steering",
        )
    if STEERING_FIELD not in request and POSITIONS_FIELD not in request and WHEN_FIELD not in request:
        return None, body
    spec = parse_steering(request)
    if spec is not None and spec.when is not None:
        raise RequestError(
            f"'{WHEN_FIELD}' (conditional steering) is not in the vLLM plugin yet: serve with "
            "`icv serve` (the transformers engine) for it",
            param=WHEN_FIELD,
            code="unsupported_parameter",
        )
    request.pop(WHEN_FIELD, None)
    request.pop(STEERING_FIELD, None)
    request.pop(POSITIONS_FIELD, None)
    if spec is not None:
        if library is None:
            raise RequestError(
                "this server has no steering vectors loaded (start it with vectors)",
                param=STEERING_FIELD,
                code="vector_not_found",
            )
        library.compose(spec)  # vectors that cannot combine are the client's error, not a worker's
        spec = library.resolve(spec)
        request["vllm_xargs"] = {**(xargs or {}), STEERING_ARG: encode(spec)}
        request["cache_salt"] = cache_salt(library.fingerprint(spec), request.get("cache_salt"))
    return spec, json.dumps(request).encode()


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then the client's own messages (disconnects)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _annotating(send: Send, fields: dict[str, Any]) -> Send:
    """A ``send`` that adds ``fields`` to a successful JSON response or to each event of a stream."""
    insert = json.dumps(fields, separators=(",", ":"))[1:-1].encode()
    start: Message | None = None
    stream = False
    pending = b""

    async def annotated(message: Message) -> None:
        nonlocal start, stream, pending
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers", []))
            stream = headers.get(b"content-type", b"").startswith(b"text/event-stream")
            if message["status"] != 200 or stream:
                start = None
                stream = stream and message["status"] == 200
                await send(message)
            else:
                start = message  # held back until the body's new length is known
            return
        if message["type"] != "http.response.body":
            await send(message)
            return
        more = message.get("more_body", False)
        if stream:
            pending += message.get("body", b"")
            complete, _, pending = pending.rpartition(b"\n\n")
            body = _annotate_events(complete + b"\n\n", insert) if complete else b""
            if not more:
                body += pending
                pending = b""
            await send({**message, "body": body})
            return
        if start is None:
            await send(message)
            return
        pending += message.get("body", b"")
        if more:
            return
        body = _annotate_json(pending, insert)
        kept = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": [*kept, (b"content-length", str(len(body)).encode())]})
        await send({**message, "body": body})

    return annotated


def _annotate_json(body: bytes, insert: bytes) -> bytes:
    """``{"steering": ..., <the object's own fields>}`` for a JSON object, else ``body`` unchanged."""
    text = body.lstrip()
    if not text.startswith(b"{"):
        return body
    rest = text[1:].lstrip()
    return b"{" + insert + (b"" if rest.startswith(b"}") else b",") + rest


def _annotate_events(events: bytes, insert: bytes) -> bytes:
    lines = events.split(b"\n")
    for i, line in enumerate(lines):
        if line.startswith(b"data: {"):
            lines[i] = b"data: " + _annotate_json(line[6:], insert)
    return b"\n".join(lines)
