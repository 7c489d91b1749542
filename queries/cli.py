"""``iot-ingest serve``: the query API and the dashboard; ``iot-ingest apikey hash``: a new key.

The table, region, endpoint and credentials come from the same configuration as
``iot-ingest run`` (config file < ``IOT_INGEST_*`` environment < flags), so one
config file serves both; the HTTP address and the limits are this command's flags.

API keys live in their own file (``--api-keys`` or ``IOT_INGEST_API_KEYS_FILE``,
hashes only; see ``docs/security.md``). ``serve`` refuses to start without one
unless ``--no-auth`` is given, and then says so loudly. The keys that sign page
cursors come from ``--cursor-key-file`` (or ``IOT_INGEST_CURSOR_KEY_FILE``); without
one, each process draws a random key (fine for one replica).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ingest.config import add_table_flags, table_config
from ingest.core.argtypes import positive_int

if TYPE_CHECKING:
    from ingest.config import Config
    from queries.api.settings import ServeSettings

__all__ = [
    "CACHE_MB_ENV",
    "CURSOR_KEY_FILE_ENV",
    "DEFAULT_CACHE_MB",
    "KEYS_FILE_ENV",
    "add_commands",
    "cache_settings",
    "cmd_apikey_hash",
    "cmd_serve",
]

log = logging.getLogger(__name__)

KEYS_FILE_ENV = "IOT_INGEST_API_KEYS_FILE"
CURSOR_KEY_FILE_ENV = "IOT_INGEST_CURSOR_KEY_FILE"
CACHE_MB_ENV = "IOT_INGEST_QUERY_CACHE_MB"
DEFAULT_CACHE_MB = 64.0

_DAY_MS = 86_400_000


def add_commands(subparsers: Any) -> None:
    """Add ``serve`` to the ``iot-ingest`` command's subparsers."""
    p = subparsers.add_parser(
        "serve",
        help="serve the query API and the dashboard (HTTP)",
        description="Serve the range-query HTTP API, the Grafana endpoint and the dashboard "
        "page for one table. The API is described at /openapi.json.",
    )
    add_table_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    p.add_argument(
        "--max-range-days",
        type=positive_int,
        default=31,
        help="longest time range of one request, days (default 31)",
    )
    p.add_argument(
        "--max-points",
        type=positive_int,
        default=10_000,
        help="most windows of one series (default 10000)",
    )
    p.add_argument(
        "--query-concurrency",
        type=positive_int,
        default=16,
        help="DynamoDB calls in flight across all requests (default 16)",
    )
    p.add_argument(
        "--max-calls-per-sensor",
        type=positive_int,
        default=None,
        help="most DynamoDB calls one request may make per sensor it reads, a 422 past it "
        "(default: 16 per partition of the widest legal range, from the table's layout: "
        "2064 for 1-day buckets, 4 shards and 31 days)",
    )
    p.add_argument(
        "--api-keys",
        type=Path,
        help=f"API keys file (TOML, hashes only; see docs/security.md) [env {KEYS_FILE_ENV}]",
    )
    p.add_argument(
        "--cursor-key-file",
        type=Path,
        help="keys signing page cursors, one per line (the first signs, all verify); give "
        "every replica behind one load balancer the same file (default: a random key per "
        f"process) [env {CURSOR_KEY_FILE_ENV}]",
    )
    p.add_argument(
        "--no-auth",
        action="store_true",
        help="serve WITHOUT authentication: anyone who reaches the port reads every sensor",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow browser pages of this origin (https://host[:port]) to call the API; "
        "repeatable (default: none, no CORS headers)",
    )
    p.add_argument(
        "--rate-limit-per-s",
        type=float,
        default=50.0,
        help="requests per second per API key (per client address without auth); "
        "0: unlimited (default 50)",
    )
    p.add_argument(
        "--rate-limit-burst",
        type=positive_int,
        default=100,
        help="requests a key may make at once after being idle (default 100)",
    )
    p.add_argument(
        "--s3-bucket",
        help="S3 bucket of the table's archive (`iot-ingest archive`): raw ranges and "
        "series then read archived buckets from it too (default: DynamoDB only)",
    )
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: AWS's)")
    p.add_argument("--s3-prefix", help="key prefix of the archive (default: archive)")
    p.add_argument(
        "--cache-mb",
        type=float,
        default=None,
        help="memory bound of the cache of closed buckets, MB (buckets no reading can land in "
        "any more: their end is more than the ingest's max_past_ms plus its settle time ago); "
        f"0: no cache (default {DEFAULT_CACHE_MB:g}) [env {CACHE_MB_ENV}]",
    )
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default=None)
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser(
        "apikey",
        help="manage query API keys",
        description="Create API keys for `iot-ingest serve`.",
    )
    sub = p.add_subparsers(dest="apikey_command", required=True)
    h = sub.add_parser(
        "hash",
        help="create a new random API key: the token once, and its entry for the keys file",
        description="Print a new random token ONCE (on stderr: give it to the client; it is "
        "stored nowhere) and its [[keys]] entry with the token's SHA-256 hash (on stdout: "
        "append it to the API keys file, e.g. `>> keys.toml`).",
    )
    h.add_argument("--name", required=True, help="the key's name (logs, rate-limit bucket)")
    h.add_argument(
        "--sensors",
        action="append",
        required=True,
        metavar="PREFIX",
        help="sensor-id prefix this key may read; repeatable; '*' for every sensor",
    )
    h.add_argument("--rate-per-s", type=float, help="this key's own rate limit")
    h.add_argument("--burst", type=positive_int, help="this key's own burst")
    h.add_argument(
        "--stdin",
        action="store_true",
        help="hash a token read from stdin (>= 32 characters) instead of generating one",
    )
    h.set_defaults(func=cmd_apikey_hash)


