"""Service configuration: one frozen object of six sections, validated once at start.

Sources, later ones winning: built-in defaults < TOML file (``--config`` or
``IOT_INGEST_CONFIG``) < environment (``IOT_INGEST_<KEY>``) < command-line
flags. Every source speaks flat keys (``mqtt_url``, ``shards``); each key
belongs to one section, a small frozen model that its consumer takes whole:

- ``mqtt`` (:class:`MqttConfig`): the receiver, through :meth:`MqttConfig.client_settings`;
- ``dynamodb`` (:class:`TableConfig`): the table's name, creation and layout;
- ``aws`` (:class:`AwsConfig`): every AWS client, through :meth:`AwsConfig.client_settings`;
- ``pipeline`` (:class:`PipelineConfig`): the decode, batch, write and registry stages;
- ``limits`` (:class:`LimitsConfig`): the payload decoder (``Limits.from_config``);
- ``operations`` (:class:`OperationsConfig`): spool, health server, shutdown, logging.

A section's attributes are named by their keys (``cfg.mqtt.mqtt_url``), so a key
is spelt one way in files, the environment, flags, docs and code. Values are
checked by ``Field`` constraints and field validators; the checks across keys
are in one place, :meth:`Config._check_across_keys`. A bad value fails at start
with the key, the value and where it came from. Library code receives the
object; it never reads ``os.environ``.

The reference in docs/configuration.md is generated from this module
(``iot-ingest config reference``) and a test keeps the two in step.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import ssl
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from ingest.aws.settings import AwsSettings
from ingest.core.errors import ConfigError
from ingest.core.logs import setup_logging
from ingest.mqtt import proto as mqttproto
from ingest.mqtt.client import MqttSettings

__all__ = [
    "ENV_PREFIX",
    "KEYS",
    "SECRET_KEYS",
    "SECTIONS",
    "AwsConfig",
    "Config",
    "LimitsConfig",
    "MqttConfig",
    "OperationsConfig",
    "PipelineConfig",
    "TableConfig",
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


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MqttConfig(_Section):
    """The broker, the session and the subscription."""

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

    @field_validator("topic")
    @classmethod
    def _check_topic(cls, v: str) -> str:
        levels = v.split("/")
        if not v or any(("+" in lv and lv != "+") or ("#" in lv and lv != "#") for lv in levels):
            raise ValueError("not a valid MQTT topic filter")
        if "#" in levels[:-1]:
            raise ValueError("'#' may only be the last level")
        return v

    @property
    def topic_sensor_level(self) -> int | None:
        """The topic level of the sensor id: ``sensor_topic_level``, else the first '+'."""
        if self.sensor_topic_level is not None:
            return self.sensor_topic_level
        levels = self.topic.split("/")
        return levels.index("+") if "+" in levels else None

    @property
    def subscription(self) -> str:
        """The filter to subscribe to: ``topic``, shared as ``$share/GROUP/…`` with a group."""
        return f"$share/{self.shared_group}/{self.topic}" if self.shared_group else self.topic

    def credentials(self) -> tuple[str | None, str | None]:
        """User name and password from the keys, the password file, or the URL."""
        user, password = self.mqtt_username, self.mqtt_password
        if self.mqtt_url:
            parts = urlsplit(self.mqtt_url)
            user = user or (unquote(parts.username) if parts.username else None)
            password = password or (unquote(parts.password) if parts.password else None)
        if self.mqtt_password_file is not None:
            password = self.mqtt_password_file.read_text().strip()
        return user, password

    def client_settings(self, url: str, *, max_packet_bytes: int) -> MqttSettings:
        """The MQTT client's settings: this section at ``url`` (``mqtt_url`` or an embedded
        broker's), accepting packets up to ``max_packet_bytes``."""
        parts = urlsplit(url)
        tls: ssl.SSLContext | None = None
        if parts.scheme in ("mqtts", "ssl") or self.mqtt_ca_file is not None:
            ca = str(self.mqtt_ca_file) if self.mqtt_ca_file else None
            tls = ssl.create_default_context(cafile=ca)
            if self.mqtt_cert_file:
                key = str(self.mqtt_key_file) if self.mqtt_key_file else None
                tls.load_cert_chain(str(self.mqtt_cert_file), key)
            if self.mqtt_alpn:
                tls.set_alpn_protocols([p.strip() for p in self.mqtt_alpn.split(",") if p.strip()])
        user, password = self.credentials()
        return MqttSettings(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or (8883 if tls else 1883),
            client_id=self.mqtt_client_id,
            version=mqttproto.V5 if self.mqtt_protocol == "5" else mqttproto.V311,
            tls=tls,
            username=user,
            password=password,
            keepalive_s=self.mqtt_keepalive_s,
            clean_start=False,
            session_expiry_s=self.mqtt_session_expiry_s,
            receive_maximum=self.mqtt_receive_maximum,
            max_packet_bytes=max_packet_bytes,
        )


