"""A fake container-credentials endpoint (the ECS/EKS agent's protocol) for credential faults.

botocore's provider chain is pointed at it alone; its temporary keys expire within
botocore's mandatory refresh window, so every request refreshes them, and
``failing = True`` makes each refresh fail as a real agent outage does
(``CredentialRetrievalError`` from the provider).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web


class CredentialEndpoint:
    """The ECS/EKS container-credentials protocol: GET → temporary keys, or a failure."""

    def __init__(self) -> None:
        self.failing = False
        self.requests = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/creds", self._get)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/creds"

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _get(self, _: web.Request) -> web.Response:
        self.requests += 1
        if self.failing:
            return web.Response(status=500, text="credential agent down")
        # Expiring within botocore's mandatory refresh window (10 min): every use refreshes.
        expiry = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
        return web.json_response(
            {
                "AccessKeyId": "ASIACRAFTED",
                "SecretAccessKey": "secret",
                "Token": f"token-{self.requests}",
                "Expiration": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        )


@contextlib.asynccontextmanager
async def container_credentials(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[CredentialEndpoint]:
    """Points botocore's provider chain at a fake container-credentials endpoint (only)."""
    endpoint = CredentialEndpoint()
    await endpoint.start()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", endpoint.url)
    monkeypatch.setenv("AWS_METADATA_SERVICE_NUM_ATTEMPTS", "1")
    try:
        yield endpoint
    finally:
        await endpoint.aclose()
