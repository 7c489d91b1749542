"""An AWS account on moto that enforces IAM, with one user per role of deploy/iam/.

moto in server mode checks every request's SigV4 signature and the caller's IAM
policies once ``INITIAL_NO_AUTH_ACTION_COUNT`` requests have been served
(``moto/core/authorization.py``); ``POST /moto-api/reset-auth`` sets that count
at run time. The fixture sets it to 3: the administrator's first three calls
(create a user, give it ``*``, create its key) go unchecked, and every call after
them — the admin's included — is signed and authorized.

What moto evaluates, and what the fixture therefore adjusts (``for_moto``):

* DynamoDB is authorized against the resource ``*`` (moto's DynamoDB has no
  resource resolution), so a statement naming the table's ARN matches nothing and
  would deny everything. DynamoDB statements are given ``"Resource": "*"``: the
  actions are enforced, the table scoping is not (``test_policy_resources_are_scoped``
  checks it statically).
* S3 is authorized against the bucket or object ARN: resources are enforced as
  written. moto checks ``HeadBucket`` as the action ``s3:HeadBucket`` (AWS checks
  ``s3:ListBucket``), so each statement allowing ``s3:ListBucket`` also gets
  ``s3:HeadBucket`` on the same resource.
* Conditions (``s3:prefix``) are not evaluated for S3 or DynamoDB requests.

moto's recorder (``/moto-api/recorder/…``) logs every request with its headers, so
a test can list the actions each access key called (:meth:`IamAws.actions`).
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import aiohttp
import pytest_asyncio
from aiobotocore.session import get_session

from bench.servers import MotoServer
from tests.conftest import REGION

IAM_DIR = Path(__file__).resolve().parents[2] / "deploy" / "iam"
ACCOUNT = "123456789012"  # moto's default account
PREFIX = "archive"
ROLES = ("ingest", "query", "query-archive", "archive", "archive-streams")

ALLOW_ALL = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}


def load_policy(role: str) -> dict[str, Any]:
    """``deploy/iam/{role}.json`` as written (placeholders unfilled)."""
    doc: dict[str, Any] = json.loads((IAM_DIR / f"{role}.json").read_text())
    return doc


def render(role: str, *, table: str, bucket: str, prefix: str = PREFIX) -> dict[str, Any]:
    """The policy with its placeholders filled, as an operator deploys it."""
    text = (IAM_DIR / f"{role}.json").read_text()
    values = {
        "REGION": REGION,
        "ACCOUNT": ACCOUNT,
        "TABLE": table,
        "BUCKET": bucket,
        "PREFIX": prefix,
    }
    text = re.sub(r"\$\{([A-Z]+)\}", lambda m: values[m.group(1)], text)
    doc: dict[str, Any] = json.loads(text)
    return doc


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def for_moto(policy: dict[str, Any]) -> dict[str, Any]:
    """The adjustments moto's evaluator needs (module docstring): DynamoDB on ``*``, HeadBucket."""
    doc = copy.deepcopy(policy)
    for st in doc["Statement"]:
        actions = _as_list(st["Action"])
        if all(a.startswith("dynamodb:") for a in actions):
            st["Resource"] = "*"
        if "s3:ListBucket" in actions:
            st["Action"] = [*actions, "s3:HeadBucket"]
    return doc