class TableConfig(_Section):
    """The DynamoDB table: its name, whether to create it, and its layout."""

    table: str = Field("iot-readings", description="DynamoDB table name.")
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

    @field_validator("table")
    @classmethod
    def _check_table(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]{3,255}", v):
            raise ValueError("DynamoDB table names are 3-255 characters of [A-Za-z0-9_.-]")
        return v

    @field_validator("bucket_minutes")
    @classmethod
    def _check_bucket(cls, m: int) -> int:
        if (m < 1440 and 1440 % m) or (m > 1440 and m % 1440):
            raise ValueError("must divide a day (e.g. 60) or be whole days")
        return m


class AwsConfig(_Section):
    """Where and as whom the service reaches AWS: region, endpoint, explicit keys."""

    region: str = Field("us-east-1", description="AWS region.")
    dynamodb_endpoint: str | None = Field(
        None,
        description="DynamoDB endpoint URL. Unset and no AWS credentials: embedded server (trial mode).",
    )
    aws_access_key_id: str | None = Field(
        None, description="Explicit AWS key (default: provider chain)."
    )
    aws_secret_access_key: str | None = Field(None, description="Explicit AWS secret (secret).")

    @field_validator("dynamodb_endpoint")
    @classmethod
    def _check_endpoint(cls, v: str | None) -> str | None:
        if v is not None and urlsplit(v).scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        return v

    def client_settings(self) -> AwsSettings:
        """The AWS clients' settings (the DynamoDB endpoint; S3 and Streams replace it)."""
        return AwsSettings(
            region=self.region,
            endpoint_url=self.dynamodb_endpoint,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
        )


class PipelineConfig(_Section):
    """The stages between the receiver and the table: queues, writers, retries, registry."""

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
        "flush. Unset on a packed table: window_seconds (900).",
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


class LimitsConfig(_Section):
    """What a message may hold: sizes, counts, time window, admitted sensor ids."""

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


class OperationsConfig(_Section):
    """Running the process: dead-letter spool, health server, shutdown, logging."""

    data_dir: Path = Field(Path("data"), description="Directory for the dead-letter spool.")
    deadletter_topic: str | None = Field(
        None, description="Also republish dead letters to this topic."
    )
    metrics_host: str = Field("127.0.0.1", description="Address of the metrics/health HTTP server.")
    metrics_port: int = Field(9108, ge=0, le=65_535, description="Its port (0: pick a free one).")
    shutdown_timeout_s: float = Field(
        15.0, gt=0, description="Deadline to drain on SIGTERM/SIGINT."
    )
    seal_at_stop: bool = Field(
        True,
        description="`packed`: seal every open window when stopping (off: leave their "
        "readings in the journal for the next start with the same client id, or `table "
        "adopt-journal`; a stop then takes no seal writes).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level."
    )
    log_format: Literal["text", "json"] = Field("text", description="Log line format.")


