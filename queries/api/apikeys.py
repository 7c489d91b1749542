"""API keys of the query API: generated tokens, their hashes at rest, their sensor scopes.

A token is ``iot_`` + 43 URL-safe characters (32 random bytes from :mod:`secrets`);
the keys file stores only ``sha256:<hex>`` of it. Why SHA-256 and not a slow KDF
(scrypt, PBKDF2): the tokens are machine-generated with 256 bits of entropy, so a
stolen hash cannot be brute-forced or looked up in a precomputed table whatever the
hash's speed, and salt or stretching adds nothing. A slow KDF would instead cost
tens of milliseconds of CPU on *every* request, which a client sending junk keys
could use to exhaust the server. Human-chosen passwords are therefore not accepted:
:func:`hash_token` refuses tokens shorter than 32 characters.

A key's scope is a list of sensor-id prefixes (``"*"``: every sensor). A sensor out
of scope is answered like an unknown one (404), so a key cannot probe which ids
exist beyond its scope.

The keys file (TOML, see ``docs/security.md``)::

    [[keys]]
    name = "grafana"                       # shown in logs, never the token
    hash = "sha256:9f86d081884c7d65..."    # from `iot-ingest apikey hash`
    sensors = ["site-a-", "site-b-"]       # prefixes, or ["*"]
    rate_per_s = 20                        # optional: this key's own limit
    burst = 40                             # optional
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest.core.errors import ConfigError
from ingest.storage.layout import SENSOR_ID_PATTERN

__all__ = [
    "ALL_SENSORS",
    "ANONYMOUS",
    "MIN_TOKEN_CHARS",
    "TOKEN_PREFIX",
    "ApiKey",
    "AuthSettings",
    "KeysFileError",
    "Principal",
    "generate_token",
    "hash_token",
    "load_keys_file",
]

TOKEN_PREFIX = "iot_"
"""Generated tokens start with this, so secret scanners and people can recognise them."""
MIN_TOKEN_CHARS = 32
ALL_SENSORS = "*"

_HASH_RE = re.compile(r"sha256:[0-9a-f]{64}")
_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_KEY_FIELDS = frozenset({"name", "hash", "sensors", "rate_per_s", "burst"})


class KeysFileError(ConfigError):
    """The API keys file is unreadable or invalid; the message names the entry and field."""


def generate_token() -> str:
    """A new random token (256 bits of entropy)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The at-rest form of ``token``: ``sha256:<hex>``.

    Raises:
        ValueError: the token is shorter than :data:`MIN_TOKEN_CHARS` (too weak for a
            fast hash; generate one with :func:`generate_token`).
    """
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(
            f"a token must be at least {MIN_TOKEN_CHARS} characters (got {len(token)}); "
            "generate one with `iot-ingest apikey hash`"
        )
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    """Who is asking, and which sensors they may read.

    Args:
        name: The key's name (``"anonymous"`` when authentication is off).
        sensor_prefixes: Prefixes of readable sensor ids; ``("*",)``: all.
    """

    name: str
    sensor_prefixes: tuple[str, ...] = (ALL_SENSORS,)

    @property
    def reads_all(self) -> bool:
        """True when the scope is every sensor."""
        return ALL_SENSORS in self.sensor_prefixes

    def may_read(self, sensor_id: str) -> bool:
        """Whether ``sensor_id`` is in scope."""
        return self.reads_all or sensor_id.startswith(self.sensor_prefixes)


ANONYMOUS = Principal(name="anonymous")


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiKey:
    """One configured key.

    Args:
        name: A label for logs and rate-limit buckets (never the token).
        hash: ``sha256:<64 hex digits>`` of the token.
        sensors: Readable sensor-id prefixes; ``("*",)``: all.
        rate_per_s: This key's own rate limit (``None``: the server's).
        burst: This key's own burst (``None``: the server's).
    """

    name: str
    hash: str
    sensors: tuple[str, ...]
    rate_per_s: float | None = None
    burst: int | None = None

    def __post_init__(self) -> None:
        if not _NAME_RE.fullmatch(self.name):
            raise ValueError(f"name {self.name!r}: 1-64 characters of A-Z a-z 0-9 _ . -")
        if not _HASH_RE.fullmatch(self.hash):
            raise ValueError(
                f"key {self.name!r}: hash must be 'sha256:' and 64 lowercase hex digits "
                "(plaintext tokens are not accepted; run `iot-ingest apikey hash`)"
            )
        if not self.sensors:
            raise ValueError(f"key {self.name!r}: sensors must list prefixes, or ['*'] for all")
        for prefix in self.sensors:
            if prefix != ALL_SENSORS and not SENSOR_ID_PATTERN.fullmatch(prefix):
                raise ValueError(
                    f"key {self.name!r}: sensor prefix {prefix!r} is not part of a sensor id "
                    "(A-Z a-z 0-9 _ . : -), nor '*'"
                )
        if self.rate_per_s is not None and not self.rate_per_s > 0:
            raise ValueError(f"key {self.name!r}: rate_per_s must be > 0, got {self.rate_per_s}")
        if self.burst is not None and self.burst < 1:
            raise ValueError(f"key {self.name!r}: burst must be >= 1, got {self.burst}")

    @property
    def principal(self) -> Principal:
        """The principal a request with this key acts as."""
        return Principal(name=self.name, sensor_prefixes=self.sensors)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthSettings:
    """Authentication of the query API.

    Args:
        keys: The accepted keys (at least one; names unique, hashes unique).
    """

    keys: tuple[ApiKey, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("authentication needs at least one API key")
        names = [k.name for k in self.keys]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate key names: {', '.join(dupes)}")
        if len({k.hash for k in self.keys}) != len(self.keys):
            raise ValueError("two keys have the same hash (the same token)")

    def authenticate(self, token: str) -> ApiKey | None:
        """The key whose hash matches ``token``, or ``None``.

        Every configured hash is compared with :func:`hmac.compare_digest`, with no
        early exit, so the time taken says nothing about which key came close.
        """
        digest = "sha256:" + hashlib.sha256(token.encode(errors="surrogateescape")).hexdigest()
        found: ApiKey | None = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.hash):
                found = key
        return found


def _key_from_toml(index: int, entry: Any) -> ApiKey:
    where = f"keys[{index}]"
    if not isinstance(entry, dict):
        raise KeysFileError(f"{where}: must be a table ([[keys]])")
    if "token" in entry or "key" in entry:
        raise KeysFileError(
            f"{where}: plaintext tokens are not accepted; store `hash` from "
            "`iot-ingest apikey hash` and give the token to the client only"
        )
    unknown = sorted(set(entry) - _KEY_FIELDS)
    if unknown:
        raise KeysFileError(f"{where}: unknown field(s) {', '.join(unknown)}")
    for field in ("name", "hash", "sensors"):
        if field not in entry:
            raise KeysFileError(f"{where}: missing field {field!r}")
    sensors = entry["sensors"]
    if not isinstance(sensors, list) or not all(isinstance(s, str) for s in sensors):
        raise KeysFileError(f"{where}: sensors must be a list of strings, got {sensors!r}")
    if not isinstance(entry["name"], str) or not isinstance(entry["hash"], str):
        raise KeysFileError(f"{where}: name and hash must be strings")
    rate, burst = entry.get("rate_per_s"), entry.get("burst")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float)):
        raise KeysFileError(f"{where}: rate_per_s must be a number, got {rate!r}")
    if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int)):
        raise KeysFileError(f"{where}: burst must be an integer, got {burst!r}")
    try:
        return ApiKey(
            name=entry["name"],
            hash=entry["hash"],
            sensors=tuple(sensors),
            rate_per_s=None if rate is None else float(rate),
            burst=burst,
        )
    except ValueError as exc:
        raise KeysFileError(f"{where}: {exc}") from None


def load_keys_file(path: Path) -> AuthSettings:
    """Read and validate an API keys file (TOML with ``[[keys]]`` entries).

    Raises:
        KeysFileError: unreadable, not TOML, or an invalid entry (the message names it;
            it never contains a hash or token value).
    """
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise KeysFileError(f"API keys file {path}: {exc}") from None
    unknown = sorted(set(doc) - {"keys"})
    if unknown:
        raise KeysFileError(f"API keys file {path}: unknown top-level key(s) {', '.join(unknown)}")
    entries = doc.get("keys")
    if not isinstance(entries, list) or not entries:
        raise KeysFileError(
            f"API keys file {path}: no [[keys]] entries; create one with `iot-ingest apikey hash`"
        )
    try:
        keys = tuple(_key_from_toml(i, e) for i, e in enumerate(entries))
        return AuthSettings(keys=keys)
    except KeysFileError as exc:
        raise KeysFileError(f"API keys file {path}: {exc}") from None
    except ValueError as exc:
        raise KeysFileError(f"API keys file {path}: {exc}") from None
