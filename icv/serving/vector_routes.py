"""The routes that make and move vectors: extract one from pairs, upload, download, read a pair file.

``POST /v1/vectors/extract``
    ``{"name": "polite", "pairs": [{"source": ..., "target": ...}, ...]}`` (or
    ``[source, target]`` pairs): :func:`icv.extract` on the served model, run on the
    engine's worker thread (the only thread that may hook the model), and the vector
    is served under ``name`` from then on.  201 with the vector's description (as in
    ``GET /v1/vectors``).
``POST /v1/vectors/upload?name=NAME&filename=FILE``
    The body is a vector file (icv safetensors or a GGUF control vector), read as
    ``--vectors`` reads files (every byte checked before use), and served as ``NAME``.
``DELETE /v1/vectors/{name}``
    Stop serving a vector added while the server runs (vectors loaded from files at
    start are permanent: 403); its room counts again toward ``--max-vectors``.
``GET /v1/vectors/{name}/download?format=safetensors|gguf``
    A served vector as a file: icv's safetensors, or a llama.cpp control vector
    (:func:`icv.export_gguf`, its default strength folded in).
``POST /v1/demos/parse?filename=FILE``
    The body is a pair file (JSONL, JSON, CSV or TSV, by ``FILE``'s suffix), read by
    :func:`icv.demos.parse_demos`; the pairs come back for the page to show.

Bad input gets OpenAI's error shape with a 4xx status, as on every other route.
Uploads are bounded (``ServerLimits.max_upload_bytes``, checked before the body is
read), added vectors are bounded in number, and names already served are refused
(409) rather than replaced.  The writing routes take only ``application/json`` or
``application/octet-stream`` bodies: a browser must ask before sending those to
another site, so a web page elsewhere cannot post to a server on this machine.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..demos import Demo, as_demos, parse_demos
from ..errors import DemoError, ICVError, ModelMismatchError, RequestError, VectorFileError
from ..extract import Steps, extract_steps
from ..storage import to_bytes
from ..vector import InContextVector
from .access import AccessPolicy
from .engine import Engine, SlicedTask
from .http import ServerLimits, read_body, read_json, require_content_type, unless_gone
from .library import ModelShape, VectorLibrary, read_vector_file

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SUFFIX_PATTERN = re.compile(r"\.[A-Za-z0-9]{1,16}")
FORMATS = {"safetensors": "application/octet-stream", "gguf": "application/octet-stream"}


class VectorRoutes:
    """The handlers, sharing the server's engine, vector library and limits."""

    def __init__(
        self, engine: Engine, library: VectorLibrary, limits: ServerLimits, access: AccessPolicy
    ) -> None:
        self.engine = engine
        self.library = library
        self.limits = limits
        self.access = access
        self.added: list[str] = []  # names this server took in (extracted or uploaded), oldest first
        self.reserved: dict[str, str] = {}  # names being extracted or uploaded now -> "extract"/"upload"

    async def extract(self, request: Request) -> Response:
        self.access.check_writes()
        body = await read_json(request, self.limits.max_body_bytes)
        _check_fields(body, {"name", "pairs"})
        demos = _pairs(body.get("pairs"), self.limits.max_pairs)
        name = self._free_name(body.get("name"))
        extracting = sum(kind == "extract" for kind in self.reserved.values())
        if extracting >= self.limits.max_extractions:
            raise RequestError(
                f"the server is busy ({extracting} extractions running or waiting); retry later",
                code="server_busy",
                status=503,
            )
        with self._reserving(name, "extract"):
            self._check_lengths(demos)  # on the loop's thread, as prompts are: one tokenizer, one thread
            budget = self.engine.policy.prefill_chunk
            tokenizer = self.engine.tokenizer

            def steps(model: Any) -> Steps[InContextVector]:
                return extract_steps(
                    model, tokenizer, demos, name=name, progress=False, max_batch_tokens=budget
                )

            task = self.engine.run_in_slices(steps)
            return await unless_gone(request, self._extracted(name, task), task.cancel)

    async def _extracted(self, name: str, task: SlicedTask[InContextVector]) -> Response:
        try:
            vector = await asyncio.wrap_future(task.future)
        except ICVError as error:
            if isinstance(error, RequestError):
                raise
            raise RequestError(
                f"extraction failed: {error}", param="pairs", code="extraction_failed"
            ) from None
        return self._added(name, vector)

    async def upload(self, request: Request) -> Response:
        self.access.check_writes()
        require_content_type(request, "application/octet-stream")
        name = self._free_name(request.query_params.get("name"))
        with self._reserving(name, "upload"):
            filename = _upload_filename(request.query_params.get("filename"), name)
            data = await read_body(request, self.limits.max_upload_bytes, what="the vector file")
            vector = await asyncio.to_thread(read_uploaded_vector, data, filename, self.library.shape)
            return self._added(name, vector)

    async def delete(self, request: Request) -> Response:
        """Stop serving a vector added while the server runs (OpenAI's deletion shape)."""
        self.access.check_writes()
        name = request.path_params["name"]
        try:
            self.library.remove(name)
        except RequestError as error:
            if error.code == "vector_not_found":
                error.status = 404
            raise
        self.added.remove(name)
        return JSONResponse({"id": name, "object": "vector", "deleted": True})

    async def download(self, request: Request) -> Response:
        name = request.path_params["name"]
        try:
            vector = self.library.get(name).vector
        except RequestError as error:
            error.status = 404  # the address names nothing here
            raise
        kind = request.query_params.get("format", "safetensors")
        if kind not in FORMATS:
            raise RequestError(
                f"'format' must be one of {', '.join(FORMATS)}, got {kind!r:.40}",
                param="format",
                code="invalid_value",
            )
        data = to_bytes(vector) if kind == "safetensors" else await asyncio.to_thread(gguf_bytes, vector)
        disposition = f'attachment; filename="{_ascii_name(name)}.{kind}"'
        return Response(data, media_type=FORMATS[kind], headers={"Content-Disposition": disposition})

    async def parse_demos(self, request: Request) -> Response:
        require_content_type(request, "application/octet-stream")
        filename = request.query_params.get("filename") or ""
        if not filename or "/" in filename or "\\" in filename:
            raise RequestError(
                "'filename' must be the pair file's name (its suffix decides the format)",
                param="filename",
                code="invalid_value",
            )
        data = await read_body(request, self.limits.max_upload_bytes, what="the pair file")
        try:
            demos = parse_demos(data, filename)
        except DemoError as error:
            raise RequestError(str(error), param="file", code="invalid_pairs") from None
        _check_count(demos, self.limits.max_pairs, "file")
        pairs = [{"source": d.source, "target": d.target} for d in demos]
        return JSONResponse({"object": "list", "data": pairs})

    @contextmanager
    def _reserving(self, name: str, kind: str) -> Iterator[None]:
        """Hold ``name`` while it is being made: other requests for it get 409 at once."""
        self.reserved[name] = kind
        try:
            yield
        finally:
            del self.reserved[name]

    def _check_lengths(self, demos: Sequence[Demo]) -> None:
        """Refuse (400, naming the text and the limit) a text longer than the server extracts from."""
        limit = min(self.limits.max_text_tokens, self.engine.context)
        tokenizer = self.engine.tokenizer
        for i, demo in enumerate(demos):
            for side in ("source", "target"):
                text = getattr(demo, side)
                # A token holds at most a few characters: a far longer text needs no tokenizing.
                huge = len(text) > 16 * limit
                count = len(text) if huge else len(tokenizer(text)["input_ids"])
                if count > limit:
                    raise RequestError(
                        f"pairs[{i}].{side} is {'over ' if huge else ''}{count} tokens; this server "
                        f"extracts from texts of at most {limit} tokens (--max-text-tokens)",
                        param=f"pairs[{i}].{side}",
                        code="text_too_long",
                    )

    def _free_name(self, value: object) -> str:
        """``value`` as the name of a new vector: well formed, not served or being made, room for one more."""
        if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
            raise RequestError(
                f"a vector's name is 1 to 64 letters, digits, '.', '_' or '-' (starting with a letter or "
                f"digit), got {value!r:.70}",
                param="name",
                code="invalid_name",
            )
        if value in self.library.names or value in self.library.unfit:
            raise RequestError(
                f"a vector named '{value}' is already loaded: choose another name",
                param="name",
                code="name_taken",
                status=409,
            )
        if value in self.reserved:
            raise RequestError(
                f"a vector named '{value}' is being made by another request: choose another name",
                param="name",
                code="name_taken",
                status=409,
            )
        held = len(self.added) + len(self.reserved)
        if held >= self.limits.max_added_vectors:
            raise RequestError(
                f"this server holds {held} vectors added while it runs, its limit (--max-vectors): "
                "delete one (DELETE /v1/vectors/NAME) to make room",
                param="name",
                code="too_many_vectors",
                status=409,
            )
        return value

    def _added(self, name: str, vector: InContextVector) -> Response:
        try:
            self.library.add(name, vector.with_metadata(name=name))
        except ModelMismatchError as error:
            raise RequestError(str(error), param="name", code="vector_mismatch") from None
        self.added.append(name)
        described = next(item for item in self.library.describe() if item["name"] == name)
        return JSONResponse({"object": "vector", **described}, status_code=201)


