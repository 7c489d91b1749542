"""Fixtures of the interoperability suite: the test PKI and one fresh broker per test.

* ``pki``: a CA and a server certificate for 127.0.0.1 (openssl), once per session.
* ``interop_figure``: record one measured figure (printed, and in test-artifacts/).
* ``broker_name``: parametrized over :data:`tests.interop.brokers.BROKERS`; a test that
  takes ``broker`` (plain listener) or ``tls_broker`` (plain and TLS listeners) runs once
  per broker, each at the MQTT version it speaks.

A missing broker program fails the test with "run `make test-deps`", as in tests/conftest.py.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio

from bench.servers import REPO_ROOT
from tests.conftest import _start
from tests.interop.brokers import BROKERS, InteropBroker, Pki

ARTIFACTS = REPO_ROOT / "test-artifacts"
FIGURES_FILE = ARTIFACTS / "interop.jsonl"


@pytest.fixture
def interop_figure(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``interop_figure("held-acks", broker.name, held=…)``: print a line, append it as JSON.

    The lines (``INTEROP name broker: k=v …``) are what docs/brokers.md's measured
    columns come from; ``test-artifacts/interop.jsonl`` keeps them per run.
    """

    def record(name: str, broker: str, **fields: Any) -> None:
        print(f"INTEROP {name} {broker}: " + " ".join(f"{k}={v}" for k, v in fields.items()))
        doc = {"figure": name, "broker": broker, "test": request.node.nodeid, **fields}
        ARTIFACTS.mkdir(exist_ok=True)
        with FIGURES_FILE.open("ab") as f:
            f.write(orjson.dumps(doc) + b"\n")

    return record


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(args, cwd=cwd, check=True, capture_output=True)


def _make_pki(d: Path) -> Pki:
    _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
         "-days", "2", "-subj", "/CN=iot-ingest-interop-ca", cwd=d)  # fmt: skip
    _run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
         "-subj", "/CN=127.0.0.1", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "server.crt", "-days", "2", "-extfile", "san.ext", cwd=d)  # fmt: skip
    return Pki(ca=d / "ca.crt", cert=d / "server.crt", key=d / "server.key")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return _make_pki(tmp_path_factory.mktemp("interop-pki"))


@pytest.fixture(params=list(BROKERS))
def broker_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


async def _broker(name: str, pki: Pki, *, tls: bool) -> AsyncIterator[InteropBroker]:
    server = BROKERS[name](pki, tls=tls)
    await _start(server)
    try:
        yield server
    finally:
        await server.aclose()


@pytest_asyncio.fixture
async def broker(broker_name: str, pki: Pki) -> AsyncIterator[InteropBroker]:
    """A fresh broker (plain listener only), stopped and removed after the test."""
    async for b in _broker(broker_name, pki, tls=False):
        yield b


@pytest_asyncio.fixture
async def tls_broker(broker_name: str, pki: Pki) -> AsyncIterator[InteropBroker]:
    """A fresh broker with a TLS listener (nats-server: TLS only), stopped after the test."""
    async for b in _broker(broker_name, pki, tls=True):
        yield b
