"""Webhook signatures: GitHub HMAC, GitLab token, X-Shoal-Signature HMAC (pure)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from api.signatures import sign, verify_webhook

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
