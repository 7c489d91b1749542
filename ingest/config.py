"""Service configuration: one frozen object, validated once at start.

Sources, later ones winning: built-in defaults < TOML file (``--config`` or
``IOT_INGEST_CONFIG``) < environment (``IOT_INGEST_<KEY>``) < command-line
flags. A bad value fails at start with the key, the value and where it came
from. Library code receives the object; it never reads ``os.environ``.

The reference in docs/configuration.md is generated from this module
(``iot-ingest config reference``) and a test keeps the two in step.
"""

from __future__ import annotations

import argparse
import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ingest.aws.settings import AwsSettings
from ingest.core.errors import ConfigError
from ingest.core.logs import setup_logging

__all__ = [
    "ENV_PREFIX",
    "SECRET_KEYS",
    "Config",
    "add_config_flags",
    "add_table_flags",
    "config_from_args",
    "load_config",
    "reference_markdown",
    "table_config",
]

ENV_PREFIX = "IOT_INGEST_"
SECRET_KEYS = frozenset({"mqtt_password", "aws_secret_access_key"})


def _default_client_id() -> str:
    return f"iot-ingest-{socket.gethostname()}"[:64]


class Config(BaseModel):
    """Effective configuration of the ingest service (see docs/configuration.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # -- MQTT -----------------------------------------------------------------
    mqtt_url: str | None = Field(
        None,
        description="Broker URL, mqtt://HOST:PORT or mqtts://HOST:PORT (user:password@ allowed). "
        "Unset: start an embedded broker (trial mode).",
    )
    mqtt_username: str | None = Field(None, description="MQTT user name (overrides the URL's).")
    mqtt_password: str | None = Field(
        None, description="MQTT password (secret; prefer mqtt_password_file)."
    )
    mqtt_password_file: Path | None = Field(None, description="File holding the MQTT password.")
    mqtt_ca_file: Path | None = Field(None, description="CA bundle to verify the broker (TLS).")
    mqtt_cert_file: Path | None = Field(None, description="Client certificate (TLS client auth).")
    mqtt_key_file: Path | None = Field(None, description="Client certificate's private key.")
    mqtt_alpn: str | None = Field(
        None,
        description="TLS ALPN protocols to offer, comma-separated (AWS IoT Core on port 443 "
        "with a client certificate needs x-amzn-mqtt-ca).",
    )
    mqtt_client_id: str = Field(
        default_factory=_default_client_id,
        description="Stable client id: the broker keeps this session's messages while the service is down.",
    )
    mqtt_protocol: Literal["5", "3.1.1"] = Field("5", description="MQTT protocol version.")
    mqtt_keepalive_s: int = Field(30, ge=5, le=3600, description="Keepalive interval.")
    mqtt_session_expiry_s: int = Field(
        7 * 86_400,
        ge=0,
        description="MQTT 5 session expiry: how long the broker keeps our session offline.",
    )
    mqtt_receive_maximum: int = Field(
        10_000,
        ge=10,
        le=65_535,
        description="MQTT 5 Receive Maximum: unacknowledged QoS 1 messages the broker may send us.",
    )
    mqtt_reconnect_min_ms: int = Field(
        200, ge=10, description="First reconnect backoff (full jitter)."
    )
    mqtt_reconnect_max_ms: int = Field(30_000, ge=100, description="Cap of the reconnect backoff.")
    topic: str = Field("sensors/+/telemetry", description="Topic filter to subscribe to.")
    sensor_topic_level: int | None = Field(
        None,
        ge=0,
        description="Topic level holding the sensor id (default: the first '+' of `topic`).",
    )
    shared_group: str | None = Field(
        None,
        description="Shared subscription group ($share/GROUP/topic): workers split the stream.",
    )

    # -- DynamoDB -------------------------------------------------------------
    table: str = Field("iot-readings", description="DynamoDB table name.")
    dynamodb_endpoint: str | None = Field(
        None,
        description="DynamoDB endpoint URL. Unset and no AWS credentials: embedded server (trial mode).",
    )
    region: str = Field("us-east-1", description="AWS region.")
    create_table: bool = Field(
        False, description="Create the table (on-demand, TTL on) at start if missing."
    )
    shards: int = Field(4, ge=1, le=64, description="Write shards per sensor and bucket.")
    bucket_minutes: int = Field(1440, ge=1, description="Time bucket width in the partition key.")
    retention_days: int = Field(
        30, ge=1, le=36_500, description="Days before an item may expire (TTL)."
    )
    layout: Literal["reading", "packed"] = Field(
        "reading",
        description="Table layout: one item per reading, or packed windows (decision 0008).",
    )
    window_seconds: int = Field(
        900,
        ge=1,
        le=86_400,
        description="packed: width of a sealed window of one sensor (divides the bucket).",
    )
    stage_interval_ms: int = Field(
        10_000,
        ge=100,
        le=600_000,
        description="packed: how often staging items make the last readings visible.",
    )
    staging_groups: int = Field(
        256, ge=1, le=65_536, description="packed: sensor groups of the staging items."
    )
    journal_ttl_hours: int = Field(
        48, ge=1, le=720, description="packed: how long journal items are kept (TTL)."
    )

    # -- pipeline -------------------------------------------------------------
    flush_interval_ms: int = Field(50, ge=1, le=10_000, description="Max age of a partial batch.")
    write_concurrency: int = Field(16, ge=1, le=256, description="Concurrent BatchWriteItem calls.")
    write_queue_batches: int = Field(
        64, ge=1, description="Batches waiting for a writer (bounded)."
    )
    gc_young_threshold: int = Field(
        10_000,
        ge=0,
        description="Net allocations between the garbage collector's young collections once "
        "running (the startup heap is frozen); 0: Python's defaults (700).",
    )
    inbox_max_messages: int = Field(
        20_000,
        ge=100,
        description="Received messages waiting to decode before the receiver pauses.",
    )
    write_retry_base_ms: int = Field(
        25, ge=1, description="Base of the write backoff (full jitter)."
    )
    write_retry_max_ms: int = Field(5_000, ge=1, description="Cap of one write backoff sleep.")
    write_retry_deadline_s: float = Field(
        300.0,
        gt=0,
        description="Give up on a batch after this long; its readings go to dead letters.",
    )
    registry_interval_s: float = Field(
        10.0, gt=0, description="Sensor registry flush period: new sensors appear within it."
    )
    registry_refresh_s: float = Field(
        300.0,
        ge=0,
        description="Least time between two registry writes of one sensor (at most one "
        "UpdateItem per active sensor per period; 'last seen' may lag by this much). 0: every "
        "flush.",
    )
    startup_retry_deadline_s: float = Field(
        300.0,
        ge=0,
        description="How long to wait at start for DynamoDB to answer (unreachable, throttled, "
        "5xx, credentials not there yet), not ready and not subscribed, retrying with the write "
        "backoff; then exit with an error. 0: wait forever. A missing table, another layout or "
        "access denied fail at once.",
    )
    writer: Literal["lean", "botocore"] = Field(
        "lean",
        description="DynamoDB client of the hot path: lean (pre-serialized JSON, cached SigV4) or "
        "botocore (aiobotocore's full request pipeline, for comparison).",
    )

    # -- validation -----------------------------------------------------------
    max_message_bytes: int = Field(256 * 1024, ge=64, description="Largest accepted payload.")
    max_readings_per_message: int = Field(1000, ge=1, description="Largest accepted batch.")
    max_metrics_per_reading: int = Field(64, ge=1, description="Metrics per reading.")
    max_tags_per_reading: int = Field(16, ge=0, description="Tags (string values) per reading.")
    max_name_length: int = Field(64, ge=1, description="Characters per metric or tag name.")
    max_tag_length: int = Field(256, ge=1, description="Characters per tag value.")
    max_future_ms: int = Field(
        300_000, ge=0, description="How far ahead of now a timestamp may be."
    )
    max_new_sensors_per_minute: int = Field(
        10_000,
        ge=0,
        description="Sensor ids not seen before admitted per minute (0: unlimited); the rest are "
        "dead-lettered. Ids already in the registry are known at start.",
    )
    max_known_sensors: int = Field(
        1_000_000, ge=1, description="Distinct sensors one worker tracks."
    )
    max_past_ms: int | None = Field(
        None,
        ge=0,
        description="How far back a timestamp may be (default: the retention period less one "
        "day, or less half of it for a one-day retention, so an accepted reading stays in the "
        "table that long before TTL may delete it: time for the archiver to take it).",
    )
    require_ts: bool = Field(
        False,
        description="Dead-letter readings without `ts`. Off: they take the receive time, so a "
        "redelivered one is written again as a second item.",
    )
    sensor_id_rule: Literal["prefix", "topic", "any"] = Field(
        "prefix",
        description="Which sensor ids a message may carry, from its topic's id T: `prefix` T or "
        "ids starting with T + `sensor_id_separator` (a T containing the separator carries "
        "none); `topic` T only; `any` every id (trusts every publisher). Others are "
        "dead-lettered (SECURITY.md).",
    )
    sensor_id_separator: Literal[":", ".", "_", "-"] = Field(
        ":",
        description="Separator after the topic's id in the ids `prefix` allows (`gw-7:pump`); "
        "gateway ids in topics must not contain it.",
    )

    # -- operations -----------------------------------------------------------
    data_dir: Path = Field(Path("data"), description="Directory for the dead-letter spool.")
    deadletter_topic: str | None = Field(
        None, description="Also republish dead letters to this topic."
    )
    metrics_host: str = Field("127.0.0.1", description="Address of the metrics/health HTTP server.")
    metrics_port: int = Field(9108, ge=0, le=65_535, description="Its port (0: pick a free one).")
    shutdown_timeout_s: float = Field(
        15.0, gt=0, description="Deadline to drain on SIGTERM/SIGINT."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level."
    )
    log_format: Literal["text", "json"] = Field("text", description="Log line format.")
    aws_access_key_id: str | None = Field(
        None, description="Explicit AWS key (default: provider chain)."
    )
    aws_secret_access_key: str | None = Field(None, description="Explicit AWS secret (secret).")

    @property
    def aws(self) -> AwsSettings:
        """The AWS clients' settings: ``region``, ``dynamodb_endpoint`` and the ``aws_*`` keys."""
        return AwsSettings(
            region=self.region,
            endpoint_url=self.dynamodb_endpoint,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
        )

    @field_validator("mqtt_url")
    @classmethod
    def _check_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
            raise ValueError("must look like mqtt://HOST:PORT or mqtts://HOST:PORT")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from exc
        return v

    @field_validator("dynamodb_endpoint")
    @classmethod
    def _check_endpoint(cls, v: str | None) -> str | None:
        if v is not None and urlsplit(v).scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        return v

    @field_validator("table")
    @classmethod
    def _check_table(cls, v: str) -> str:
        import re

        if not re.fullmatch(r"[A-Za-z0-9_.\-]{3,255}", v):
            raise ValueError("DynamoDB table names are 3-255 characters of [A-Za-z0-9_.-]")
        return v

    @field_validator("topic")
    @classmethod
    def _check_topic(cls, v: str) -> str:
        levels = v.split("/")
        if not v or any(("+" in lv and lv != "+") or ("#" in lv and lv != "#") for lv in levels):
            raise ValueError("not a valid MQTT topic filter")
        if "#" in levels[:-1]:
            raise ValueError("'#' may only be the last level")
        return v

    @field_validator("bucket_minutes")
    @classmethod
    def _check_bucket(cls, m: int) -> int:
        # A field (not model) validator, so the error names the value's source.
        if (m < 1440 and 1440 % m) or (m > 1440 and m % 1440):
            raise ValueError("must divide a day (e.g. 60) or be whole days")
        return m

    @model_validator(mode="after")
    def _check_window(self) -> Config:
        if self.layout == "packed" and (self.bucket_minutes * 60) % self.window_seconds:
            raise ValueError(
                f"window_seconds={self.window_seconds} must divide the bucket "
                f"(bucket_minutes={self.bucket_minutes}: {self.bucket_minutes * 60} s)"
            )
        return self

    @model_validator(mode="after")
    def _check_reconnect(self) -> Config:
        if self.mqtt_reconnect_max_ms < self.mqtt_reconnect_min_ms:
            raise ValueError("mqtt_reconnect_max_ms must be >= mqtt_reconnect_min_ms")
        return self

    @model_validator(mode="after")
    def _check_sensor_id_rule(self) -> Config:
        if self.sensor_id_rule != "any" and self.topic_sensor_level is None:
            raise ValueError(
                f"sensor_id_rule={self.sensor_id_rule!r} needs the topic's sensor id, but "
                f"topic={self.topic!r} has no '+' level and sensor_topic_level is unset: set "
                "sensor_topic_level, or sensor_id_rule='any' if every publisher is trusted"
            )
        return self

    # -- derived ----------------------------------------------------------------

    @property
    def topic_sensor_level(self) -> int | None:
        if self.sensor_topic_level is not None:
            return self.sensor_topic_level
        levels = self.topic.split("/")
        return levels.index("+") if "+" in levels else None

    @property
    def subscription(self) -> str:
        return f"$share/{self.shared_group}/{self.topic}" if self.shared_group else self.topic

    @property
    def effective_max_past_ms(self) -> int:
        if self.max_past_ms is not None:
            return self.max_past_ms
        retention_ms = self.retention_days * 86_400_000
        return retention_ms - min(86_400_000, retention_ms // 2)

    def mqtt_credentials(self) -> tuple[str | None, str | None]:
        """User name and password from the flags, the password file, or the URL."""
        user, password = self.mqtt_username, self.mqtt_password
        if self.mqtt_url:
            parts = urlsplit(self.mqtt_url)
            user = user or (unquote(parts.username) if parts.username else None)
            password = password or (unquote(parts.password) if parts.password else None)
        if self.mqtt_password_file is not None:
            password = self.mqtt_password_file.read_text().strip()
        return user, password

    def masked(self) -> dict[str, Any]:
        """The effective config as a dict, secrets replaced by '***'."""
        out = self.model_dump(mode="json")
        for k in SECRET_KEYS:
            if out.get(k):
                out[k] = "***"
        if out.get("mqtt_url"):
            out["mqtt_url"] = _mask_url(out["mqtt_url"])
        return out


def _mask_url(url: str) -> str:
    """``url`` with the password inside it (if any) replaced by '***'."""
    try:
        password = urlsplit(url).password
    except ValueError:  # unparseable (e.g. bad IPv6 brackets): hide all before the host
        _, at, host = url.rpartition("@")
        return f"***@{host}" if at else url
    return url.replace(f":{password}@", ":***@", 1) if password else url


def load_config(
    *,
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """Merge file < environment < flags and validate; raise ConfigError naming key and value."""
    env = os.environ if env is None else env
    sources: dict[str, str] = {}
    values: dict[str, Any] = {}
    fields = Config.model_fields
    file = file or (Path(env[ENV_PREFIX + "CONFIG"]) if env.get(ENV_PREFIX + "CONFIG") else None)
    if file is not None:
        try:
            data = tomllib.loads(file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {file}: {exc}") from exc
        for k, v in data.items():
            values[k] = v
            sources[k] = f"config file {file}"
    for name in fields:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = raw
            sources[name] = f"environment {ENV_PREFIX}{name.upper()}"
    for k, v in (flags or {}).items():
        if v is not None:
            values[k] = v
            sources[k] = f"flag --{k.replace('_', '-')}"
    try:
        return Config(**values)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if not err["loc"]:
                # A check across keys: its message names them; the input here is
                # every value (secrets included), so it is not shown.
                lines.append(msg)
                continue
            key = ".".join(str(p) for p in err["loc"])
            where = sources.get(key, "default")
            value = values.get(key, err.get("input"))
            if key in SECRET_KEYS:
                value = "***"
            elif key == "mqtt_url" and isinstance(value, str):
                value = _mask_url(value)
            if err["type"] == "extra_forbidden":
                msg = "unknown key (see docs/configuration.md)"
            lines.append(f"{key}={value!r} ({where}): {msg}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


def reference_markdown() -> str:
    """The configuration reference (docs/configuration.md's table), from the model."""
    rows = [
        "| key | environment | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for name, f in Config.model_fields.items():
        if f.default_factory is not None:
            default = "hostname-based" if name == "mqtt_client_id" else "(computed)"
        else:
            default = "unset" if f.default is None else f"`{f.default}`"
        desc = (f.description or "").replace("|", "\\|")
        rows.append(f"| `{name}` | `{ENV_PREFIX}{name.upper()}` | {default} | {desc} |")
    return "\n".join(rows) + "\n"


_FLAG_HELP_SKIP = frozenset({"aws_secret_access_key", "mqtt_password"})


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per config key (--mqtt-url …); flags override environment and file."""
    p.add_argument("--config", type=Path, help="TOML config file (or IOT_INGEST_CONFIG)")
    for name, field in Config.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = (field.description or "") + f" [env IOT_INGEST_{name.upper()}]"
        if field.annotation is bool:
            p.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif name in _FLAG_HELP_SKIP:
            p.add_argument(flag, dest=name, default=None, help=argparse.SUPPRESS)
        else:
            p.add_argument(flag, dest=name, default=None, help=help_text)


def add_table_flags(p: argparse.ArgumentParser, *, table: bool = True) -> None:
    """The config flags of commands that only read or manage a table (serve, archive)."""
    p.add_argument("--config", type=Path, help="TOML config file (or IOT_INGEST_CONFIG)")
    if table:
        p.add_argument("--table", help="DynamoDB table name [env IOT_INGEST_TABLE]")
        p.add_argument(
            "--dynamodb-endpoint", help="DynamoDB endpoint URL [env IOT_INGEST_DYNAMODB_ENDPOINT]"
        )
    p.add_argument("--region", help="AWS region [env IOT_INGEST_REGION]")
    p.add_argument(
        "--aws-access-key-id", help="explicit AWS key id [env IOT_INGEST_AWS_ACCESS_KEY_ID]"
    )
    p.add_argument("--aws-secret-access-key", help=argparse.SUPPRESS)


def table_config(args: argparse.Namespace) -> Config:
    """The config of a command built with :func:`add_table_flags` (logging set up from it)."""
    cfg = load_config(
        file=args.config,
        flags={
            "table": getattr(args, "table", None),
            "dynamodb_endpoint": getattr(args, "dynamodb_endpoint", None),
            "region": args.region,
            "aws_access_key_id": args.aws_access_key_id,
            "aws_secret_access_key": args.aws_secret_access_key,
            "log_level": args.log_level,
        },
    )
    setup_logging(cfg.log_level, cfg.log_format)
    return cfg


def config_from_args(args: argparse.Namespace) -> Config:
    flags = {name: getattr(args, name, None) for name in Config.model_fields}
    return load_config(file=getattr(args, "config", None), flags=flags)
