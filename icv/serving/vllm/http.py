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
  strength explicit, or ``null`` for none;
* for conditional steering (``steering_when``), gives the request an id of its own
  (``vllm_xargs.icv_gate``, and a cache salt of its own: the decision is not known
  before the prefill), and adds each prompt's ``steering_decision`` to its choice
  (a stream's: to the chunk that finishes it), asked from the workers
  (:mod:`.gating`) through ``collective_rpc``.

At start-up the plugin asks every worker (``collective_rpc``) what it steers with and
refuses to serve unless each hooked its model with the same vectors.
"""

from __future__ import annotations

import json
import os
import uuid
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
from .contract import (
    DECISIONS_METHOD,
    GATE_ARG,
    PLUGIN_NAME,
    STATUS_METHOD,
    STEERING_ARG,
    cache_salt,
    encode,
    load_library,
    vector_paths,
)
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
            # Conditions (steering_when's names) in a list of their own, as icv serve's transformers engine lists them.
            conditions = library.describe_conditions() if library else []
            return {"object": "list", "data": library.describe() if library else [], "conditions": conditions}

        app.include_router(router)
        app.add_middleware(SteeringMiddleware)

    async def init_state(self, engine_client: Any, state: Any, args: Any) -> None:
        state.icv_library = None
        state.icv_engine = engine_client
        state.icv_gating = "the server has no steering vectors loaded"
        if engine_client is None or not vector_paths():
            return
        library = load_library(engine_client.model_config)
        statuses = await engine_client.collective_rpc(STATUS_METHOD)
        check_workers(statuses, library.names)
        state.icv_gating = gating_of(statuses)
        state.icv_library = library


def gating_of(statuses: list[Any]) -> str:
    """Why the workers cannot gate requests ("" if every one can)."""
    for status in statuses:
        refusal = str(status.get("gating", "this worker does not gate requests"))
        if refusal:
            return refusal
    return ""


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
        state = scope["app"].state if "app" in scope else None
        library = getattr(state, "icv_library", None)
        try:
            body = await read_body(Request(scope, receive), self.max_body)
            spec, body = rewrite(body, library, getattr(state, "icv_gating", "its workers were not asked"))
        except ClientDisconnect:
            return  # gone before its request was whole: nothing to answer
        except RequestError as error:
            await error_response(error)(scope, receive, send)
            return
        annotated = _annotating(send, {STEERING_FIELD: steering_json(spec)})
        if spec is not None and spec.when is not None:
            gate_id = json.loads(body)["vllm_xargs"][GATE_ARG]
            fetch = _fetcher(getattr(state, "icv_engine", None), gate_id)
            annotated = _deciding(annotated, fetch, scope["path"] == "/v1/completions")
        await self.app(scope, _replay(body, receive), annotated)


def rewrite(
    body: bytes, library: VectorLibrary | None, gating: str = ""
) -> tuple[SteeringSpec | None, bytes]:
    """``(steering, body for vLLM)``: the request's steering checked, resolved and moved into its extra args.

    ``gating``: why the engine cannot decide a ``steering_when`` rule ("" if it can).
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
        spec = library.resolve(spec)  # a rule naming an unknown or unfit condition: 400 here
        xargs = {**(xargs or {}), STEERING_ARG: encode(spec)}
        fingerprint = library.fingerprint(spec)
        if spec.when is not None:
            check_gated(request, gating)
            # Its own id, and its own cache salt: the decision is made at the prefill, so no
            # prefix computed for another request (decided otherwise) may be reused.
            xargs[GATE_ARG] = uuid.uuid4().hex
            fingerprint = f"{fingerprint}-{xargs[GATE_ARG]}"
        request["vllm_xargs"] = xargs
        request["cache_salt"] = cache_salt(fingerprint, request.get("cache_salt"))
    return spec, json.dumps(request).encode()


def check_gated(request: dict[str, Any], gating: str) -> None:
    """Refuse (400) a ``steering_when`` the engine cannot decide, or one that asks for several choices."""
    if gating:
        raise RequestError(
            f"'{WHEN_FIELD}' (conditional steering) cannot be served by this engine: {gating}",
            param=WHEN_FIELD,
            code="unsupported_parameter",
        )
    for field in ("n", "best_of"):
        value = request.get(field)
        if value is not None and value != 1:
            raise RequestError(
                f"'{WHEN_FIELD}' takes one choice per prompt on the vLLM engine ('{field}' must be 1): "
                "send the prompt again for more",
                param=field,
                code="unsupported_parameter",
            )


def _fetcher(engine: Any, gate_id: str) -> Callable[[], Awaitable[dict[str, dict[str, Any]]]]:
    """An async call giving the workers' decisions so far for ``gate_id``: vLLM request id -> decision."""

    async def fetch() -> dict[str, dict[str, Any]]:
        if engine is None:
            return {}
        answers = await engine.collective_rpc(DECISIONS_METHOD, args=([gate_id],))
        first = answers[0] if answers else {}
        return dict(first.get(gate_id, {}))

    return fetch


def choice_index(request_id: str, completions: bool) -> int | None:
    """Which prompt a vLLM request id is: ``cmpl-<id>-<prompt>-<suffix>`` for completions;
    ``None`` for a chat request (one prompt: every choice)."""
    if not completions:
        return None
    parts = request_id.rsplit("-", 2)
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def decisions_by_choice(
    found: dict[str, dict[str, Any]], completions: bool
) -> dict[int | None, dict[str, Any]]:
    """The workers' decisions keyed by choice index (``None``: a chat request's one decision)."""
    return {choice_index(rid, completions): decision for rid, decision in found.items()}


def _deciding(
    send: Send, fetch: Callable[[], Awaitable[dict[str, dict[str, Any]]]], completions: bool
) -> Send:
    """A ``send`` that adds each choice's ``steering_decision`` (a stream's: to the chunk that finishes it)."""
    known: dict[int | None, dict[str, Any]] = {}
    start: Message | None = None
    stream = False
    pending = b""

    async def decision(index: int) -> dict[str, Any] | None:
        if index not in known and None not in known:
            known.update(decisions_by_choice(await fetch(), completions))
        return known.get(index, known.get(None))

    async def decided(payload: bytes) -> bytes:
        try:
            data = json.loads(payload)
        except ValueError:
            return payload
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list):
            return payload
        changed = False
        for choice in choices:
            if isinstance(choice, dict) and choice.get("finish_reason") is not None:
                found = await decision(int(choice.get("index", 0)))
                if found is not None:
                    choice["steering_decision"] = found
                    changed = True
        return json.dumps(data, separators=(",", ":")).encode() if changed else payload

    async def deciding(message: Message) -> None:
        nonlocal start, stream, pending
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers", []))
            stream = message["status"] == 200 and headers.get(b"content-type", b"").startswith(
                b"text/event-stream"
            )
            start = message if message["status"] == 200 and not stream else None
            if start is None:
                await send(message)
            return
        if message["type"] != "http.response.body":
            await send(message)
            return
        more = message.get("more_body", False)
        if start is None and not stream:
            await send(message)
            return
        pending += message.get("body", b"")
        if stream:
            complete, _, pending = pending.rpartition(b"\n\n")
            out = b""
            if complete:
                events = (complete + b"\n\n").split(b"\n")
                for i, line in enumerate(events):
                    if line.startswith(b"data: {"):
                        events[i] = b"data: " + await decided(line[6:])
                out = b"\n".join(events)
            if not more:
                out += pending
                pending = b""
            await send({**message, "body": out})
            return
        if more:
            return
        body = await decided(pending)
        assert start is not None
        kept = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": [*kept, (b"content-length", str(len(body)).encode())]})
        await send({**message, "body": body})

    return deciding


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
