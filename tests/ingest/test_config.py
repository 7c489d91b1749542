"""Unit tests of ingest.config: sources and precedence, error messages, secrets, derived values."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from ingest.config import KEYS, Config, load_config, reference_markdown
from ingest.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def config_of(**values: Any) -> Config:
    return Config.model_validate(values)


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ingest.toml"
    path.write_text(text)
    return path


def config_error(**kwargs: Any) -> str:
    kwargs.setdefault("env", {})
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)
    return str(info.value)


# -- sources -----------------------------------------------------------------


def test_defaults_without_any_source() -> None:
    config = load_config(env={})

    assert config.dynamodb.table == "iot-readings"
    assert config.dynamodb.shards == 4
    assert config.dynamodb.bucket_minutes == 1440
    assert config.mqtt.mqtt_url is None


def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    file = write_toml(
        tmp_path, 'shards = 2\ntable = "file-table"\nregion = "eu-west-1"\nretention_days = 7\n'
    )
    env = {"IOT_INGEST_SHARDS": "3", "IOT_INGEST_TABLE": "env-table"}

    config = load_config(file=file, env=env, flags={"shards": 5})

    assert config.dynamodb.shards == 5  # flag beats environment and file
    assert config.dynamodb.table == "env-table"  # environment beats file
    assert config.aws.region == "eu-west-1"  # file beats default
    assert config.dynamodb.retention_days == 7
    assert config.pipeline.write_concurrency == 16  # default


def test_unset_flags_and_empty_environment_values_do_not_override(tmp_path: Path) -> None:
    file = write_toml(tmp_path, "shards = 2\n")

    config = load_config(file=file, env={"IOT_INGEST_SHARDS": ""}, flags={"shards": None})

    assert config.dynamodb.shards == 2


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    file = write_toml(tmp_path, 'table = "from-env-file"\n')

    config = load_config(env={"IOT_INGEST_CONFIG": str(file)})

    assert config.dynamodb.table == "from-env-file"


def test_environment_values_are_converted() -> None:
    env = {
        "IOT_INGEST_CREATE_TABLE": "true",
        "IOT_INGEST_WRITE_RETRY_DEADLINE_S": "12.5",
        "IOT_INGEST_DATA_DIR": "/var/lib/iot",
    }

    config = load_config(env=env)

    assert config.dynamodb.create_table is True
    assert config.pipeline.write_retry_deadline_s == 12.5
    assert config.operations.data_dir == Path("/var/lib/iot")


# -- errors name the key, the value and the source ---------------------------


def test_error_from_the_environment() -> None:
    message = config_error(env={"IOT_INGEST_SHARDS": "100"})

    assert message == (
        "invalid configuration:\n"
        "  shards='100' (environment IOT_INGEST_SHARDS): Input should be less than or equal to 64"
    )


def test_error_from_the_file_and_a_flag_together(tmp_path: Path) -> None:
    file = write_toml(tmp_path, "shards = 0\n")

    message = config_error(file=file, flags={"table": "ab"})

    assert f"shards=0 (config file {file}): Input should be greater than or equal to 1" in message
    assert "table='ab' (flag --table): DynamoDB table names are 3-255 characters" in message


def test_unknown_toml_key_is_rejected(tmp_path: Path) -> None:
    file = write_toml(tmp_path, "shardz = 3\n")

    message = config_error(file=file)

    assert f"shardz=3 (config file {file}): unknown key (see docs/configuration.md)" in message


def test_unreadable_or_invalid_toml_names_the_file(tmp_path: Path) -> None:
    bad = write_toml(tmp_path, "shards = = 3\n")
    missing = tmp_path / "missing.toml"

    assert config_error(file=bad).startswith(f"config file {bad}: ")
    assert config_error(file=missing).startswith(f"config file {missing}: ")


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        ({"mqtt_url": "http://broker:1883"}, "must look like mqtt://HOST:PORT"),
        ({"mqtt_url": "mqtt://broker:port"}, "bad port"),
        ({"dynamodb_endpoint": "localhost:8000"}, "must be an http:// or https:// URL"),
        ({"topic": "sensors/a+/telemetry"}, "not a valid MQTT topic filter"),
        ({"topic": "sensors/#/telemetry"}, "'#' may only be the last level"),
        ({"mqtt_protocol": "4"}, "Input should be '5' or '3.1.1'"),
    ],
)
def test_invalid_flag_values(flags: dict[str, Any], fragment: str) -> None:
    ((key, value),) = flags.items()

    message = config_error(flags=flags)

    assert f"{key}={value!r} (flag --{key.replace('_', '-')}): " in message
    assert fragment in message


def test_secrets_are_masked_in_errors() -> None:
    message = config_error(flags={"mqtt_password": 12345})

    assert "mqtt_password='***' (flag --mqtt-password)" in message
    assert "12345" not in message


def test_password_in_a_bad_mqtt_url_is_masked_in_errors() -> None:
    message = config_error(flags={"mqtt_url": "mqtt://ingest:hunter2@broker:notaport"})

    assert "mqtt_url='mqtt://ingest:***@broker:notaport' (flag --mqtt-url): bad port" in message
    assert "hunter2" not in message


def test_cross_key_error_does_not_dump_other_values() -> None:
    flags = {"mqtt_password": "hunter2", "mqtt_reconnect_min_ms": 500, "mqtt_reconnect_max_ms": 100}

    message = config_error(flags=flags)

    assert message == (
        "invalid configuration:\n  mqtt_reconnect_max_ms must be >= mqtt_reconnect_min_ms"
    )


@pytest.mark.parametrize("minutes", [1, 5, 15, 60, 360, 1440, 2880, 10_080])
def test_valid_bucket_minutes(minutes: int) -> None:
    assert load_config(env={}, flags={"bucket_minutes": minutes}).dynamodb.bucket_minutes == minutes


@pytest.mark.parametrize(
    ("env_value", "fragment"),
    [
        ("7", "must divide a day (e.g. 60) or be whole days"),
        ("2000", "must divide a day (e.g. 60) or be whole days"),
        ("0", "Input should be greater than or equal to 1"),
    ],
)
def test_invalid_bucket_minutes_name_value_and_source(env_value: str, fragment: str) -> None:
    message = config_error(env={"IOT_INGEST_BUCKET_MINUTES": env_value})

    assert message == (
        "invalid configuration:\n"
        f"  bucket_minutes={env_value!r} (environment IOT_INGEST_BUCKET_MINUTES): {fragment}"
    )


# -- secrets -----------------------------------------------------------------


def test_masked_hides_every_secret() -> None:
    config = config_of(
        mqtt_url="mqtt://ingest:hunter2@broker:1883",
        mqtt_password="s3cret-mqtt",
        aws_access_key_id="AKIAEXAMPLE",
        aws_secret_access_key="s3cret-aws",
    )

    masked = config.masked()
    text = json.dumps(masked)

    assert masked["mqtt_url"] == "mqtt://ingest:***@broker:1883"
    assert masked["mqtt_password"] == "***"
    assert masked["aws_secret_access_key"] == "***"
    assert masked["aws_access_key_id"] == "AKIAEXAMPLE"  # not a secret
    for secret in ("hunter2", "s3cret-mqtt", "s3cret-aws"):
        assert secret not in text
    assert config.mqtt.mqtt_password == "s3cret-mqtt"  # the config itself is unchanged


def test_masked_leaves_unset_secrets_and_plain_urls_alone() -> None:
    masked = config_of(mqtt_url="mqtts://broker.example:8883").masked()

    assert masked["mqtt_url"] == "mqtts://broker.example:8883"
    assert masked["mqtt_password"] is None
    assert masked["aws_secret_access_key"] is None


def test_credentials_from_the_url_are_unquoted() -> None:
    config = config_of(mqtt_url="mqtt://al%40ice:p%3Ass@broker:1883")

    assert config.mqtt.credentials() == ("al@ice", "p:ss")


def test_password_file_is_read_and_wins(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text("from-file\n")
    config = load_config(
        env={"IOT_INGEST_MQTT_PASSWORD_FILE": str(secret)},
        flags={"mqtt_url": "mqtt://ingest:from-url@broker:1883", "mqtt_username": "operator"},
    )

    assert config.mqtt.credentials() == ("operator", "from-file")
    assert "from-file" not in json.dumps(config.masked())


# -- derived values ----------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "level"),
    [
        ({}, 1),
        ({"topic": "site/+/+/data"}, 1),
        ({"topic": "+/telemetry"}, 0),
        ({"topic": "tele/#", "sensor_id_rule": "any"}, None),  # no topic id: only any
        ({"topic": "site/+/telemetry", "sensor_topic_level": 0}, 0),
    ],
)
def test_topic_sensor_level(values: dict[str, Any], level: int | None) -> None:
    assert config_of(**values).mqtt.topic_sensor_level == level


def test_subscription_with_and_without_a_shared_group() -> None:
    assert config_of().mqtt.subscription == "sensors/+/telemetry"
    assert (
        config_of(shared_group="workers").mqtt.subscription == "$share/workers/sensors/+/telemetry"
    )


def test_max_past_defaults_to_the_retention_less_a_day() -> None:
    assert config_of(retention_days=7).effective_max_past_ms == 6 * 86_400_000
    assert config_of(retention_days=7, max_past_ms=60_000).effective_max_past_ms == 60_000


# -- the documented reference ------------------------------------------------


def test_docs_configuration_md_contains_the_generated_reference() -> None:
    doc = REPO / "docs" / "configuration.md"

    assert doc.is_file(), f"{doc} is missing: generate it with `iot-ingest config reference`"
    assert reference_markdown() in doc.read_text()


@pytest.mark.parametrize(
    ("retention_days", "max_past_days"), [(30, 29), (2, 1), (1, 0.5)], ids=["30d", "2d", "1d"]
)
def test_default_max_past_leaves_time_before_ttl(retention_days: int, max_past_days: float) -> None:
    """A reading accepted at the edge of the window must not be due for TTL at once (it would
    leave the table before any archive pass could take it)."""
    cfg = Config(retention_days=retention_days)
    assert cfg.effective_max_past_ms == round(max_past_days * 86_400_000)
    assert Config(retention_days=retention_days, max_past_ms=5).effective_max_past_ms == 5


def test_every_decoding_limit_is_the_config_key_of_its_name() -> None:
    from ingest.pipeline.codec import Limits

    cfg = load_config(
        env={},
        flags={
            "max_tags_per_reading": 3,
            "max_name_length": 9,
            "max_past_ms": 1234,
            "require_ts": True,
        },
    )
    limits = Limits.from_config(cfg)
    assert (limits.max_tags_per_reading, limits.max_name_length) == (3, 9)
    assert (limits.max_past_ms, limits.require_ts) == (1234, True)
    for f in dataclasses.fields(Limits):
        assert KEYS.get(f.name) == "limits", f"Limits.{f.name} is no key of the limits section"
        if f.name != "max_past_ms":
            assert getattr(limits, f.name) == getattr(cfg.limits, f.name)
