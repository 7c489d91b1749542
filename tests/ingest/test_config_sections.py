"""The sectioned config keeps its interface: every key of the flat list is accepted from the
TOML file, the environment and a flag, lands in its section, and a bad value in any section
still fails naming the key, the value and its source."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from ingest.config import KEYS, Config, add_config_flags, config_from_args, load_config
from ingest.core.errors import ConfigError

# The keys as they were when the config was one flat model (do not derive this list from the
# code: it is what users' files, environments and scripts already say).
FLAT_KEYS = [
    "mqtt_url",
    "mqtt_username",
    "mqtt_password",
    "mqtt_password_file",
    "mqtt_ca_file",
    "mqtt_cert_file",
    "mqtt_key_file",
    "mqtt_alpn",
    "mqtt_client_id",
    "mqtt_protocol",
    "mqtt_keepalive_s",
    "mqtt_session_expiry_s",
    "mqtt_receive_maximum",
    "mqtt_reconnect_min_ms",
    "mqtt_reconnect_max_ms",
    "topic",
    "sensor_topic_level",
    "shared_group",
    "table",
    "dynamodb_endpoint",
    "region",
    "create_table",
    "shards",
    "bucket_minutes",
    "retention_days",
    "flush_interval_ms",
    "write_concurrency",
    "write_queue_batches",
    "gc_young_threshold",
    "inbox_max_messages",
    "write_retry_base_ms",
    "write_retry_max_ms",
    "write_retry_deadline_s",
    "registry_interval_s",
    "registry_refresh_s",
    "startup_retry_deadline_s",
    "writer",
    "max_message_bytes",
    "max_readings_per_message",
    "max_metrics_per_reading",
    "max_tags_per_reading",
    "max_name_length",
    "max_tag_length",
    "max_future_ms",
    "max_new_sensors_per_minute",
    "max_known_sensors",
    "max_past_ms",
    "require_ts",
    "sensor_id_rule",
    "sensor_id_separator",
    "data_dir",
    "deadletter_topic",
    "metrics_host",
    "metrics_port",
    "shutdown_timeout_s",
    "log_level",
    "log_format",
    "aws_access_key_id",
    "aws_secret_access_key",
]

SECTION_OF = {
    **dict.fromkeys(FLAT_KEYS[: FLAT_KEYS.index("shared_group") + 1], "mqtt"),
    **dict.fromkeys(
        ["table", "create_table", "shards", "bucket_minutes", "retention_days"], "dynamodb"
    ),
    **dict.fromkeys(
        ["region", "dynamodb_endpoint", "aws_access_key_id", "aws_secret_access_key"], "aws"
    ),
    **dict.fromkeys(
        FLAT_KEYS[FLAT_KEYS.index("flush_interval_ms") : FLAT_KEYS.index("writer") + 1],
        "pipeline",
    ),
    **dict.fromkeys(
        FLAT_KEYS[
            FLAT_KEYS.index("max_message_bytes") : FLAT_KEYS.index("sensor_id_separator") + 1
        ],
        "limits",
    ),
    **dict.fromkeys(
        FLAT_KEYS[FLAT_KEYS.index("data_dir") : FLAT_KEYS.index("log_format") + 1], "operations"
    ),
}

# A value for every key, other than its default, as text (the environment's and flags' form)
# and as the value it validates to.
SAMPLES: dict[str, tuple[str, Any]] = {
    "mqtt_url": ("mqtt://broker.example:1884", "mqtt://broker.example:1884"),
    "mqtt_username": ("ops", "ops"),
    "mqtt_password": ("pw", "pw"),
    "mqtt_password_file": ("/run/pw", Path("/run/pw")),
    "mqtt_ca_file": ("/etc/ca.pem", Path("/etc/ca.pem")),
    "mqtt_cert_file": ("/etc/c.pem", Path("/etc/c.pem")),
    "mqtt_key_file": ("/etc/k.pem", Path("/etc/k.pem")),
    "mqtt_alpn": ("x-amzn-mqtt-ca", "x-amzn-mqtt-ca"),
    "mqtt_client_id": ("worker-9", "worker-9"),
    "mqtt_protocol": ("3.1.1", "3.1.1"),
    "mqtt_keepalive_s": ("45", 45),
    "mqtt_session_expiry_s": ("60", 60),
    "mqtt_receive_maximum": ("500", 500),
    "mqtt_reconnect_min_ms": ("300", 300),
    "mqtt_reconnect_max_ms": ("9000", 9000),
    "topic": ("plant/+/data", "plant/+/data"),
    "sensor_topic_level": ("1", 1),
    "shared_group": ("g1", "g1"),
    "table": ("other-table", "other-table"),
    "dynamodb_endpoint": ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
    "region": ("eu-west-1", "eu-west-1"),
    "create_table": ("true", True),
    "shards": ("8", 8),
    "bucket_minutes": ("60", 60),
    "retention_days": ("90", 90),
    "flush_interval_ms": ("75", 75),
    "write_concurrency": ("4", 4),
    "write_queue_batches": ("8", 8),
    "gc_young_threshold": ("0", 0),
    "inbox_max_messages": ("1000", 1000),
    "write_retry_base_ms": ("30", 30),
    "write_retry_max_ms": ("900", 900),
    "write_retry_deadline_s": ("12.5", 12.5),
    "registry_interval_s": ("3", 3.0),
    "registry_refresh_s": ("0", 0.0),
    "startup_retry_deadline_s": ("7", 7.0),
    "writer": ("botocore", "botocore"),
    "max_message_bytes": ("4096", 4096),
    "max_readings_per_message": ("10", 10),
    "max_metrics_per_reading": ("5", 5),
    "max_tags_per_reading": ("2", 2),
    "max_name_length": ("20", 20),
    "max_tag_length": ("30", 30),
    "max_future_ms": ("1000", 1000),
    "max_new_sensors_per_minute": ("7", 7),
    "max_known_sensors": ("99", 99),
    "max_past_ms": ("5000", 5000),
    "require_ts": ("true", True),
    "sensor_id_rule": ("topic", "topic"),
    "sensor_id_separator": (".", "."),
    "data_dir": ("/var/lib/x", Path("/var/lib/x")),
    "deadletter_topic": ("dlq/all", "dlq/all"),
    "metrics_host": ("0.0.0.0", "0.0.0.0"),
    "metrics_port": ("9200", 9200),
    "shutdown_timeout_s": ("3", 3.0),
    "log_level": ("DEBUG", "DEBUG"),
    "log_format": ("json", "json"),
    "aws_access_key_id": ("AKID", "AKID"),
    "aws_secret_access_key": ("SECRET", "SECRET"),
}


def _section_value(config: Config, key: str) -> Any:
    return getattr(getattr(config, SECTION_OF[key]), key)


def _toml(key: str, text: str, value: Any) -> str:
    if isinstance(value, bool):
        return f"{key} = {text}\n"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{key} = {value!r}\n"
    return f"{key} = {text!r}\n".replace("'", '"')


def test_the_keys_are_the_flat_list_and_each_is_in_its_section() -> None:
    assert len(FLAT_KEYS) == len(set(FLAT_KEYS)) == 59
    assert set(SAMPLES) == set(FLAT_KEYS)
    assert dict(KEYS) == SECTION_OF


@pytest.mark.parametrize("key", FLAT_KEYS)
def test_every_key_is_read_from_the_toml_file(key: str, tmp_path: Path) -> None:
    text, value = SAMPLES[key]
    file = tmp_path / "ingest.toml"
    file.write_text(_toml(key, text, value))

    assert _section_value(load_config(file=file, env={}), key) == value


@pytest.mark.parametrize("key", FLAT_KEYS)
def test_every_key_is_read_from_its_environment_variable(key: str) -> None:
    text, value = SAMPLES[key]

    config = load_config(env={f"IOT_INGEST_{key.upper()}": text})

    assert _section_value(config, key) == value


@pytest.mark.parametrize("key", FLAT_KEYS)
def test_every_key_is_read_from_its_flag(key: str) -> None:
    text, value = SAMPLES[key]
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    flag = "--" + key.replace("_", "-")
    argv = [flag] if value is True else [flag, text]

    config = config_from_args(parser.parse_args(argv))

    assert _section_value(config, key) == value


def test_show_prints_the_same_flat_keys() -> None:
    assert set(Config().masked()) == set(FLAT_KEYS)


@pytest.mark.parametrize(
    ("key", "bad", "message"),
    [
        ("mqtt_keepalive_s", "2", "greater than or equal to 5"),
        ("shards", "100", "less than or equal to 64"),
        ("dynamodb_endpoint", "ftp://x", "must be an http:// or https:// URL"),
        ("write_concurrency", "0", "greater than or equal to 1"),
        ("max_message_bytes", "1", "greater than or equal to 64"),
        ("metrics_port", "70000", "less than or equal to 65535"),
    ],
    ids=["mqtt", "dynamodb", "aws", "pipeline", "limits", "operations"],
)
@pytest.mark.parametrize("source", ["file", "env", "flag"])
def test_a_bad_value_in_every_section_names_key_value_and_source(
    key: str, bad: str, message: str, source: str, tmp_path: Path
) -> None:
    env: dict[str, str] = {}
    kwargs: dict[str, Any] = {}
    if source == "file":
        file = tmp_path / "ingest.toml"
        file.write_text(f"{key} = {bad if bad.isdigit() else repr(bad)}\n".replace("'", '"'))
        kwargs["file"], where = file, f"config file {file}"
        expected_value: Any = int(bad) if bad.isdigit() else bad
    elif source == "env":
        env[f"IOT_INGEST_{key.upper()}"] = bad
        where, expected_value = f"environment IOT_INGEST_{key.upper()}", bad
    else:
        kwargs["flags"] = {key: bad}
        where, expected_value = f"flag --{key.replace('_', '-')}", bad

    with pytest.raises(ConfigError) as info:
        load_config(env=env, **kwargs)

    assert f"{key}={expected_value!r} ({where}): " in str(info.value)
    assert message in str(info.value)


def test_a_bad_mqtt_url_flag_names_it_as_before() -> None:
    with pytest.raises(ConfigError, match=r"mqtt_url='x' \(flag --mqtt-url\): must look like"):
        load_config(env={}, flags={"mqtt_url": "x"})


def test_a_secret_in_a_bad_section_value_stays_masked() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"IOT_INGEST_MQTT_URL": "mqtt://u:hunter2@:bad"})
    assert "hunter2" not in str(info.value)
    assert "mqtt_url='mqtt://u:***@:bad' (environment IOT_INGEST_MQTT_URL)" in str(info.value)


@pytest.mark.parametrize("section", ["mqtt", "limits"])
def test_a_section_name_is_no_key_in_a_file(section: str, tmp_path: Path) -> None:
    file = tmp_path / "ingest.toml"
    file.write_text(f"[{section}]\nshards = 3\n")

    with pytest.raises(ConfigError, match=rf"{section}=.*\(config file .*\): unknown key"):
        load_config(file=file, env={})


def test_a_check_across_sections_still_names_the_keys() -> None:
    with pytest.raises(ConfigError, match="mqtt_reconnect_max_ms must be >= mqtt_reconnect_min_ms"):
        load_config(env={}, flags={"mqtt_reconnect_min_ms": 500, "mqtt_reconnect_max_ms": 200})
    with pytest.raises(ConfigError, match="sensor_id_rule='prefix' needs the topic's sensor id"):
        load_config(env={"IOT_INGEST_TOPIC": "plant/#"})


def test_replace_keeps_the_other_keys_and_validates_again() -> None:
    config = load_config(env={}, flags={"shards": 8, "mqtt_client_id": "w1"})

    changed = config.replace(mqtt_protocol="3.1.1")

    assert (changed.mqtt.mqtt_protocol, changed.dynamodb.shards) == ("3.1.1", 8)
    assert changed.mqtt.mqtt_client_id == "w1"
    with pytest.raises(ValueError, match="mqtt_protocol"):
        config.replace(mqtt_protocol="4")
