"""The sectioned config keeps its interface: every key of the flat list is accepted from the
TOML file, the environment and a flag, lands in its section, and a bad value in any section
still fails naming the key, the value and its source."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from ingest.config import (
    KEYS,
    Config,
    add_config_flags,
    config_from_args,
    load_config,
    reference_markdown,
)
from ingest.core.errors import ConfigError
from ingest.pipeline.codec import Limits

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
    "layout",
    "window_seconds",
    "stage_interval_ms",
    "staging_groups",
    "journal_ttl_hours",
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
    "seal_at_stop",
    "log_level",
    "log_format",
    "aws_access_key_id",
    "aws_secret_access_key",
]

SECTION_OF = {
    **dict.fromkeys(FLAT_KEYS[: FLAT_KEYS.index("shared_group") + 1], "mqtt"),
    **dict.fromkeys(
        [
            "table",
            "create_table",
            "shards",
            "bucket_minutes",
            "retention_days",
            "layout",
            "window_seconds",
            "stage_interval_ms",
            "staging_groups",
            "journal_ttl_hours",
        ],
        "dynamodb",
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
    "layout": ("packed", "packed"),
    "window_seconds": ("600", 600),
    "stage_interval_ms": ("2000", 2000),
    "staging_groups": ("16", 16),
    "journal_ttl_hours": ("24", 24),
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
    "seal_at_stop": ("false", False),
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
    assert len(FLAT_KEYS) == len(set(FLAT_KEYS)) == 65
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
    argv = [flag] if value is True else ["--no-" + flag[2:]] if value is False else [flag, text]

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


# The defaults as today's flat config gave them (``Config().masked()`` before the sections;
# the client id is hostname-based).
DEFAULTS: dict[str, Any] = {
    "mqtt_url": None,
    "mqtt_username": None,
    "mqtt_password": None,
    "mqtt_password_file": None,
    "mqtt_ca_file": None,
    "mqtt_cert_file": None,
    "mqtt_key_file": None,
    "mqtt_alpn": None,
    "mqtt_protocol": "5",
    "mqtt_keepalive_s": 30,
    "mqtt_session_expiry_s": 604800,
    "mqtt_receive_maximum": 10000,
    "mqtt_reconnect_min_ms": 200,
    "mqtt_reconnect_max_ms": 30000,
    "topic": "sensors/+/telemetry",
    "sensor_topic_level": None,
    "shared_group": None,
    "table": "iot-readings",
    "dynamodb_endpoint": None,
    "region": "us-east-1",
    "create_table": False,
    "shards": 4,
    "bucket_minutes": 1440,
    "retention_days": 30,
    "layout": "reading",
    "window_seconds": 900,
    "stage_interval_ms": 10000,
    "staging_groups": 256,
    "journal_ttl_hours": 48,
    "flush_interval_ms": 50,
    "write_concurrency": 16,
    "write_queue_batches": 64,
    "gc_young_threshold": 10000,
    "inbox_max_messages": 20000,
    "write_retry_base_ms": 25,
    "write_retry_max_ms": 5000,
    "write_retry_deadline_s": 300.0,
    "registry_interval_s": 10.0,
    "registry_refresh_s": 300.0,
    "startup_retry_deadline_s": 300.0,
    "writer": "lean",
    "max_message_bytes": 262144,
    "max_readings_per_message": 1000,
    "max_metrics_per_reading": 64,
    "max_tags_per_reading": 16,
    "max_name_length": 64,
    "max_tag_length": 256,
    "max_future_ms": 300000,
    "max_new_sensors_per_minute": 10000,
    "max_known_sensors": 1000000,
    "max_past_ms": None,
    "require_ts": False,
    "sensor_id_rule": "prefix",
    "sensor_id_separator": ":",
    "data_dir": "data",
    "deadletter_topic": None,
    "metrics_host": "127.0.0.1",
    "metrics_port": 9108,
    "shutdown_timeout_s": 15.0,
    "seal_at_stop": True,
    "log_level": "INFO",
    "log_format": "text",
    "aws_access_key_id": None,
    "aws_secret_access_key": None,
}


def _flat_file(tmp_path: Path) -> Path:
    """A config file as written for the flat config: every key at the top level."""
    file = tmp_path / "today.toml"
    file.write_text("".join(_toml(k, text, value) for k, (text, value) in SAMPLES.items()))
    return file


def test_the_reference_lists_every_key_with_its_environment_variable() -> None:
    rows = [r for r in reference_markdown().splitlines() if r.startswith("| `")]
    listed = [r.split("|")[1].strip().strip("`") for r in rows]
    env = [r.split("|")[2].strip().strip("`") for r in rows]

    assert sorted(listed) == sorted(FLAT_KEYS)
    assert env == [f"IOT_INGEST_{k.upper()}" for k in listed]


def test_every_flag_of_run_is_a_key() -> None:
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    flags = {a.dest for a in parser._actions if a.option_strings and a.dest != "help"}

    assert flags == {*FLAT_KEYS, "config"}
    for key in FLAT_KEYS:
        assert f"--{key.replace('_', '-')}" in parser._option_string_actions


def test_the_defaults_are_those_of_the_flat_config() -> None:
    shown = load_config(env={}).masked()
    assert shown.pop("mqtt_client_id").startswith("iot-ingest-")

    assert shown == DEFAULTS


def test_a_config_file_of_flat_keys_loads_unchanged_into_the_sections(tmp_path: Path) -> None:
    config = load_config(file=_flat_file(tmp_path), env={})

    got = {k: _section_value(config, k) for k in FLAT_KEYS}
    assert got == {k: value for k, (_, value) in SAMPLES.items()}
    assert config.keys() == got
    # The derived values read their sections too.
    assert (config.mqtt.topic_sensor_level, config.mqtt.subscription) == (
        1,
        "$share/g1/plant/+/data",
    )
    assert config.effective_max_past_ms == 5000
    assert Limits.from_config(config).max_past_ms == 5000


def test_the_environment_and_flags_override_a_flat_file_key_by_key(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    args = parser.parse_args(["--config", str(_flat_file(tmp_path)), "--shards", "2"])
    config = load_config(
        file=args.config,
        env={"IOT_INGEST_REGION": "ap-south-1", "IOT_INGEST_SHARDS": "16"},
        flags={k: getattr(args, k) for k in FLAT_KEYS},
    )

    assert (config.aws.region, config.dynamodb.shards) == ("ap-south-1", 2)
    assert config.dynamodb.table == "other-table"  # from the file


def test_config_show_prints_the_flat_keys_and_values_with_secrets_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ingest.cli.main import main

    assert main(["config", "show", "--config", str(_flat_file(tmp_path))]) == 0
    shown = json.loads(capsys.readouterr().out)

    expected = {k: str(v) if isinstance(v, Path) else v for k, (_, v) in SAMPLES.items()}
    expected |= {"mqtt_password": "***", "aws_secret_access_key": "***"}
    assert shown == expected
    assert list(shown) == sorted(shown)


@pytest.mark.parametrize("source", ["file", "env", "flag"])
def test_a_bad_window_for_the_bucket_fails_naming_both_keys(source: str, tmp_path: Path) -> None:
    values = {"layout": "packed", "bucket_minutes": "60", "window_seconds": "700"}
    env: dict[str, str] = {}
    kwargs: dict[str, Any] = {}
    if source == "file":
        file = tmp_path / "ingest.toml"
        file.write_text('layout = "packed"\nbucket_minutes = 60\nwindow_seconds = 700\n')
        kwargs["file"] = file
    elif source == "env":
        env = {f"IOT_INGEST_{k.upper()}": v for k, v in values.items()}
    else:
        kwargs["flags"] = values

    with pytest.raises(ConfigError) as info:
        load_config(env=env, **kwargs)

    assert "window_seconds=700 must divide the bucket (bucket_minutes=60: 3600 s)" in str(
        info.value
    )


def test_the_mqtt_section_builds_the_connection_settings_of_its_keys(tmp_path: Path) -> None:
    from ingest.mqtt import proto
    from ingest.pipeline.service import PACKET_HEADROOM_BYTES, mqtt_settings

    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    config = load_config(
        env={},
        flags={
            "mqtt_url": "mqtt://user:url-pw@broker.example:1884",
            "mqtt_client_id": "w-7",
            "mqtt_protocol": "3.1.1",
            "mqtt_keepalive_s": 45,
            "mqtt_session_expiry_s": 60,
            "mqtt_receive_maximum": 500,
            "mqtt_password_file": str(pw),
            "max_message_bytes": 4096,
        },
    )

    s = mqtt_settings(config, config.mqtt.mqtt_url or "")

    assert (s.host, s.port, s.client_id, s.version) == ("broker.example", 1884, "w-7", proto.V311)
    assert (s.username, s.password, s.tls) == ("user", "from-file", None)
    assert (s.keepalive_s, s.session_expiry_s, s.receive_maximum) == (45, 60, 500)
    assert (s.clean_start, s.max_packet_bytes) == (False, 4096 + PACKET_HEADROOM_BYTES)
    tls = config.mqtt.client_settings("mqtts://broker.example", max_packet_bytes=1)
    assert (tls.port, tls.tls is not None) == (8883, True)


def test_a_packed_table_writes_its_registry_once_a_window_unless_told_otherwise() -> None:
    assert load_config(env={}).effective_registry_refresh_s == 300
    packed = {"IOT_INGEST_LAYOUT": "packed"}
    assert load_config(env=packed).effective_registry_refresh_s == 900
    assert (
        load_config(env={**packed, "IOT_INGEST_WINDOW_SECONDS": "60"}).effective_registry_refresh_s
        == 300
    )
    explicit = {**packed, "IOT_INGEST_REGISTRY_REFRESH_S": "300"}
    assert load_config(env=explicit).effective_registry_refresh_s == 300
    assert (
        load_config(env=packed, flags={"registry_refresh_s": 5}).effective_registry_refresh_s == 5
    )