def _toml_str(text: str) -> str:
    # Names and prefixes are validated to plain characters; this quotes them for TOML.
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cmd_apikey_hash(args: argparse.Namespace) -> int:
    """Print a new token (stderr) and its keys-file entry (stdout)."""
    from ingest.core.errors import ConfigError
    from queries.api.apikeys import ApiKey, generate_token, hash_token

    token = sys.stdin.readline().strip() if args.stdin else generate_token()
    try:
        key = ApiKey(
            name=args.name,
            hash=hash_token(token),
            sensors=tuple(args.sensors),
            rate_per_s=args.rate_per_s,
            burst=args.burst,
        )
    except ValueError as exc:
        raise ConfigError(f"apikey hash: {exc}") from None
    if not args.stdin:
        print(f"API key {key.name!r} token (shown once, stored nowhere):", file=sys.stderr)
        print(token, file=sys.stderr)
    lines = [
        "[[keys]]",
        f"name = {_toml_str(key.name)}",
        f'hash = "{key.hash}"',
        "sensors = [" + ", ".join(_toml_str(x) for x in key.sensors) + "]",
    ]
    if key.rate_per_s is not None:
        lines.append(f"rate_per_s = {key.rate_per_s}")
    if key.burst is not None:
        lines.append(f"burst = {key.burst}")
    print("\n".join(lines))
    return 0


