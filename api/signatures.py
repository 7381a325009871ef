"""Webhook authentication: which Git host sent a request, and is its signature right.

Pure functions over (headers, raw body, secret). Three schemes are accepted:

- GitHub (and Gitea/Forgejo): `X-Hub-Signature-256: sha256=<hex>`, HMAC-SHA256 of the raw body;
- GitLab: `X-Gitlab-Token: <secret>` (GitLab sends the secret itself, it does not sign);
- anything else: `X-Shoal-Signature: sha256=<hex>`, HMAC-SHA256 of the raw body.

Every comparison is `hmac.compare_digest`. A verdict never carries the secret or the header's
value, only which scheme was tried and why it failed, so it is safe to log.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

GITHUB_HEADER = "x-hub-signature-256"
GITLAB_HEADER = "x-gitlab-token"
SHOAL_HEADER = "x-shoal-signature"


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    scheme: str | None  # "github" | "gitlab" | "shoal" | None (no known header)
    reason: str = ""


def sign(body: bytes, secret: str) -> str:
    """`sha256=<hex>` of the body, as GitHub and X-Shoal-Signature expect."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _check_hmac(value: str, body: bytes, secret: str, scheme: str) -> Verdict:
    algo, sep, _ = value.partition("=")
    if not sep or algo.strip().lower() != "sha256":
        return Verdict(False, scheme, "signature is not of the form sha256=<hex>")
    expected = sign(body, secret)
    given = "sha256=" + value.partition("=")[2].strip().lower()
    if hmac.compare_digest(expected.encode(), given.encode()):
        return Verdict(True, scheme)
    return Verdict(False, scheme, "signature does not match the body")


def verify_webhook(headers: Mapping[str, str], body: bytes, secret: str | None) -> Verdict:
    """Check a webhook request. `headers` must have lower-case names."""
    if not secret:
        return Verdict(False, None, "no webhook secret is configured on the server")
    if GITHUB_HEADER in headers:
        return _check_hmac(headers[GITHUB_HEADER], body, secret, "github")
    if GITLAB_HEADER in headers:
        if hmac.compare_digest(headers[GITLAB_HEADER].encode(), secret.encode()):
            return Verdict(True, "gitlab")
        return Verdict(False, "gitlab", "token does not match")
    if SHOAL_HEADER in headers:
        return _check_hmac(headers[SHOAL_HEADER], body, secret, "shoal")
    return Verdict(False, None, "no signature header")
