"""POST /webhooks/git: a signed ping from the Git host that wakes the loop.

The payload is never trusted for content (the pass reads the branch head itself), so a valid
webhook only queues a wake. A missing or wrong signature is 401 and queues nothing; a body over
the limit is 413 before any of it is verified.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status

from api.deps import ControllerPort, get_controller, get_settings
from api.schemas import Problem, WebhookAccepted
from api.signatures import verify_webhook
from reconciler.server_settings import ServerSettings

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


@router.post(
    "/webhooks/git",
    status_code=202,
    responses={401: {"model": Problem}, 413: {"model": Problem}},
)
async def git_webhook(
    request: Request,
    controller: Annotated[ControllerPort, Depends(get_controller)],
    settings: Annotated[ServerSettings, Depends(get_settings)],
) -> WebhookAccepted:
    body = await read_bounded(request, settings.max_body_bytes)
    headers = {k.lower(): v for k, v in request.headers.items()}
    verdict = verify_webhook(headers, body, settings.webhook_secret)
    client = request.client.host if request.client else None
    if not verdict.ok or verdict.scheme is None:
        log.warning(
            "webhook refused",
            extra={"scheme": verdict.scheme, "reason": verdict.reason, "client": client},
        )
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "webhook signature missing or invalid")
    event = headers.get("x-github-event") or headers.get("x-gitlab-event") or ""
    log.info("webhook accepted", extra={"scheme": verdict.scheme, "event": event, "client": client})
    controller.wake(f"webhook ({verdict.scheme})")
    return WebhookAccepted(queued=True, scheme=verdict.scheme)
