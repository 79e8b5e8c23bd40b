"""What every route of ``icv serve`` shares: the server's limits, reading bodies, writing errors.

Bodies are read with a bound (refused from their declared length before a byte is
read, and again while reading); errors go out in OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``, with the status the
:class:`~icv.errors.RequestError` carries.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import RequestError
from .request import DEFAULT_MAX_VECTORS

# The deepest body a route reads is 5 levels (chat messages' content parts); any deeper is not ours.
MAX_JSON_DEPTH = 32


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask for, beyond what the engine checks."""

    max_body_bytes: int = 1 << 20
    max_vectors: int = DEFAULT_MAX_VECTORS
    max_upload_bytes: int = 16 << 20  # a vector file or a pair file
    max_pairs: int = 128  # pairs one extraction reads
    max_added_vectors: int = 32  # vectors extracted or uploaded, held at once (--max-vectors)
    max_text_tokens: int = 256  # tokens in one text of a pair to extract from
    max_extractions: int = 4  # extractions running or waiting at once; more get 503


async def read_body(request: Request, limit: int, what: str = "the body") -> bytes:
    """The request's body, refusing more than ``limit`` bytes before reading it whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(what, limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(what, limit)
    return bytes(body)


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The request's JSON object, declared ``application/json`` (else 415), at most ``limit`` bytes."""
    require_content_type(request, "application/json")
    return parse_json_object(await read_body(request, limit))


def parse_json_object(body: bytes) -> dict[str, Any]:
    """A JSON object of text: at most :data:`MAX_JSON_DEPTH` levels deep, no lone surrogates (else 400)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise RequestError(f"the body is not valid JSON: {error}", code="invalid_json") from None
    except RecursionError:  # nesting past the parser's own limit
        raise _too_deep() from None
    if not isinstance(data, dict):
        raise RequestError("the body must be a JSON object", code="invalid_json")
    _check_json_values(data)
    return data


def _check_json_values(data: Any) -> None:
    """Walk the parsed body (without recursion): bounded depth, strings that are text.

    JSON's ``\\ud800`` escape parses to a lone UTF-16 surrogate, a Python string that no
    tokenizer or UTF-8 writer takes: refused here, once, for every field of every route.
    """
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise _too_deep()
        if isinstance(value, str):
            _check_text(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                _check_text(key)
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)


def _check_text(value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = value[error.start : error.end]
        raise RequestError(
            f"the body holds a lone UTF-16 surrogate ({bad.encode('unicode_escape').decode()}), which is not text",
            code="invalid_json",
        ) from None


def _too_deep() -> RequestError:
    return RequestError(
        f"the body nests more than {MAX_JSON_DEPTH} levels of arrays and objects", code="invalid_json"
    )


def require_content_type(request: Request, expected: str) -> None:
    """Refuse (415) a body of another media type.

    Every POST route takes only a type a browser will not send to another site
    without asking it first (a CORS preflight, which this server grants only to
    ``--allowed-origins``), so a web page elsewhere cannot make a server on the
    user's machine generate, extract or take in a file.
    """
    given = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if given != expected:
        raise RequestError(
            f"send the body as {expected}, not {given or 'an untyped body'}",
            code="invalid_content_type",
            status=415,
        )


def _too_large(what: str, limit: int) -> RequestError:
    return RequestError(
        f"{what} is larger than this server accepts ({limit} bytes)", code="body_too_large", status=413
    )


def error_response(error: RequestError) -> JSONResponse:
    return JSONResponse(error.to_openai(), status_code=error.status)


async def unless_gone(request: Request, work: Awaitable[Response], cancel: Callable[[], None]) -> Response:
    """``work``'s response; if the client disconnects first, ``work`` is cancelled and ``cancel`` called."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            cancel()
    if not task.done() or task.cancelled():
        # Nobody reads it: the client is gone.  (A task asked to cancel is not cancelled until
        # it runs again, so its result cannot be read here: that was a 500 in the log.)
        return Response(status_code=499)
    return task.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
