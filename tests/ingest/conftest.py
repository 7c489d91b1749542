"""Fixtures for the ingest tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ingest.config import Config
from tests.ingest.harness import make_config


@pytest.fixture
def ingest_config(
    mosquitto: Any, dynamodb_endpoint: str, unique_name: str, tmp_path: Path
) -> Callable[..., Config]:
    """Factory: a config for the test's broker, DynamoDB endpoint and unique names."""

    def factory(**overrides: Any) -> Config:
        kwargs: dict[str, Any] = {"data_dir": tmp_path, **overrides}
        return make_config(
            broker_url=mosquitto.url, endpoint=dynamodb_endpoint, name=unique_name, **kwargs
        )

    return factory