class Config(BaseModel):
    """Effective configuration of the ingest service (see docs/configuration.md).

    Built from flat keys (``Config(shards=8, mqtt_url=...)``, as every source gives
    them); read by section (``cfg.dynamodb.shards``, ``cfg.mqtt.mqtt_url``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="MQTT")
    dynamodb: TableConfig = Field(default_factory=TableConfig, description="DynamoDB table")
    aws: AwsConfig = Field(default_factory=AwsConfig, description="AWS target")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="Pipeline")
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Validation limits")
    operations: OperationsConfig = Field(default_factory=OperationsConfig, description="Operations")

    @model_validator(mode="before")
    @classmethod
    def _sort_keys_into_sections(cls, data: Any) -> Any:
        """Flat keys into their sections; other names are left for pydantic to refuse."""
        if not isinstance(data, Mapping):
            return data
        out: dict[str, Any] = {}
        grouped: dict[str, dict[str, Any]] = {}
        for key, value in data.items():
            section = KEYS.get(key)
            if section is None:
                out[key] = value
            else:
                grouped.setdefault(section, {})[key] = value
        for section, values in grouped.items():
            if section in out:
                raise ValueError(f"give the section {section!r} or its keys, not both")
            out[section] = values
        return out

    @model_validator(mode="after")
    def _check_across_keys(self) -> Config:
        """Every check that involves more than one key; its message names them all."""
        mqtt, table, limits = self.mqtt, self.dynamodb, self.limits
        if table.layout == "packed" and (table.bucket_minutes * 60) % table.window_seconds:
            raise ValueError(
                f"window_seconds={table.window_seconds} must divide the bucket "
                f"(bucket_minutes={table.bucket_minutes}: {table.bucket_minutes * 60} s)"
            )
        if mqtt.mqtt_reconnect_max_ms < mqtt.mqtt_reconnect_min_ms:
            raise ValueError("mqtt_reconnect_max_ms must be >= mqtt_reconnect_min_ms")
        if limits.sensor_id_rule != "any" and mqtt.topic_sensor_level is None:
            raise ValueError(
                f"sensor_id_rule={limits.sensor_id_rule!r} needs the topic's sensor id, but "
                f"topic={mqtt.topic!r} has no '+' level and sensor_topic_level is unset: set "
                "sensor_topic_level, or sensor_id_rule='any' if every publisher is trusted"
            )
        return self

    # -- derived across sections ------------------------------------------------

    @property
    def effective_max_past_ms(self) -> int:
        """``max_past_ms``, or by default the retention less a day (half of a one-day one)."""
        if self.limits.max_past_ms is not None:
            return self.limits.max_past_ms
        retention_ms = self.dynamodb.retention_days * 86_400_000
        return retention_ms - min(86_400_000, retention_ms // 2)

    @property
    def effective_registry_refresh_s(self) -> float:
        """``registry_refresh_s``, or by default on a ``packed`` table the window width
        (at least the default): its readings reach their sealed windows that late anyway,
        and the registry's writes were a quarter of such a table's write units at 300 s
        (docs/performance.md)."""
        refresh = self.pipeline.registry_refresh_s
        if (
            "registry_refresh_s" in self.pipeline.model_fields_set
            or self.dynamodb.layout != "packed"
        ):
            return refresh
        return max(refresh, float(self.dynamodb.window_seconds))

    def keys(self) -> dict[str, Any]:
        """Every key and its value, flat (as the sources give them)."""
        return {k: getattr(getattr(self, s), k) for k, s in KEYS.items()}

    def replace(self, **keys: Any) -> Config:
        """A copy with some keys changed, validated again."""
        return Config.model_validate({**self.keys(), **keys})

    def masked(self) -> dict[str, Any]:
        """The effective config as a flat dict of keys, secrets replaced by '***'."""
        out: dict[str, Any] = {}
        for section in SECTIONS:
            out.update(getattr(self, section).model_dump(mode="json"))
        for k in SECRET_KEYS:
            if out.get(k):
                out[k] = "***"
        if out.get("mqtt_url"):
            out["mqtt_url"] = _mask_url(out["mqtt_url"])
        return out


SECTIONS: Mapping[str, type[BaseModel]] = {
    "mqtt": MqttConfig,
    "dynamodb": TableConfig,
    "aws": AwsConfig,
    "pipeline": PipelineConfig,
    "limits": LimitsConfig,
    "operations": OperationsConfig,
}
"""Each section of :class:`Config` and its model, in the reference's order."""

