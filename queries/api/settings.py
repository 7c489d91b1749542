"""The query API's settings: where the table is, the limits that keep every request bounded,
and who may read (API keys, rate limits, CORS origins)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ingest.aws.settings import AwsSettings
from queries.api.apikeys import AuthSettings
from queries.api.cursor import MIN_KEY_BYTES
from queries.api.ratelimit import RateLimitSettings

__all__ = ["DEFAULT_LATE_ALLOWANCE_MS", "ServeSettings"]

_ORIGIN_RE = re.compile(
    r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?"
)

_DAY_MS = 86_400_000

DEFAULT_LATE_ALLOWANCE_MS = 30 * _DAY_MS + 420_000
"""The late-readings allowance without a configuration: 30 days and the default settle time."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServeSettings:
    """Settings of ``iot-ingest serve``, validated once at construction.

    Args:
        table: DynamoDB table name.
        region: AWS region.
        endpoint_url: DynamoDB endpoint (``None``: AWS's, from the region).
        aws_access_key_id: Explicit credentials (``None``: the standard provider chain).
        aws_secret_access_key: Explicit credentials.
        max_range_ms: Longest ``end - start`` of one request (raw pages and series).
        max_points: Most windows of one series (per sensor).
        default_points: Windows of a series when neither ``step`` nor ``max_points`` is given.
        max_page_limit: Largest ``limit`` of a raw readings page.
        default_page_limit: ``limit`` of a raw readings page when not given.
        max_sensors: Most sensors in one multi-sensor series request.
        max_sensor_page: Largest ``limit`` of a sensor-list page.
        query_concurrency: DynamoDB calls in flight, across all requests (the fan-out bound).
        max_calls_per_sensor: Most DynamoDB calls one request may make per sensor it reads
            (a 422 past it); ``None``: derived from the table's layout and ``max_range_ms``
            (:func:`queries.read.reader.default_calls_per_sensor`: 2,064 for 1-day buckets,
            4 shards and 31 days).
        latest_future_ms: How far past "now" ``/latest`` looks (clock skew of devices).
        auth: API keys and their scopes (``None``: no authentication, every caller
            reads every sensor; the embedded demo's default, logged as a warning).
        rate_limit: Per-key request rate limit (``None``: unlimited).
        cors_origins: Origins allowed to call the API from a browser page of another
            origin (``scheme://host[:port]``); empty: no CORS headers at all.
        s3_bucket: The S3 bucket of the table's archive (``iot-ingest archive``): raw
            ranges and series then read archived buckets from it (the cold tier).
            ``None``: DynamoDB only.
        s3_endpoint: S3 endpoint (``None``: AWS's).
        s3_prefix: Key prefix of the archive (``None``: ``archive``, the archiver's default).
        cursor_keys: HMAC keys authenticating page cursors (:mod:`queries.api.cursor`), each
            at least 32 bytes; the first signs, every one verifies. Empty: a random key
            per process, so a cursor is valid only on the process that issued it (give
            replicas behind one load balancer the same keys). Never shown in ``repr``.
        cache_max_bytes: The bound of the closed-bucket cache (:mod:`queries.read.cache`),
            bytes; 0: no cache (every read goes to DynamoDB).
        cache_late_allowance_ms: How long after a bucket's end a reading can still land in
            it (the ingest's ``max_past_ms`` plus its settle time): a bucket is cached only
            once this has passed. ``None``: 30 days and 7 minutes (the ingest's longest
            default ``max_past_ms`` is the retention less a day; ``serve`` computes it from
            the shared configuration).
    """

    table: str
    region: str = "us-east-1"
    endpoint_url: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    max_range_ms: int = 31 * _DAY_MS
    max_points: int = 10_000
    default_points: int = 500
    max_page_limit: int = 10_000
    default_page_limit: int = 1_000
    max_sensors: int = 20
    max_sensor_page: int = 1_000
    query_concurrency: int = 16
    max_calls_per_sensor: int | None = None
    latest_future_ms: int = 300_000
    auth: AuthSettings | None = None
    rate_limit: RateLimitSettings | None = None
    cors_origins: tuple[str, ...] = ()
    s3_bucket: str | None = None
    s3_endpoint: str | None = None
    s3_prefix: str | None = None
    cursor_keys: tuple[bytes, ...] = field(default=(), repr=False)
    cache_max_bytes: int = 0
    cache_late_allowance_ms: int | None = None

    @property
    def late_allowance_ms(self) -> int:
        """``cache_late_allowance_ms``, or its default."""
        if self.cache_late_allowance_ms is not None:
            return self.cache_late_allowance_ms
        return DEFAULT_LATE_ALLOWANCE_MS

    @property
    def aws(self) -> AwsSettings:
        """The DynamoDB client's region, endpoint and credentials (S3's: ``with_endpoint``)."""
        return AwsSettings(
            region=self.region,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
        )

    def __post_init__(self) -> None:
        for name in (
            "max_range_ms",
            "max_points",
            "default_points",
            "max_page_limit",
            "default_page_limit",
            "max_sensors",
            "max_sensor_page",
            "query_concurrency",
        ):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.max_calls_per_sensor is not None and self.max_calls_per_sensor < 1:
            raise ValueError(f"max_calls_per_sensor must be >= 1, got {self.max_calls_per_sensor}")
        if self.max_points < 10:
            raise ValueError(f"max_points must be >= 10, got {self.max_points}")
        if self.default_points > self.max_points:
            raise ValueError(
                f"default_points ({self.default_points}) exceeds max_points ({self.max_points})"
            )
        if self.default_page_limit > self.max_page_limit:
            raise ValueError(
                f"default_page_limit ({self.default_page_limit}) exceeds "
                f"max_page_limit ({self.max_page_limit})"
            )
        if self.cache_max_bytes < 0:
            raise ValueError(f"cache_max_bytes must be >= 0, got {self.cache_max_bytes}")
        if self.cache_late_allowance_ms is not None and self.cache_late_allowance_ms < 0:
            raise ValueError(
                f"cache_late_allowance_ms must be >= 0, got {self.cache_late_allowance_ms}"
            )
        if self.latest_future_ms < 0:
            raise ValueError(f"latest_future_ms must be >= 0, got {self.latest_future_ms}")
        if self.s3_bucket is None and (self.s3_endpoint or self.s3_prefix):
            raise ValueError("s3_endpoint and s3_prefix need s3_bucket (the archive's bucket)")
        if self.s3_bucket is not None and not self.s3_bucket.strip():
            raise ValueError("s3_bucket must not be empty")
        if not isinstance(self.cursor_keys, tuple):
            raise ValueError("cursor_keys must be a tuple of keys (bytes)")
        for i, key in enumerate(self.cursor_keys):
            if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
                raise ValueError(f"cursor_keys[{i}]: must be at least {MIN_KEY_BYTES} bytes")
        if isinstance(self.cors_origins, str):
            raise ValueError("cors_origins must be a tuple of origins, not one string")
        for origin in self.cors_origins:
            if not _ORIGIN_RE.fullmatch(origin):
                raise ValueError(
                    f"CORS origin {origin!r}: must be scheme://host[:port] with no path "
                    "or trailing slash, e.g. https://grafana.example.com ('*' is not allowed)"
                )
