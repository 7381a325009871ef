"""POST /webhooks/git: a signed ping from the Git host that wakes the loop.

The payload is never trusted for content (the pass reads the branch head itself), so a valid
webhook at most queues a wake. In order:

- a body over the limit is 413 before any of it is verified;
- a missing or wrong signature is 401;
- a malformed delivery id header, or a body that is not a JSON object, is 400: the Git host is
  misconfigured (a form-encoded body, say) and should show the delivery as failed;
- a delivery about another ref (a push to another branch, a tag) is 202 `ignored`;
- a delivery id already seen (a replay or a redelivery, also across restarts: the ids are in
  the store) is 202 `duplicate`;
- anything else is 202 `queued` and wakes the loop.

Only `queued` wakes the loop; the poll stays the safety net for whatever a webhook misses.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status

from api.deps import ControllerPort, get_controller, get_settings, get_store
from api.schemas import Problem, WebhookAccepted
from api.signatures import verify_webhook
from api.webhook_events import (
    DELIVERY_HEADERS,
    DELIVERY_ID_PATTERN,
    BadDelivery,
    delivery_id,
    ignored_because,
)
from reconciler.server.settings import ServerSettings
from reconciler.server.store.database import Store

log = logging.getLogger("shoal.api.webhooks")

router = APIRouter(tags=["webhooks"])


async def read_bounded(request: Request, limit: int) -> bytes:
    """The raw body, refusing (413) as soon as it grows past `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"body over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"body over {limit} bytes")
    return bytes(body)


def _header(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": {"type": "string", **schema},
    }


# The route reads the raw body and headers itself (the signature covers the exact bytes), so
# what it accepts is described here rather than by typed parameters.
_OPENAPI: dict[str, Any] = {
    "parameters": [
        _header("X-Hub-Signature-256", "GitHub, Gitea, Forgejo: sha256=<hex HMAC of the body>"),
        _header("X-Gitlab-Token", "GitLab: the secret itself"),
        _header("X-Shoal-Signature", "any other sender: sha256=<hex HMAC of the body>"),
        *(
            _header(
                name,
                f"{scheme}: the delivery id (a replay wakes nothing)",
                pattern=DELIVERY_ID_PATTERN,
            )
            for scheme, names in DELIVERY_HEADERS.items()
            for name in names[:1]
        ),
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "ref": {
                            "type": "string",
                            "description": "refs/heads/<branch>: another ref is ignored",
                        }
                    },
                }
            }
        },
    },
}


@router.post(
    "/webhooks/git",
    status_code=202,
    responses={
        400: {"model": Problem, "description": "a malformed delivery id or a body not JSON"},
        401: {"model": Problem, "description": "signature missing or invalid"},
        413: {"model": Problem, "description": "body over the server's limit"},
    },
    openapi_extra=_OPENAPI,
)
async def git_webhook(
    request: Request,
    controller: Annotated[ControllerPort, Depends(get_controller)],
    settings: Annotated[ServerSettings, Depends(get_settings)],
    store: Annotated[Store, Depends(get_store)],
) -> WebhookAccepted:
    body = await read_bounded(request, settings.max_body_bytes)
    headers = {k.lower(): v for k, v in request.headers.items()}
    verdict = verify_webhook(headers, body, settings.webhook_secret)
    client = request.client.host if request.client else None
    counted = controller.metrics.webhooks
    if not verdict.ok or verdict.scheme is None:
        counted.labels("refused").inc()
        log.warning(
            "webhook refused",
            extra={"scheme": verdict.scheme, "reason": verdict.reason, "client": client},
        )
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "webhook signature missing or invalid")
    scheme = verdict.scheme
    try:
        delivery = delivery_id(headers, scheme)
        ignored = ignored_because(body, settings.branch)
    except BadDelivery as exc:
        counted.labels("malformed").inc()
        log.warning("webhook refused", extra={"scheme": scheme, "reason": str(exc)})
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    event = headers.get("x-github-event") or headers.get("x-gitlab-event") or ""
    extra = {"scheme": scheme, "event": event, "delivery": delivery, "client": client}
    if ignored is not None:
        counted.labels("ignored").inc()
        log.info("webhook ignored", extra={**extra, "reason": ignored})
        return WebhookAccepted(
            queued=False, scheme=scheme, outcome="ignored", delivery=delivery, reason=ignored
        )
    if delivery is not None and not store.remember_delivery(scheme, delivery):
        counted.labels("duplicate").inc()
        log.info("webhook duplicate", extra=extra)
        return WebhookAccepted(
            queued=False,
            scheme=scheme,
            outcome="duplicate",
            delivery=delivery,
            reason=f"delivery {delivery} was already acted on",
        )
    counted.labels("queued").inc()
    log.info("webhook accepted", extra=extra)
    controller.wake(f"webhook ({scheme})")
    return WebhookAccepted(queued=True, scheme=scheme, outcome="queued", delivery=delivery)
