"""Running the transformers engine's HTTP server: in the foreground (``icv serve``) or in a thread.

:func:`serve` blocks until Ctrl-C; :class:`BackgroundServer` starts the same server on
a thread of this process (for tests, notebooks and benchmarks) and stops it on exit.
Both bind the loopback address unless told otherwise; who may use the server is
an :class:`~icv.serving.access.AccessPolicy` (API key, host names, origins, writes).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from ..distribution import DISTRIBUTION
from ..errors import ICVError
from .access import AccessPolicy
from .address import DEFAULT_HOST, DEFAULT_PORT
from .app import ServerLimits, create_app
from .compiled import Compilation
from .engine import BatchingPolicy, Engine
from .library import ModelShape, VectorLibrary


def load_library(model: nn.Module, paths: Iterable[str | os.PathLike[str]]) -> VectorLibrary:
    """The vectors under ``paths`` that fit ``model`` (the others kept aside with the reason)."""
    return VectorLibrary.load(list(paths), ModelShape.of(model))


def bound(access: AccessPolicy | None, host: str) -> AccessPolicy:
    """``access``, or by default no key and the names of a server listening on ``host``.

    A given policy is kept as it is: its ``bound_host`` is what decides whether
    writing routes are on (the command line sets it to ``--host``).
    """
    return access if access is not None else AccessPolicy(bound_host=host)


def start_engine(
    model: nn.Module,
    tokenizer: Any,
    library: VectorLibrary,
    policy: BatchingPolicy | None,
    max_tokens: int,
    compilation: Compilation | None,
) -> Engine:
    """The server's engine, started; compiled (and warmed up) when ``compilation`` is given.

    A compiled engine prepares the injections of ``compilation`` and of every vector in
    ``library``, and makes its graphs before returning, so no request waits for them.
    """
    if compilation is not None:
        compilation = compilation.with_injections(library.injections)
    engine = Engine(model, tokenizer, policy=policy, max_tokens=max_tokens, compilation=compilation)
    try:
        engine.warm_up()
    except BaseException:
        engine.close()
        raise
    return engine


def uvicorn_server(app: Any, host: str, port: int, log_level: str = "warning") -> Any:
    """A uvicorn server for ``app`` (port 0: any free port, read back from ``bound_port``)."""
    try:
        import uvicorn
    except ImportError as error:  # a dependency, so only a broken install gets here
        raise ICVError(
            f"serving needs uvicorn and starlette, dependencies of {DISTRIBUTION} that are missing here: "
            "pip install 'uvicorn>=0.29' 'starlette>=0.37'"
        ) from error
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
    )
    return uvicorn.Server(config)


def bound_port(server: Any) -> int:
    """The port a started uvicorn server listens on."""
    for listener in getattr(server, "servers", []):
        for sock in listener.sockets:
            return int(sock.getsockname()[1])
    raise ICVError("the server is not listening")


def serve(
    model: nn.Module,
    tokenizer: Any,
    library: VectorLibrary,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    policy: BatchingPolicy | None = None,
    max_tokens: int = 1024,
    limits: ServerLimits | None = None,
    model_id: str | None = None,
    log_level: str = "info",
    access: AccessPolicy | None = None,
    compilation: Compilation | None = None,
    announce: Callable[[], None] | None = None,
) -> None:
    """Serve ``model`` over HTTP until interrupted (Ctrl-C), then stop the engine.

    With ``compilation``, decode steps run compiled (:mod:`icv.serving.compiled`); the
    graphs are made before the server listens.  ``announce`` is called once the engine
    is ready, just before the server binds its address.
    """
    engine = start_engine(model, tokenizer, library, policy, max_tokens, compilation)
    try:
        if announce is not None:
            announce()
        app = create_app(engine, library, model_id=model_id, limits=limits, access=bound(access, host))
        uvicorn_server(app, host, port, log_level).run()
    finally:
        engine.close()


class BackgroundServer:
    """The server on a thread of this process: ``with BackgroundServer(model, tok, library) as s: s.url``."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        library: VectorLibrary,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        policy: BatchingPolicy | None = None,
        max_tokens: int = 1024,
        limits: ServerLimits | None = None,
        model_id: str | None = None,
        access: AccessPolicy | None = None,
        compilation: Compilation | None = None,
    ) -> None:
        self.engine = start_engine(model, tokenizer, library, policy, max_tokens, compilation)
        self.app = create_app(
            self.engine, library, model_id=model_id, limits=limits, access=bound(access, host)
        )
        self._server = uvicorn_server(self.app, host, port)
        self._host = host
        self._thread = threading.Thread(target=self._server.run, name="icv-http", daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ICVError(f"the server did not start on {self._host}")
            time.sleep(0.01)
        self.port = bound_port(self._server)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, finish or fail what is running, and stop the engine (idempotent)."""
        self._server.should_exit = True
        self.engine.close(timeout)  # what still runs fails with 503, so open streams end now
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