@dataclass(frozen=True)
class Key:
    """An access key of one IAM user."""

    user: str
    id: str
    secret: str

    def env(self) -> dict[str, str]:
        """The environment of a process that runs with this key (the standard provider chain)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "IOT_INGEST_"))}
        return {**env, "AWS_ACCESS_KEY_ID": self.id, "AWS_SECRET_ACCESS_KEY": self.secret}

    def kwargs(self) -> dict[str, str]:
        """``aws_access_key_id``/``aws_secret_access_key`` for a client or a config."""
        return {"aws_access_key_id": self.id, "aws_secret_access_key": self.secret}


def _s3_action(method: str, url: str) -> str:
    """The IAM action AWS checks for a path-style S3 request."""
    parts = urlsplit(url)
    path = unquote(parts.path).lstrip("/")
    query = parse_qs(parts.query, keep_blank_values=True)
    bucket, _, key = path.partition("/")
    if not bucket:
        return "s3:ListAllMyBuckets"
    if key:
        return {"GET": "s3:GetObject", "HEAD": "s3:GetObject", "PUT": "s3:PutObject"}.get(
            method, "s3:DeleteObject" if method == "DELETE" else f"s3:?{method}"
        )
    if "lifecycle" in query:
        return "s3:GetLifecycleConfiguration" if method == "GET" else "s3:PutLifecycleConfiguration"
    if method == "POST" and "delete" in query:
        return "s3:DeleteObject"
    return {"GET": "s3:ListBucket", "HEAD": "s3:ListBucket", "PUT": "s3:CreateBucket"}.get(
        method, f"s3:?{method}"
    )


@dataclass
class IamAws:
    """The account: endpoint, admin key, a table and a bucket, one user per role."""

    endpoint: str
    table: str
    bucket: str
    admin: Key
    users: dict[str, Key]  # role → the key its component runs with
    probes: dict[str, Key]  # role → a second key of the same user, for refused calls
    recording: Path

    def actions(self, key: Key) -> set[str]:
        """The IAM actions requested with ``key`` so far (allowed or refused)."""
        found: set[str] = set()
        lines = self.recording.read_text().splitlines() if self.recording.exists() else []
        for line in lines:
            entry = json.loads(line)
            headers = {k.lower(): v for k, v in entry["headers"].items()}
            credential = headers.get("authorization", "").partition("Credential=")[2]
            if credential.partition("/")[0] != key.id:
                continue
            target = headers.get("x-amz-target", "")
            if target:
                found.add("dynamodb:" + target.rpartition(".")[2])
            else:
                found.add(_s3_action(entry["method"], entry["url"]))
        return found

    def client(self, service: str, key: Key) -> Any:
        """An aiobotocore client with ``key`` (``async with``)."""
        return get_session().create_client(
            service, region_name=REGION, endpoint_url=self.endpoint, **key.kwargs()
        )


class RecordingMoto(MotoServer):
    """moto whose recorder writes to ``recording`` (not to ./moto_recording)."""

    def __init__(self, recording: Path) -> None:
        super().__init__()
        self.recording = recording

    def _env(self) -> dict[str, str] | None:
        return {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "MOTO_RECORDER_FILEPATH": str(self.recording),
        }


async def _post(session: aiohttp.ClientSession, url: str, body: bytes = b"") -> None:
    async with session.post(url, data=body, headers={"Content-Type": "text/plain"}) as resp:
        assert resp.status == 200, await resp.text()


async def _user(iam: Any, name: str, policy: dict[str, Any]) -> tuple[Key, Key]:
    await iam.create_user(UserName=name)
    await iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=json.dumps(policy))
    keys = []
    for _ in range(2):
        k = (await iam.create_access_key(UserName=name))["AccessKey"]
        keys.append(Key(name, k["AccessKeyId"], k["SecretAccessKey"]))
    return keys[0], keys[1]


def _merged(*policies: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [s for p in policies for s in p["Statement"]]}


@pytest_asyncio.fixture
async def iam_aws(tmp_path: Path, unique_name: str) -> AsyncIterator[IamAws]:
    """A fresh enforcing moto, its admin, a table name and bucket, one IAM user per role.

    Users: ``ingest``, ``query``, ``query+archive`` (query.json and query-archive.json
    together, for ``serve --s3-bucket``), ``archive`` and ``archive-streams``, each with the policy of
    deploy/iam/ rendered for the table and bucket (and adjusted :func:`for_moto`).
    Neither the table nor the bucket exists yet: tests create what they need with
    the admin key.
    """
    recording = tmp_path / "moto-recording.jsonl"
    server = RecordingMoto(recording)
    try:
        await server.start()
        endpoint = server.endpoint_url
        table = unique_name
        bucket = "iam-" + re.sub(r"[^a-z0-9-]", "-", unique_name.lower())[-50:].strip("-")
        async with aiohttp.ClientSession() as http:
            await _post(http, endpoint + "/moto-api/reset-auth", b"3")
            await _post(http, endpoint + "/moto-api/recorder/start-recording")
        dummy = Key("", "unchecked", "unchecked")
        env = IamAws(endpoint, table, bucket, dummy, {}, {}, recording)
        async with env.client("iam", dummy) as iam:  # the three unchecked calls
            await iam.create_user(UserName="admin")
            await iam.put_user_policy(
                UserName="admin", PolicyName="admin", PolicyDocument=json.dumps(ALLOW_ALL)
            )
            k = (await iam.create_access_key(UserName="admin"))["AccessKey"]
        env.admin = Key("admin", k["AccessKeyId"], k["SecretAccessKey"])
        policies = {role: for_moto(render(role, table=table, bucket=bucket)) for role in ROLES}
        async with env.client("iam", env.admin) as iam:
            for role in ("ingest", "query", "archive", "archive-streams"):
                env.users[role], env.probes[role] = await _user(iam, role, policies[role])
            both = _merged(policies["query"], policies["query-archive"])
            env.users["query+archive"], env.probes["query+archive"] = await _user(
                iam, "query-archive", both
            )
        yield env
    finally:
        await server.aclose()
