"""Webhook signatures (GitHub HMAC, GitLab token, X-Shoal-Signature HMAC), delivery ids and
bodies (pure)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from api.signatures import sign, verify_webhook
from api.webhook_events import BadDelivery, delivery_id, ignored_because

SECRET = "s3cret-for-tests"
BODY = b'{"ref": "refs/heads/main", "after": "0123"}'


def github_signature(body: bytes, secret: str) -> str:
    # Computed independently of api.signatures.sign, as GitHub documents it.
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_sign_matches_github_definition() -> None:
    assert sign(BODY, SECRET) == github_signature(BODY, SECRET)


@pytest.mark.parametrize(
    ("headers", "scheme"),
    [
        ({"x-hub-signature-256": github_signature(BODY, SECRET)}, "github"),
        ({"x-hub-signature-256": "sha256=" + github_signature(BODY, SECRET)[7:].upper()}, "github"),
        ({"x-gitlab-token": SECRET}, "gitlab"),
        ({"x-shoal-signature": github_signature(BODY, SECRET)}, "shoal"),
    ],
    ids=["github", "github-uppercase-hex", "gitlab", "shoal"],
)
def test_valid(headers: dict[str, str], scheme: str) -> None:
    verdict = verify_webhook(headers, BODY, SECRET)
    assert verdict.ok and verdict.scheme == scheme


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        ({}, BODY, "no signature header"),
        ({"x-hub-signature-256": github_signature(BODY, "other")}, BODY, "does not match"),
        ({"x-hub-signature-256": github_signature(BODY, SECRET)}, BODY + b" ", "does not match"),
        ({"x-hub-signature-256": github_signature(BODY, SECRET)[7:]}, BODY, "sha256=<hex>"),
        ({"x-hub-signature-256": "sha1=" + "0" * 40}, BODY, "sha256=<hex>"),
        ({"x-gitlab-token": SECRET + "x"}, BODY, "token does not match"),
        ({"x-gitlab-token": ""}, BODY, "token does not match"),
        ({"x-shoal-signature": "sha256=" + "0" * 64}, BODY, "does not match"),
        # A bad GitHub signature is not rescued by a right GitLab token.
        ({"x-hub-signature-256": "sha256=00", "x-gitlab-token": SECRET}, BODY, "does not match"),
    ],
    ids=[
        "missing",
        "wrong-secret",
        "body-changed",
        "no-prefix",
        "sha1",
        "gitlab-wrong",
        "gitlab-empty",
        "shoal-wrong",
        "github-wins",
    ],
)
def test_invalid(headers: dict[str, str], body: bytes, reason: str) -> None:
    verdict = verify_webhook(headers, body, SECRET)
    assert not verdict.ok
    assert reason in verdict.reason
    assert SECRET not in verdict.reason


def test_no_secret_configured_refuses_everything() -> None:
    headers = {"x-hub-signature-256": github_signature(BODY, "")}
    assert not verify_webhook(headers, BODY, None).ok
    assert not verify_webhook({"x-gitlab-token": ""}, BODY, "").ok


@pytest.mark.parametrize(
    ("headers", "scheme", "expected"),
    [
        (
            {"x-github-delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958"},
            "github",
            "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        ),
        ({"x-gitea-delivery": "abc"}, "github", "abc"),
        ({"x-gitlab-event-uuid": " 62b4-e3 "}, "gitlab", "62b4-e3"),
        ({"x-shoal-delivery": "push:42"}, "shoal", "push:42"),
        # Another scheme's header is not this delivery's id.
        ({"x-github-delivery": "abc"}, "gitlab", None),
        ({}, "shoal", None),
    ],
)
def test_delivery_id(headers: dict[str, str], scheme: str, expected: str | None) -> None:
    assert delivery_id(headers, scheme) == expected


@pytest.mark.parametrize("value", ["", "a b", "x" * 129, "id;rm", "é"])
def test_malformed_delivery_id_names_the_header(value: str) -> None:
    with pytest.raises(BadDelivery, match="x-shoal-delivery"):
        delivery_id({"x-shoal-delivery": value}, "shoal")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"ref": "refs/heads/main"}', None),
        (b'{"ref": "main"}', None),
        (b'{"zen": "ping", "hook_id": 1}', None),
        (b'{"ref": "refs/heads/feature"}', "refs/heads/feature"),
        (b'{"ref": "refs/heads/main-2"}', "refs/heads/main-2"),
        (b'{"ref": "refs/tags/v1"}', "refs/tags/v1"),
    ],
)
def test_ignored_because(body: bytes, reason: str | None) -> None:
    got = ignored_because(body, "main")
    if reason is None:
        assert got is None
    else:
        assert got is not None and reason in got and "refs/heads/main" in got


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"payload=%7B%7D", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"", "not JSON"),
        (b"[1, 2]", "JSON object, not list"),
        (b'{"ref": 1}', "ref must be a string"),
    ],
)
def test_unreadable_bodies_are_bad_deliveries(body: bytes, message: str) -> None:
    with pytest.raises(BadDelivery, match=message):
        ignored_because(body, "main")
