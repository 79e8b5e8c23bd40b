"""The playground page at ``/``: three files shipped in the package, and the settings it reads.

The page (``static/index.html``, ``playground.js``, ``playground.css``) is a client
of the HTTP API like any other: it lists vectors with ``GET /v1/vectors``,
generates with ``POST /v1/completions`` or ``/v1/chat/completions`` (one streamed
request per column, sent together so the engine batches them), and makes vectors
with the routes of :mod:`icv.serving.vector_routes`.  ``GET /v1/playground`` tells
it what it cannot ask elsewhere: the served model, the paraphrase prompt around a
sentence (from :func:`icv.prompts.paraphrase_prompt`, so the page never writes a
prompt format of its own) and where its answer ends (the stop strings of
:func:`icv.prompts.cut_answer`), whether the model has a chat template, and the limits.

The files are served with a content security policy that allows this server only:
the page loads nothing from the internet and runs no inline script.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..prompts import ANSWER_ENDS, paraphrase_prompt
from .engine import Engine
from .http import ServerLimits
from .request import DEFAULT_MAX_STRENGTH

STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "playground.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
}
PATHS = {"/": "index.html", "/playground.js": "playground.js", "/playground.css": "playground.css"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
_MARK = "\x00"


def static_file(name: str) -> bytes:
    """One of the page's files, as the package ships it."""
    return (resources.files("icv.serving") / "static" / name).read_bytes()


def prompt_formats() -> dict[str, dict[str, Any]]:
    """Each prompt format: the text before and after the user's sentence, and where its answer ends."""
    before, after = paraphrase_prompt(_MARK).split(_MARK)
    return {"paraphrase": {"before": before, "after": after, "stop": list(ANSWER_ENDS)}}


class Playground:
    """The page's handlers."""

    def __init__(self, engine: Engine, model_id: str, limits: ServerLimits) -> None:
        self.engine = engine
        self.model_id = model_id
        self.limits = limits
        self.files = {name: static_file(name) for name in STATIC_FILES}

    async def page(self, request: Request) -> Response:
        name = PATHS[request.url.path]
        return Response(self.files[name], media_type=STATIC_FILES[name], headers=SECURITY_HEADERS)

    async def settings(self, _request: Request) -> Response:
        return JSONResponse(self.describe())

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model_id,
            "prompt_formats": prompt_formats(),
            "chat": bool(getattr(self.engine.tokenizer, "chat_template", None)),
            "limits": {
                "max_tokens": self.engine.max_tokens,
                "max_strength": DEFAULT_MAX_STRENGTH,
                "max_vectors": self.limits.max_vectors,
                "max_upload_bytes": self.limits.max_upload_bytes,
                "max_pairs": self.limits.max_pairs,
            },
        }
