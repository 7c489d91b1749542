"""Opaque page cursors: a position in a query's result, bound to that query.

A raw-readings cursor holds the timestamp where the next page starts. That is
enough for exactly-once paging because a sensor has at most one reading per
millisecond: the shard is a function of the timestamp (``TableLayout.shard_of``),
so two readings with the same sensor and timestamp share one key, and the merged
stream of all shards has strictly increasing timestamps. The next page reads
``[next, end]`` (ascending) or ``[start, next]`` (descending) again over every
shard, so a page boundary never depends on how DynamoDB paginated (empty pages
and ``LastEvaluatedKey`` stay inside one request).

A sensor-list cursor holds the registry partition and the last sort key returned.

Cursors are URL-safe base64 of a small JSON document carrying a fingerprint of
the query's other parameters: a cursor used with another query is refused
rather than silently skipping or repeating readings. They are not secret and
not signed: forging one can only select a sub-range the client may read anyway.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

import orjson

from .errors import BadParameter

__all__ = ["decode_cursor", "encode_cursor", "fingerprint"]

_VERSION = 1
_FORM = "the opaque next_cursor returned by the previous page of the same query"


def fingerprint(*parts: object) -> str:
    """A short digest of a query's identifying parameters."""
    text = "\x1f".join(str(p) for p in parts)
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def encode_cursor(kind: str, query_fp: str, position: dict[str, Any]) -> str:
    """Encode a position of a query (``kind`` names the endpoint family)."""
    doc = {"v": _VERSION, "k": kind, "q": query_fp, **position}
    return base64.urlsafe_b64encode(orjson.dumps(doc)).rstrip(b"=").decode()


def decode_cursor(raw: str, kind: str, query_fp: str) -> dict[str, Any]:
    """Decode a cursor of ``kind`` for the query with fingerprint ``query_fp``.

    Raises:
        BadParameter: not a cursor of ours, of another endpoint, or of another query.
    """
    try:
        padded = raw + "=" * (-len(raw) % 4)
        doc = orjson.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeEncodeError):
        raise BadParameter("cursor", raw, _FORM, reason="not a cursor") from None
    if not isinstance(doc, dict) or doc.get("v") != _VERSION or doc.get("k") != kind:
        raise BadParameter("cursor", raw, _FORM, reason="not a cursor of this endpoint")
    if doc.get("q") != query_fp:
        raise BadParameter(
            "cursor",
            raw,
            _FORM + " (keep every other parameter unchanged while paging)",
            reason="belongs to another query",
        )
    return doc