def read_uploaded_vector(data: bytes, filename: str, shape: ModelShape | None = None) -> InContextVector:
    """A vector from an uploaded file's bytes, read as ``--vectors`` reads a file (errors name ``filename``)."""
    with tempfile.TemporaryDirectory(prefix="icv-upload-") as folder:
        path = Path(folder) / filename
        path.write_bytes(data)
        try:
            return read_vector_file(path, shape)
        except (VectorFileError, ICVError) as error:
            message = str(error).replace(str(path), filename)
            raise RequestError(message, param="file", code="invalid_vector_file") from None


def gguf_bytes(vector: InContextVector) -> bytes:
    """``vector`` as a GGUF control vector file's bytes (:func:`icv.export_gguf`'s defaults)."""
    from ..gguf import export_gguf

    with tempfile.TemporaryDirectory(prefix="icv-gguf-") as folder:
        path = Path(folder) / "vector.gguf"
        try:
            export_gguf(vector, path)
        except ICVError as error:  # the gguf package missing, a one-layer vector
            raise RequestError(
                f"cannot write this vector as GGUF: {error}", param="format", code="gguf_unavailable"
            ) from None
        return path.read_bytes()


def _pairs(value: object, limit: int) -> list[Demo]:
    if not isinstance(value, list) or not value:
        raise RequestError(
            '\'pairs\' must be a non-empty list of {"source", "target"} objects or [source, target] lists',
            param="pairs",
            code="invalid_pairs",
        )
    try:
        demos = as_demos(value)
    except DemoError as error:
        raise RequestError(f"'pairs': {error}", param="pairs", code="invalid_pairs") from None
    _check_count(demos, limit, "pairs")
    return demos


def _check_count(demos: Sequence[Demo], limit: int, param: str) -> None:
    if len(demos) > limit:
        raise RequestError(
            f"{len(demos)} pairs; this server extracts from at most {limit}",
            param=param,
            code="too_many_pairs",
        )


def _check_fields(body: Mapping[str, Any], known: set[str]) -> None:
    for key in body:
        if key not in known:
            raise RequestError(
                f"unrecognized request argument '{key:.60}'", param=key, code="unknown_parameter"
            )


def _upload_filename(value: str | None, name: str) -> str:
    """The name the uploaded bytes are read under: ``name`` with the file's suffix (if it has a plain one)."""
    suffix = Path(value or "").suffix
    return name + (suffix if SUFFIX_PATTERN.fullmatch(suffix) else "")


def _ascii_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "vector"
