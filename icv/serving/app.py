"""The HTTP routes of ``icv serve``: OpenAI's completions and chat completions, with steering.

``POST /v1/completions`` and ``POST /v1/chat/completions`` (both with
``stream: true`` as server-sent events ending in ``data: [DONE]``), ``GET
/v1/models``, ``GET /v1/vectors`` and ``GET /health``.  Every error is a JSON
body in OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``)
with a 4xx status for the client's mistakes; the server keeps serving.  A
client that goes away, mid-stream or while waiting for a whole response, has its
rows dropped from the batch at the next step.

The routes only translate: :mod:`icv.serving.protocol` checks bodies and writes
responses, :class:`icv.serving.library.VectorLibrary` resolves steering, and the
:class:`icv.serving.engine.Engine` generates.  The application also holds the
routes that make and move vectors (:mod:`icv.serving.vector_routes`) and the
playground page at ``/`` (:mod:`icv.serving.page`), a client of these routes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import RequestError
from ..models import model_name_of
from . import protocol
from .access import AccessPolicy, middleware
from .bridge import Call
from .engine import Engine, Failed, Finished, TextDelta
from .http import ServerLimits, error_response, read_json, unless_gone
from .library import VectorLibrary, public_name
from .page import PATHS, Playground
from .request import steering_json
from .sampling import SamplingParams
from .steering import RowSteering
from .vector_routes import VectorRoutes

log = logging.getLogger("icv.serving")


class OpenAIRoutes:
    """The handlers, sharing one engine, one vector library and the served model's name."""

    def __init__(self, engine: Engine, library: VectorLibrary, model_id: str, limits: ServerLimits) -> None:
        self.engine = engine
        self.library = library
        self.model_id = model_id
        self.limits = limits
        self.started = int(time.time())

    # -- reading endpoints --

    async def health(self, _request: Request) -> Response:
        body = {"status": "ok", "model": self.model_id, **self.engine.load()}
        # A compiled engine refuses vectors of other injections: say which it takes.
        body["compiled_injections"] = self.engine.compiled_injections
        return JSONResponse(body)

    async def models(self, _request: Request) -> Response:
        model = {"id": self.model_id, "object": "model", "created": self.started, "owned_by": "icv"}
        return JSONResponse({"object": "list", "data": [model]})

    async def vectors(self, _request: Request) -> Response:
        unfit = [{"name": name, "reason": reason} for name, reason in sorted(self.library.unfit.items())]
        # Conditions (steering_when's names) beside the vectors: a list of their own, so that a
        # client reading "data" for vectors never takes a condition for one.
        conditions = self.library.describe_conditions()
        body = {"object": "list", "data": self.library.describe(), "conditions": conditions, "unfit": unfit}
        return JSONResponse(body)

    # -- generating endpoints --

    async def completions(self, request: Request) -> Response:
        body = await read_json(request, self.limits.max_body_bytes)
        parsed = protocol.parse_completion(body, max_vectors=self.limits.max_vectors)
        prompts = [self._encode(p, special=True) for p in parsed.prompts]
        return await self._generate(request, parsed, prompts, chat=False)

    async def chat(self, request: Request) -> Response:
        body = await read_json(request, self.limits.max_body_bytes)
        parsed = protocol.parse_chat(body, max_vectors=self.limits.max_vectors)
        # The chat template writes the special tokens itself (as apply_chat_template(tokenize=True) does).
        prompts = [self._encode(self._render(parsed.messages), special=False)]
        return await self._generate(request, parsed, prompts, chat=True)

    async def _generate(
        self, request: Request, parsed: protocol.GenerationRequest, prompts: list[list[int]], chat: bool
    ) -> Response:
        self._check_model(parsed.model)
        spec = self.library.resolve(parsed.steering) if parsed.steering is not None else None
        steering = (
            RowSteering(
                self.library.compose(spec),
                spec.positions,
                None if spec.when is None else self.library.rule(spec.when),
            )
            if spec is not None
            else None
        )
        params = [self._params(parsed, ids, chat) for ids in prompts]
        call = Call(self.engine)
        call.submit(prompts, params, steering)
        envelope = protocol.Envelope.new("chatcmpl" if chat else "cmpl", self.model_id, steering_json(spec))
        if parsed.stream:
            stream = chat_stream if chat else completion_stream
            return StreamingResponse(
                _cancelling(call, stream(call, envelope, parsed.include_usage)),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        return await unless_gone(request, whole_response(call, envelope, chat, len(prompts)), call.cancel)

    def _params(self, parsed: protocol.GenerationRequest, ids: list[int], chat: bool) -> SamplingParams:
        if chat and not parsed.max_tokens_given:
            # OpenAI's chat has no default length: as much as the server allows and the context leaves.
            room = max(1, min(self.engine.max_tokens, self.engine.context - len(ids)))
            return replace(parsed.params, max_tokens=room)
        return parsed.params

    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_id:
            raise RequestError(
                f"the model '{model:.80}' does not exist here; this server serves '{self.model_id}'",
                param="model",
                code="model_not_found",
                status=404,
            )

    def _encode(self, prompt: str | tuple[int, ...], *, special: bool) -> list[int]:
        if isinstance(prompt, tuple):
            return list(prompt)
        return list(self.engine.tokenizer(prompt, add_special_tokens=special)["input_ids"])

    def _render(self, messages: tuple[dict[str, str], ...]) -> str:
        tokenizer = self.engine.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise RequestError(
                "this model has no chat template: use /v1/completions",
                param="messages",
                code="no_chat_template",
            )
        try:
            return tokenizer.apply_chat_template(
                [dict(m) for m in messages], tokenize=False, add_generation_prompt=True
            )
        except Exception as error:  # the template's own checks (jinja2 errors), e.g. roles out of order
            raise RequestError(
                f"the chat template refused these messages: {error}",
                param="messages",
                code="invalid_messages",
            ) from None


# -- responses -------------------------------------------------------------------------


async def whole_response(call: Call, envelope: protocol.Envelope, chat: bool, count: int) -> Response:
    """Wait for every prompt's completion; one JSON response (or the first failure's error)."""
    done: dict[int, Finished] = {}
    async for index, event in call.events():
        if isinstance(event, Failed):
            return error_response(event.error)
        if isinstance(event, Finished):
            done[index] = event
    results = [done[i] for i in range(count)]
    choice = protocol.chat_choice if chat else protocol.completion_choice
    choices = [_decided(choice(i, r.text, r.reason), r) for i, r in enumerate(results)]
    usage = protocol.summed_usage([(r.prompt_tokens, r.completion_tokens) for r in results])
    return JSONResponse(envelope.wrap("chat.completion" if chat else "text_completion", choices, usage=usage))


async def completion_stream(
    call: Call, envelope: protocol.Envelope, include_usage: bool
) -> AsyncIterator[str]:
    counts: list[tuple[int, int]] = []
    async for index, event in call.events():
        if isinstance(event, TextDelta):
            yield sse(envelope.wrap("text_completion", [protocol.completion_choice(index, event.text, None)]))
        elif isinstance(event, Finished):
            counts.append((event.prompt_tokens, event.completion_tokens))
            choice = _decided(protocol.completion_choice(index, "", event.reason), event)
            yield sse(envelope.wrap("text_completion", [choice]))
        else:
            yield sse(event.error.to_openai())
            break
    else:
        if include_usage:
            yield sse(envelope.wrap("text_completion", [], usage=protocol.summed_usage(counts)))
    yield "data: [DONE]\n\n"


async def chat_stream(call: Call, envelope: protocol.Envelope, include_usage: bool) -> AsyncIterator[str]:
    kind = "chat.completion.chunk"
    yield sse(envelope.wrap(kind, [protocol.chat_delta(0, {"role": "assistant", "content": ""}, None)]))
    counts: list[tuple[int, int]] = []
    async for index, event in call.events():
        if isinstance(event, TextDelta):
            yield sse(envelope.wrap(kind, [protocol.chat_delta(index, {"content": event.text}, None)]))
        elif isinstance(event, Finished):
            counts.append((event.prompt_tokens, event.completion_tokens))
            yield sse(envelope.wrap(kind, [_decided(protocol.chat_delta(index, {}, event.reason), event)]))
        else:
            yield sse(event.error.to_openai())
            break
    else:
        if include_usage:
            yield sse(envelope.wrap(kind, [], usage=protocol.summed_usage(counts)))
    yield "data: [DONE]\n\n"


def _decided(choice: dict[str, Any], finished: Finished) -> dict[str, Any]:
    """``choice`` with conditional steering's decision for its prompt (none without a rule)."""
    if finished.decision is not None:
        choice["steering_decision"] = finished.decision
    return choice


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


async def _cancelling(call: Call, chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    """``chunks``, and the request's rows dropped however the stream ends (a client gone included)."""
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        call.cancel()


# -- errors ----------------------------------------------------------------------------


async def _request_error(_request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestError)
    return error_response(error)


async def _http_error(_request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    return error_response(RequestError(str(error.detail), code=code, status=error.status_code))


async def _server_error(_request: Request, error: Exception) -> Response:
    log.error("unexpected error in a request", exc_info=error)
    return error_response(
        RequestError(f"internal server error: {type(error).__name__}", code="server_error", status=500)
    )


# -- the application -------------------------------------------------------------------


def create_app(
    engine: Engine,
    library: VectorLibrary,
    *,
    model_id: str | None = None,
    limits: ServerLimits | None = None,
    access: AccessPolicy | None = None,
) -> Starlette:
    """The ASGI application serving ``engine``'s model with ``library``'s vectors.

    ``access``: who may use it (:mod:`icv.serving.access`); by default no key, and
    the ``Host`` names of a server on the loopback address.
    """
    limits = limits or ServerLimits()
    access = access or AccessPolicy()
    model_id = model_id or public_name(model_name_of(engine.model)) or "model"
    routes = OpenAIRoutes(engine, library, model_id, limits)
    made = VectorRoutes(engine, library, limits, access)
    page = Playground(engine, model_id, limits)
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        RequestError: _request_error,
        HTTPException: _http_error,
        Exception: _server_error,
    }
    return Starlette(
        routes=[
            Route("/v1/completions", routes.completions, methods=["POST"]),
            Route("/v1/chat/completions", routes.chat, methods=["POST"]),
            Route("/v1/models", routes.models, methods=["GET"]),
            Route("/v1/vectors", routes.vectors, methods=["GET"]),
            Route("/health", routes.health, methods=["GET"]),
            Route("/v1/vectors/extract", made.extract, methods=["POST"]),
            Route("/v1/vectors/upload", made.upload, methods=["POST"]),
            Route("/v1/vectors/{name}/download", made.download, methods=["GET"]),
            Route("/v1/vectors/{name}", made.delete, methods=["DELETE"]),
            Route("/v1/demos/parse", made.parse_demos, methods=["POST"]),
            Route("/v1/playground", page.settings, methods=["GET"]),
            *[Route(path, page.page, methods=["GET"]) for path in PATHS],
        ],
        exception_handlers=handlers,
        middleware=middleware(access),
    )