KEYS: Mapping[str, str] = {
    key: section for section, model in SECTIONS.items() for key in model.model_fields
}
"""Every config key and the section it belongs to."""

_FIELDS: Mapping[str, FieldInfo] = {
    key: SECTIONS[section].model_fields[key] for key, section in KEYS.items()
}


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
    file = file or (Path(env[ENV_PREFIX + "CONFIG"]) if env.get(ENV_PREFIX + "CONFIG") else None)
    if file is not None:
        try:
            data = tomllib.loads(file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {file}: {exc}") from exc
        for k, v in data.items():
            values[k] = v
            sources[k] = f"config file {file}"
    for name in KEYS:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = raw
            sources[name] = f"environment {ENV_PREFIX}{name.upper()}"
    for k, v in (flags or {}).items():
        if v is not None:
            values[k] = v
            sources[k] = f"flag --{k.replace('_', '-')}"
    # Keys only: a section's name (a TOML table such as [mqtt]) is no key either.
    unknown = [k for k in values if k not in KEYS]
    try:
        config = Config(**{k: v for k, v in values.items() if k in KEYS})
    except ValidationError as exc:
        lines = [_error_line(err, values, sources) for err in exc.errors()]
    else:
        if not unknown:
            return config
        lines = []
    for key in unknown:
        where = sources.get(key, "default")
        lines.append(f"{key}={values[key]!r} ({where}): unknown key (see docs/configuration.md)")
    raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


def _error_line(err: ErrorDetails, values: Mapping[str, Any], sources: Mapping[str, str]) -> str:
    """One line of a validation error: the key, its value (secrets masked) and its source."""
    msg = err["msg"].removeprefix("Value error, ")
    loc = err["loc"][1:] if err["loc"] and err["loc"][0] in SECTIONS else err["loc"]
    if not loc:
        # A check across keys: its message names them; the input here is
        # every value (secrets included), so it is not shown.
        return msg
    key = ".".join(str(p) for p in loc)
    value = values.get(key, err.get("input"))
    if key in SECRET_KEYS:
        value = "***"
    elif key == "mqtt_url" and isinstance(value, str):
        value = _mask_url(value)
    return f"{key}={value!r} ({sources.get(key, 'default')}): {msg}"


def reference_markdown() -> str:
    """The configuration reference (docs/configuration.md's tables, one per section)."""
    rows: list[str] = []
    for section, model in SECTIONS.items():
        title = Config.model_fields[section].description
        rows += [
            f"### {title} (`{section}`)",
            "",
            f"{(model.__doc__ or '').strip()}",
            "",
            "| key | environment | default | meaning |",
            "| --- | --- | --- | --- |",
        ]
        for name, f in model.model_fields.items():
            if f.default_factory is not None:
                default = "hostname-based" if name == "mqtt_client_id" else "(computed)"
            else:
                default = "unset" if f.default is None else f"`{f.default}`"
            desc = (f.description or "").replace("|", "\\|")
            rows.append(f"| `{name}` | `{ENV_PREFIX}{name.upper()}` | {default} | {desc} |")
        rows.append("")
    return "\n".join(rows)


_FLAG_HELP_SKIP = frozenset({"aws_secret_access_key", "mqtt_password"})


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per config key (--mqtt-url …); flags override environment and file."""
    p.add_argument("--config", type=Path, help="TOML config file (or IOT_INGEST_CONFIG)")
    for name, field in _FIELDS.items():
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
    setup_logging(cfg.operations.log_level, cfg.operations.log_format)
    return cfg


def config_from_args(args: argparse.Namespace) -> Config:
    flags = {name: getattr(args, name, None) for name in KEYS}
    return load_config(file=getattr(args, "config", None), flags=flags)
