"""Who may drive ``icv serve``: the API key, the ``Host`` check, cross-origin access, writing routes.

:class:`AccessPolicy` is what the command line decides; :func:`middleware` is the
checks every request passes, outermost first:

1. ``Host``: the name the client used must be one this server answers to
   (``allowed_hosts``; by default the bound address, ``localhost``, ``127.0.0.1``,
   ``[::1]`` and the address the connection arrived on).  A web page whose own
   domain was made to resolve to this machine (DNS rebinding) sends its domain
   here, and is refused (400 ``invalid_host``).
2. Cross-origin requests: no CORS header at all unless ``allowed_origins`` names
   the origin; then Starlette's CORS middleware answers preflights and marks
   responses for those origins only.
3. The API key: with one set, every ``/v1/*`` route needs ``Authorization: Bearer
   KEY`` (compared in constant time), else 401 ``invalid_api_key`` in OpenAI's
   error shape.  ``/health`` and the playground's static files stay open.

Routes that write (upload, extract, delete a vector) ask :meth:`AccessPolicy.check_writes`:
a server bound to a non-loopback address with no key has them off unless
``allow_writes``.  Bodies of another media type than the route takes are refused
where they are read (:func:`icv.serving.http.require_content_type`), so a page
elsewhere cannot post to this server without a preflight that is never granted.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import RequestError

if TYPE_CHECKING:
    from starlette.middleware import Middleware

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


API_KEY_ENV = "ICV_API_KEY"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
OPEN_PATHS = frozenset({"/health"})  # besides everything outside /v1/
ANY_HOST = "*"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is this machine only."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_unspecified(host: str) -> bool:
    """``0.0.0.0`` or ``::``: every address of the machine, not a name anyone is served under."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name part of a ``Host`` header (no port, IPv6 without brackets), lower case."""
    header = header.strip().lower()
    if header.startswith("["):
        name = header[1 : header.find("]")] if "]" in header else header
    else:
        name = header.rsplit(":", 1)[0] if header.count(":") == 1 else header
    return name.rstrip(".")  # "localhost." is localhost


@dataclass(frozen=True)
class AccessPolicy:
    """The server's access settings (see the module's docstring).

    ``bound_host`` is the address the server listens on; ``allowed_hosts`` adds
    names to the default ones (``"*"`` turns the ``Host`` check off, for a server
    behind a proxy that rewrites it); ``allowed_origins`` are the web origins
    (``https://app.example``) that may call it from a browser.
    """

    api_key: str | None = None
    bound_host: str = "127.0.0.1"
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    allow_writes: bool = False
    _hosts: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("the API key is empty")
        served = () if _is_unspecified(self.bound_host) else (self.bound_host,)
        names = {host_name(h) for h in (*LOOPBACK_NAMES, *served, *self.allowed_hosts)}
        object.__setattr__(self, "_hosts", frozenset(names))

    @property
    def checks_host(self) -> bool:
        return ANY_HOST not in self.allowed_hosts

    @property
    def writes_on(self) -> bool:
        """Whether the routes that change the server's vectors are served."""
        return self.allow_writes or self.api_key is not None or is_loopback(self.bound_host)

    def host_allowed(self, header: str, arrived_on: str | None) -> bool:
        """Whether a request that named ``header`` and reached the local address ``arrived_on`` may go on."""
        if not self.checks_host:
            return True
        name = host_name(header)
        return name in self._hosts or (arrived_on is not None and name == host_name(arrived_on))

    def key_matches(self, authorization: str) -> bool:
        """Whether an ``Authorization`` header carries this server's key (constant time)."""
        assert self.api_key is not None
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False
        # Headers arrive decoded as latin-1: encoding back gives the bytes the client sent.
        return hmac.compare_digest(given.strip().encode("latin-1"), self.api_key.encode("utf-8"))

    def check_writes(self) -> None:
        """Refuse (403) a route that writes when this server has them off."""
        if not self.writes_on:
            raise RequestError(
                "this server listens on a non-loopback address without an API key, so the routes that "
                "change its vectors are off: start it with --api-key (or ICV_API_KEY), or --allow-writes "
                "on a network you trust",
                code="writes_disabled",
                status=403,
            )

    def describe(self) -> list[str]:
        """What a startup message says about access, one line each."""
        lines = []
        if self.api_key is None:
            where = "this machine only" if is_loopback(self.bound_host) else "anyone who can reach it"
            lines.append(f"no API key: {where} can generate")
        else:
            lines.append("API key required on /v1/* (Authorization: Bearer ...)")
        if not self.writes_on:
            lines.append(
                "routes that add or delete vectors (upload, extract, delete) are OFF: "
                "no API key on a non-loopback address (give --api-key, or --allow-writes on a trusted network)"
            )
        if self.checks_host:
            lines.append(f"Host names answered: {', '.join(sorted(self._hosts))} and the address reached")
        else:
            lines.append("Host header not checked (--allowed-hosts '*')")
        if self.allowed_origins:
            lines.append(f"browser pages allowed from: {', '.join(self.allowed_origins)}")
        return lines


def middleware(policy: AccessPolicy) -> list[Middleware]:
    """The ``Host`` check, CORS (only for the allowed origins) and the API key, outermost first.

    CORS comes before the key: a browser's preflight carries no ``Authorization``.
    """
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware

    layers = [Middleware(HostCheck, policy=policy)]
    if policy.allowed_origins:
        layers.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(policy.allowed_origins),
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["Authorization", "Content-Type"],
                max_age=600,
            )
        )
    if policy.api_key is not None:
        layers.append(Middleware(KeyCheck, policy=policy))
    return layers


class _Check:
    """A pure ASGI middleware that lets a request through or answers it with an error."""

    def __init__(self, app: ASGIApp, policy: AccessPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            error = self.refusal(scope, _headers(scope))
            if error is not None:
                from .http import error_response  # starlette: the 'serve' extra, not needed by --help

                response = error_response(error)
                if error.status == 401:
                    response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope, headers: dict[str, str]) -> RequestError | None:
        raise NotImplementedError


class HostCheck(_Check):
    def refusal(self, scope: Scope, headers: dict[str, str]) -> RequestError | None:
        server = scope.get("server")
        arrived_on = str(server[0]) if server else None
        if self.policy.host_allowed(headers.get("host", ""), arrived_on):
            return None
        return RequestError(
            f"this server does not answer to the host name '{headers.get('host', ''):.100}' "
            "(start it with --allowed-hosts NAME to add one)",
            code="invalid_host",
            status=400,
        )


class KeyCheck(_Check):
    def refusal(self, scope: Scope, headers: dict[str, str]) -> RequestError | None:
        path = scope.get("path", "")
        if not path.startswith("/v1/") or path in OPEN_PATHS:
            return None
        if self.policy.key_matches(headers.get("authorization", "")):
            return None
        given = "authorization" in headers
        return RequestError(
            "incorrect API key provided"
            if given
            else "this server needs an API key: send 'Authorization: Bearer KEY'",
            code="invalid_api_key",
            status=401,
        )


def _headers(scope: Scope) -> dict[str, str]:
    """The request's headers by lower-case name (the first of repeated ones)."""
    found: dict[str, str] = {}
    for name, value in scope.get("headers", []):
        found.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return found


def split_names(values: Iterable[str]) -> tuple[str, ...]:
    """Command-line values, each possibly a comma-separated list, as one tuple without blanks."""
    return tuple(part.strip() for value in values for part in value.split(",") if part.strip())
