"""API keys at rest, scopes, the token bucket and the settings' CORS checks (no server)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ingest.core.ratelimit import TokenBucket
from queries.api.apikeys import (
    ApiKey,
    AuthSettings,
    KeysFileError,
    Principal,
    generate_token,
    hash_token,
    load_keys_file,
)
from queries.api.ratelimit import RateLimiter, RateLimitSettings
from queries.api.settings import ServeSettings


def test_tokens_are_random_and_hashed_with_sha256() -> None:
    tokens = {generate_token() for _ in range(100)}
    assert len(tokens) == 100
    token = tokens.pop()
    assert token.startswith("iot_")
    assert len(token) == 47
    assert hash_token(token) == "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    with pytest.raises(ValueError, match="at least 32 characters"):
        hash_token("hunter2")


def test_authenticate_finds_the_key_by_its_token_only() -> None:
    a, b = generate_token(), generate_token()
    auth = AuthSettings(
        keys=(
            ApiKey(name="a", hash=hash_token(a), sensors=("x-",)),
            ApiKey(name="b", hash=hash_token(b), sensors=("*",)),
        )
    )
    key_a, key_b = auth.authenticate(a), auth.authenticate(b)
    assert key_a is not None
    assert key_a.name == "a"
    assert key_b is not None
    assert key_b.name == "b"
    assert auth.authenticate(generate_token()) is None
    assert auth.authenticate("") is None
    assert auth.authenticate(hash_token(a)) is None
    assert auth.authenticate("\udcff-not-utf8") is None


def test_scopes_are_prefixes() -> None:
    scoped = Principal(name="p", sensor_prefixes=("site-a-", "lab:"))
    assert scoped.may_read("site-a-1")
    assert scoped.may_read("lab:7")
    assert not scoped.may_read("site-b-1")
    assert not scoped.may_read("site-a")  # the prefix is literal
    assert not scoped.reads_all
    assert Principal(name="all").may_read("anything")


def test_a_keys_file_loads_hashes_and_refuses_plaintext(tmp_path: Path) -> None:
    token = generate_token()
    path = tmp_path / "keys.toml"
    path.write_text(
        f'[[keys]]\nname = "grafana"\nhash = "{hash_token(token)}"\nsensors = ["site-a-"]\n'
        "rate_per_s = 5\nburst = 10\n"
    )
    auth = load_keys_file(path)
    key = auth.authenticate(token)
    assert key is not None
    assert (key.name, key.sensors, key.rate_per_s, key.burst) == ("grafana", ("site-a-",), 5.0, 10)

    bad = {
        f'[[keys]]\nname = "a"\ntoken = "{token}"\nsensors = ["*"]\n': "plaintext tokens",
        f'[[keys]]\nname = "a"\nhash = "{token}"\nsensors = ["*"]\n': "plaintext tokens are not",
        f'[[keys]]\nname = "a"\nhash = "{hash_token(token)}"\n': "missing field 'sensors'",
        f'[[keys]]\nname = "a"\nhash = "{hash_token(token)}"\nsensors = []\n': "sensors must",
        f'[[keys]]\nname = "a"\nhash = "{hash_token(token)}"\nsensors = ["a/b"]\n': "'a/b'",
        f'[[keys]]\nname = "a"\nhash = "{hash_token(token)}"\nsensors = ["*"]\nx = 1\n': "unknown",
        (f'[[keys]]\nname = "a"\nhash = "{hash_token(token)}"\nsensors = ["*"]\n') * 2: "duplicate",
        "": "no [[keys]] entries",
        "keys = 3": "no [[keys]] entries",
        "[[keys]\n": "keys.toml",
    }
    for text, message in bad.items():
        path.write_text(text)
        with pytest.raises(KeysFileError, match=message.replace("[", r"\[")) as info:
            load_keys_file(path)
        assert token not in str(info.value)  # a misplaced secret is never echoed
    with pytest.raises(KeysFileError, match=r"missing\.toml"):
        load_keys_file(tmp_path / "missing.toml")


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=3, now_s=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.25) == pytest.approx(0.25)
    assert bucket.take(0.5) == 0.0
    assert bucket.take(100.0) == 0.0  # refilled, capped at burst
    assert bucket.tokens == pytest.approx(2.0)


def test_rate_limiter_keeps_a_bounded_number_of_buckets() -> None:
    now = [0.0]
    limiter = RateLimiter(
        RateLimitSettings(rate_per_s=1, burst=1, max_clients=3), clock=lambda: now[0]
    )
    assert limiter.take("a") == 0.0
    assert limiter.take("a") == pytest.approx(1.0)
    for name in ("b", "c", "d"):
        assert limiter.take(name) == 0.0
    assert len(limiter) == 3  # "a" was the least recently used, and dropped
    assert limiter.take("a") == 0.0
    assert limiter.take("x", rate_per_s=10, burst=2) == 0.0
    assert limiter.take("x") == 0.0
    assert limiter.take("x") == pytest.approx(0.1)


def test_settings_check_cors_origins_and_rate_limits() -> None:
    ok = ServeSettings(table="t", cors_origins=("https://a.example", "http://127.0.0.1:3000"))
    assert ok.auth is None  # the embedded demo's default: open, and create_app warns
    for origin in ("*", "https://a.example/", "https://a.example/path", "a.example", "null"):
        with pytest.raises(ValueError, match="CORS origin"):
            ServeSettings(table="t", cors_origins=(origin,))
    with pytest.raises(ValueError, match="rate_per_s"):
        RateLimitSettings(rate_per_s=0)
    with pytest.raises(ValueError, match="at least one"):
        AuthSettings(keys=())
