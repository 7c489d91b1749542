"""The cached SigV4 signer produces exactly botocore's headers for the hot path's requests."""

from __future__ import annotations

import datetime as dt

import botocore.auth
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from ingest.aws.sigv4 import Credentials, SigV4Signer

NOW = dt.datetime(2026, 11, 22, 3, 15, 7, tzinfo=dt.UTC)


def _botocore_headers(
    url: str, region: str, creds: Credentials, target: str, body: bytes
) -> dict[str, str]:
    req = AWSRequest(
        method="POST",
        url=url,
        data=body,
        headers={"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": target},
    )
    SigV4Auth(
        BotoCredentials(creds.access_key, creds.secret_key, creds.token), "dynamodb", region
    ).add_auth(req)
    return dict(req.headers.items())


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://127.0.0.1:8000/", "127.0.0.1:8000"),
        ("https://dynamodb.eu-west-1.amazonaws.com/", "dynamodb.eu-west-1.amazonaws.com"),
    ],
)
@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzE//session+token=="])
@pytest.mark.parametrize("body", [b"{}", b'{"RequestItems":{"t":[]}}', '{"k":"é ü"}'.encode()])
def test_headers_match_botocore(
    monkeypatch: pytest.MonkeyPatch, url: str, host: str, token: str | None, body: bytes
) -> None:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: NOW.replace(tzinfo=None))
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    target = "DynamoDB_20120810.BatchWriteItem"
    expected = _botocore_headers(url, "eu-west-1", creds, target, body)
    got = SigV4Signer(host=host, region="eu-west-1").headers(
        creds, target, body, now_s=NOW.timestamp()
    )
    assert got == expected


def test_signing_key_is_cached_per_day() -> None:
    signer = SigV4Signer(host="h", region="us-east-1")
    creds = Credentials("AK", "SK", None)
    signer.headers(creds, "T", b"{}", now_s=NOW.timestamp())
    signer.headers(creds, "T", b"{}", now_s=NOW.timestamp() + 3600)
    assert len(signer._keys) == 1
    signer.headers(creds, "T", b"{}", now_s=NOW.timestamp() + 86_400)
    assert len(signer._keys) == 2
