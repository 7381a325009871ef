"""What a signed webhook delivery is about: its delivery id, and whether it concerns the branch.

Pure functions over (headers, raw body, watched branch), used after the signature is verified:

- the delivery id, per scheme: GitHub `X-GitHub-Delivery` (Gitea and Forgejo send it too, or
  their own `X-Gitea-Delivery` / `X-Forgejo-Delivery`), GitLab `X-Gitlab-Event-UUID`, the generic
  scheme `X-Shoal-Delivery`. It is optional (a sender without one is never deduplicated) but
  when given it must be 1-128 of `A-Z a-z 0-9 . _ : -`;
- the body must be a JSON object; a string `ref` other than the watched branch (another branch,
  a tag) means the delivery is not about us. A body without `ref` (a ping, an event of another
  kind) still wakes the loop: the pass reads the branch head itself and finds nothing new.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

DELIVERY_HEADERS: dict[str, tuple[str, ...]] = {
    "github": ("x-github-delivery", "x-gitea-delivery", "x-forgejo-delivery"),
    "gitlab": ("x-gitlab-event-uuid",),
    "shoal": ("x-shoal-delivery",),
}
DELIVERY_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
_DELIVERY_ID_RE = re.compile(DELIVERY_ID_PATTERN)


class BadDelivery(ValueError):
    """A signed delivery the server cannot act on (400): the message says what to fix."""


def delivery_id(headers: Mapping[str, str], scheme: str) -> str | None:
    """The delivery's id for `scheme` (lower-case header names), None if it sent none."""
    for name in DELIVERY_HEADERS.get(scheme, ()):
        if name in headers:
            value = headers[name].strip()
            if _DELIVERY_ID_RE.fullmatch(value) is None:
                raise BadDelivery(f"header {name} must be 1-128 characters of A-Z a-z 0-9 . _ : -")
            return value
    return None


def ignored_because(body: bytes, branch: str) -> str | None:
    """Why a delivery with this body wakes nothing (it names another ref), or None."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadDelivery(
            f"the body is not JSON ({exc}); set the webhook's content type to application/json"
        ) from None
    if not isinstance(payload, dict):
        raise BadDelivery(f"the body must be a JSON object, not {type(payload).__name__}")
    ref = payload.get("ref")
    if ref is None:
        return None
    if not isinstance(ref, str):
        raise BadDelivery(f"field ref must be a string, not {type(ref).__name__}")
    if ref in (f"refs/heads/{branch}", branch):
        return None
    return f"the delivery is about {ref[:200]}; the server watches refs/heads/{branch}"
