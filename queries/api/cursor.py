"""Opaque page cursors: a position in a query's result, bound to that query and to the server.

A raw-readings cursor holds the timestamp where the next page starts. That is
enough for exactly-once paging because a sensor has at most one reading per
millisecond: the shard is a function of the timestamp (``TableLayout.shard_of``),
so two readings with the same sensor and timestamp share one key, and the merged
stream of all shards has strictly increasing timestamps. The next page reads
``[next, end]`` (ascending) or ``[start, next]`` (descending) again over every
shard, so a page boundary never depends on how DynamoDB paginated (empty pages
and ``LastEvaluatedKey`` stay inside one request).

A sensor-list cursor holds the registry partition and the last sort key returned.

Form: ``<document>.<tag>``, both URL-safe base64 without padding. The document is
a small JSON object (a version, the endpoint family, a fingerprint of the query's
other parameters, the position); the tag is the first 128 bits of
HMAC-SHA256 over the document's text with the server's cursor key. So:

* a cursor used with another query is refused (the fingerprint), rather than
  silently skipping or repeating readings;
* a cursor the server did not issue, or one whose position was changed, is refused
  before anything is read: the position cannot be forged. (It once could: a
  cursor naming a 50-year range made one request issue 73,004 DynamoDB Queries.)

The handlers still check every decoded position against the request itself (its
range, the server's limits), so even a cursor signed with a leaked key cannot
widen what the request asks for. Cursors are not encrypted: the position is
readable, and holds nothing the response did not show.

Keys (:class:`CursorCodec`): by default one random key per process, so a cursor
is valid on the process that issued it, until it restarts. Replicas behind one
load balancer share keys from a file (:func:`load_cursor_keys`,
``serve --cursor-key-file``); its first key signs, every key verifies, so a key
is rotated by adding the new one first and removing the old one later.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from ingest.core.errors import ConfigError
from queries.errors import BadParameter

__all__ = [
    "MAX_CURSOR_CHARS",
    "MIN_KEY_BYTES",
    "CursorCodec",
    "CursorKeyError",
    "fingerprint",
    "load_cursor_keys",
]

_VERSION = 2
_FORM = "the opaque next_cursor returned by the previous page of the same query"
_CONTEXT = b"iot-ingest cursor\x00"
_TAG_BYTES = 16
MIN_KEY_BYTES = 32
"""Shortest cursor key accepted (a key of 256 random bits, e.g. ``openssl rand -hex 32``)."""
MAX_CURSOR_CHARS = 512
"""Longest cursor accepted (the server's own are under 200 characters)."""
_B64 = re.compile(r"[A-Za-z0-9_-]+")


def fingerprint(*parts: object) -> str:
    """A short digest of a query's identifying parameters."""
    text = "\x1f".join(str(p) for p in parts)
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _shown(raw: str) -> str:
    return raw if len(raw) <= 80 else raw[:80] + "…"


class CursorKeyError(ConfigError):
    """The cursor key file is unreadable or invalid (the message never holds a key)."""


class CursorCodec:
    """Issues and checks the cursors of one server (or of replicas sharing its keys).

    Args:
        keys: HMAC keys, each at least :data:`MIN_KEY_BYTES` long; the first signs
            new cursors, every one verifies.

    Raises:
        ValueError: no key, or a key too short.
    """

    __slots__ = ("_keys",)

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("a cursor codec needs at least one key")
        for i, key in enumerate(keys):
            if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
                raise ValueError(f"cursor key {i + 1}: must be at least {MIN_KEY_BYTES} bytes")
        self._keys = tuple(keys)

    @classmethod
    def random(cls) -> CursorCodec:
        """A codec with a new random key (256 bits): cursors valid in this process only."""
        return cls((secrets.token_bytes(32),))

    def __repr__(self) -> str:
        return f"CursorCodec({len(self._keys)} key(s))"  # never the keys

    def _tag(self, key: bytes, payload: str) -> str:
        mac = hmac.new(key, _CONTEXT + payload.encode(), hashlib.sha256).digest()
        return _b64(mac[:_TAG_BYTES])

    def encode(self, kind: str, query_fp: str, position: dict[str, Any]) -> str:
        """A signed cursor for a position of a query (``kind`` names the endpoint family)."""
        payload = _b64(orjson.dumps({"v": _VERSION, "k": kind, "q": query_fp, **position}))
        return f"{payload}.{self._tag(self._keys[0], payload)}"

    def decode(self, raw: str, kind: str, query_fp: str) -> dict[str, Any]:
        """Check a cursor of ``kind`` for the query with fingerprint ``query_fp``; its document.

        The tag is checked before the document is parsed. The position fields are
        returned unchecked: the caller validates them against its request.

        Raises:
            BadParameter: malformed, not issued with one of this server's keys (forged,
                changed, or signed with a key no longer configured), of another endpoint,
                or of another query.
        """
        payload, _, tag = raw.partition(".")
        if len(raw) > MAX_CURSOR_CHARS or not _B64.fullmatch(payload) or not _B64.fullmatch(tag):
            raise BadParameter("cursor", _shown(raw), _FORM, reason="not a cursor")
        # The tag's text is compared, not its decoded bytes: base64 decoding would accept
        # other spellings of the same bytes (junk characters, spare low bits).
        if not any(hmac.compare_digest(tag, self._tag(key, payload)) for key in self._keys):
            raise BadParameter(
                "cursor",
                _shown(raw),
                _FORM,
                reason="not issued by this server (forged, changed, or its key was replaced)",
            )
        try:
            doc = orjson.loads(_unb64(payload))
        except (ValueError, binascii.Error):
            raise BadParameter("cursor", _shown(raw), _FORM, reason="not a cursor") from None
        if not isinstance(doc, dict) or doc.get("v") != _VERSION or doc.get("k") != kind:
            raise BadParameter("cursor", _shown(raw), _FORM, reason="not a cursor of this endpoint")
        if doc.get("q") != query_fp:
            raise BadParameter(
                "cursor",
                _shown(raw),
                _FORM + " (keep every other parameter unchanged while paging)",
                reason="belongs to another query",
            )
        return doc


def load_cursor_keys(path: Path) -> tuple[bytes, ...]:
    """Read a cursor key file: one key per line (blank lines and ``#`` comments ignored).

    A key is the line's text (surrounding spaces stripped), at least
    :data:`MIN_KEY_BYTES` characters, e.g. from ``openssl rand -hex 32``. The first
    key signs new cursors; every key verifies.

    Raises:
        CursorKeyError: unreadable, no key, or a key too short (named by line number).
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CursorKeyError(f"cursor key file {path}: {exc}") from None
    keys: list[bytes] = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        key = text.encode()
        if len(key) < MIN_KEY_BYTES:
            raise CursorKeyError(
                f"cursor key file {path}, line {number}: a key must be at least "
                f"{MIN_KEY_BYTES} characters (got {len(key)}); make one with "
                "`openssl rand -hex 32`"
            )
        keys.append(key)
    if not keys:
        raise CursorKeyError(
            f"cursor key file {path}: no key in it; add one with `openssl rand -hex 32 >> {path}`"
        )
    return tuple(keys)
