"""Access control of the query API: who is asking (API key), and how often (rate limit).

:class:`AccessControl` is pure ASGI middleware in front of the routes. For every
request outside :data:`PUBLIC_PATHS` it

1. with authentication on, reads the token from ``Authorization: Bearer <token>``
   or ``X-API-Key: <token>`` and finds its key (401 when missing or unknown: the
   body never echoes the token);
2. with a rate limit, takes a token from the key's bucket (the client address's
   when authentication is off): 429 with ``Retry-After`` when it is empty;
3. records the :class:`~queries.api.apikeys.Principal` in the request's state, where
   handlers read it (:func:`queries.api.responses.context`) to filter and check sensor ids.

The dashboard page, its static files, ``/healthz``, ``/metrics`` (counters of the
cache, no sensor data) and ``/openapi.json`` are public: the page asks for a key and
sends it with its API calls.
"""

from __future__ import annotations

import logging
import math

from starlette.types import ASGIApp, Receive, Scope, Send

from queries.api.apikeys import ANONYMOUS, AuthSettings
from queries.api.ratelimit import RateLimiter
from queries.api.responses import JSONResponse

__all__ = ["PUBLIC_PATHS", "AccessControl"]

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/", "/healthz", "/metrics", "/openapi.json"})
"""Paths served without a key (also everything under ``/static/``)."""

_REALM = 'Bearer realm="iot-ingest"'


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith("/static/")


def _header(scope: Scope, name: bytes) -> str | None:
    values = [v for k, v in scope.get("headers", ()) if k.lower() == name]
    if not values:
        return None
    if len(values) > 1:
        return ""  # ambiguous: treated as an invalid credential
    value: bytes = values[0]
    return value.decode("latin-1")


def _token(scope: Scope) -> str | None:
    """The presented token; ``""`` when malformed or ambiguous; ``None`` when absent."""
    bearer: str | None = None
    authorization = _header(scope, b"authorization")
    if authorization is not None:
        scheme, _, rest = authorization.strip().partition(" ")
        bearer = rest.strip() if scheme.lower() == "bearer" else ""
    api_key = _header(scope, b"x-api-key")
    if api_key is not None:
        api_key = api_key.strip()
    if bearer is not None and api_key is not None and bearer != api_key:
        return ""
    return bearer if bearer is not None else api_key


def _error(status: int, code: str, message: str, headers: dict[str, str]) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}},
        status_code=status,
        headers={"Cache-Control": "no-store", **headers},
    )


class AccessControl:
    """ASGI middleware: API-key authentication and per-key rate limits.

    Args:
        app: The app behind.
        auth: The accepted keys (``None``: no authentication, every caller reads all).
        limiter: The rate limiter (``None``: no limit).
    """

    def __init__(
        self, app: ASGIApp, *, auth: AuthSettings | None, limiter: RateLimiter | None
    ) -> None:
        self.app = app
        self.auth = auth
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Authenticate and rate-limit HTTP requests to non-public paths."""
        if scope["type"] != "http" or _is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        who = ANONYMOUS
        rate: float | None = None
        burst: int | None = None
        if self.auth is not None:
            token = _token(scope)
            if token is None:
                response = _error(
                    401,
                    "unauthorized",
                    "an API key is required: send 'Authorization: Bearer <token>' or "
                    "'X-API-Key: <token>'",
                    {"WWW-Authenticate": _REALM},
                )
                await response(scope, receive, send)
                return
            key = self.auth.authenticate(token) if token else None
            if key is None:
                client = scope.get("client") or ("?", 0)
                log.info("rejected an invalid API key from %s", client[0])
                response = _error(
                    401,
                    "unauthorized",
                    "the API key is not valid (unknown, revoked, malformed, or two "
                    "different keys sent)",
                    {"WWW-Authenticate": f'{_REALM}, error="invalid_token"'},
                )
                await response(scope, receive, send)
                return
            who, rate, burst = key.principal, key.rate_per_s, key.burst
        if self.limiter is not None:
            if self.auth is not None:
                bucket = f"key:{who.name}"
            else:
                bucket = f"addr:{(scope.get('client') or ('?', 0))[0]}"
            wait_s = self.limiter.take(bucket, rate_per_s=rate, burst=burst)
            if wait_s > 0:
                retry_s = max(1, math.ceil(wait_s))
                response = _error(
                    429,
                    "rate_limited",
                    f"too many requests for {'key ' + repr(who.name) if self.auth else 'this client'}: "
                    f"retry in {retry_s} s",
                    {"Retry-After": str(retry_s)},
                )
                await response(scope, receive, send)
                return
        scope.setdefault("state", {})["principal"] = who
        await self.app(scope, receive, send)