def _access_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``auth``, ``rate_limit``, ``cors_origins`` and ``cursor_keys`` of the settings.

    Raises:
        ConfigError: no keys and no ``--no-auth``; both; a bad keys file, origin or
            cursor key file.
    """
    from ingest.core.errors import ConfigError
    from queries.api.apikeys import load_keys_file
    from queries.api.ratelimit import RateLimitSettings

    keys_file = args.api_keys
    if keys_file is None and os.environ.get(KEYS_FILE_ENV):
        keys_file = Path(os.environ[KEYS_FILE_ENV])
    if keys_file is not None and args.no_auth:
        raise ConfigError("serve: --no-auth and an API keys file exclude each other; pick one")
    if keys_file is None and not args.no_auth:
        raise ConfigError(
            "serve: no API keys configured. Create one with `iot-ingest apikey hash --name NAME "
            f"--sensors '*' >> keys.toml` and pass --api-keys keys.toml (or {KEYS_FILE_ENV}); "
            "or pass --no-auth to serve every sensor to anyone who reaches the port"
        )
    auth = None
    if keys_file is not None:
        auth = load_keys_file(keys_file)  # KeysFileError is a ConfigError
    if args.rate_limit_per_s < 0:
        raise ConfigError(f"--rate-limit-per-s must be >= 0, got {args.rate_limit_per_s}")
    rate_limit = None
    if args.rate_limit_per_s > 0:
        rate_limit = RateLimitSettings(
            rate_per_s=args.rate_limit_per_s, burst=args.rate_limit_burst
        )
    return {
        "auth": auth,
        "rate_limit": rate_limit,
        "cors_origins": tuple(args.cors_origin),
        "cursor_keys": _cursor_keys(args),
    }


def _cursor_keys(args: argparse.Namespace) -> tuple[bytes, ...]:
    """The cursor keys from ``--cursor-key-file`` or its environment variable (``()``: none).

    Raises:
        ConfigError: the file is unreadable, empty, or holds a key too short.
    """
    from ingest.core.errors import ConfigError
    from queries.api.cursor import CursorKeyError, load_cursor_keys

    path = args.cursor_key_file
    if path is None and os.environ.get(CURSOR_KEY_FILE_ENV):
        path = Path(os.environ[CURSOR_KEY_FILE_ENV])
    if path is None:
        return ()
    try:
        keys = load_cursor_keys(path)
    except CursorKeyError as exc:
        raise ConfigError(f"serve: {exc}") from None
    log.info("page cursors: %d key(s) from %s", len(keys), path)
    return keys


def cache_settings(cfg: Config, args: argparse.Namespace) -> dict[str, int]:
    """``cache_max_bytes`` (``--cache-mb`` or its environment variable) and
    ``cache_late_allowance_ms``: the ingest's ``max_past_ms`` (the oldest reading it
    accepts) plus its settle time (write retry deadline, two registry flushes and a
    minute of clock skew, as ``iot-ingest archive`` computes it), from the same config.

    Raises:
        ConfigError: a cache size that is not a number >= 0.
    """
    from ingest.core.errors import ConfigError

    raw: float | str | None = args.cache_mb
    if raw is None:
        raw = os.environ.get(CACHE_MB_ENV) or DEFAULT_CACHE_MB
    try:
        mb = float(raw)
    except ValueError:
        raise ConfigError(f"serve: {CACHE_MB_ENV}={raw!r}: not a number of MB") from None
    if not mb >= 0 or mb == float("inf"):
        raise ConfigError(f"serve: the cache size must be a number of MB >= 0, got {raw!r}")
    settle_ms = int(
        (cfg.pipeline.write_retry_deadline_s + 2 * cfg.pipeline.registry_interval_s + 60) * 1000
    )
    return {
        "cache_max_bytes": int(mb * 1024 * 1024),
        "cache_late_allowance_ms": cfg.effective_max_past_ms + settle_ms,
    }


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the server until SIGINT/SIGTERM; return the exit status."""
    from queries.api.server import run

    cfg = table_config(args)
    access = _access_settings(args)
    if access["auth"] is None:
        log.warning(
            "serve --no-auth: authentication is OFF; anyone who can reach %s:%d reads every sensor",
            args.host,
            args.port,
        )
    else:
        log.info("API keys: %s", ", ".join(k.name for k in access["auth"].keys))
    cache = cache_settings(cfg, args)
    if cache["cache_max_bytes"]:
        log.info(
            "closed-bucket cache: %.3g MB; a bucket is closed %.3g h after its end "
            "(max_past_ms + settle time)",
            cache["cache_max_bytes"] / 1024 / 1024,
            cache["cache_late_allowance_ms"] / 3_600_000,
        )
    try:
        settings = _settings(cfg, args, access | cache)
    except ValueError as exc:
        from ingest.core.errors import ConfigError

        raise ConfigError(f"serve: {exc}") from None
    run(settings, host=args.host, port=args.port, log_level=cfg.operations.log_level)
    return 0


def _settings(cfg: Config, args: argparse.Namespace, access: dict[str, Any]) -> ServeSettings:
    from queries.api.settings import ServeSettings

    return ServeSettings(
        table=cfg.dynamodb.table,
        region=cfg.aws.region,
        endpoint_url=cfg.aws.dynamodb_endpoint,
        aws_access_key_id=cfg.aws.aws_access_key_id,
        aws_secret_access_key=cfg.aws.aws_secret_access_key,
        max_range_ms=args.max_range_days * _DAY_MS,
        max_points=args.max_points,
        default_points=min(500, args.max_points),
        query_concurrency=args.query_concurrency,
        max_calls_per_sensor=args.max_calls_per_sensor,
        s3_bucket=args.s3_bucket,
        s3_endpoint=args.s3_endpoint,
        s3_prefix=args.s3_prefix,
        **access,
    )
