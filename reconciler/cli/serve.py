"""`shoal serve` and `shoal token create`: wiring the store, source, controller and API.

`serve` opens the state directory, builds the controller and the FastAPI app, and runs uvicorn
until SIGINT/SIGTERM (the app's lifespan lets a running apply finish before exit).
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI

from reconciler.desired.endpoint import endpoint
from reconciler.server.settings import ServerSettings
from reconciler.server.store.database import Store
from reconciler.server.store.records import Role

log = logging.getLogger("shoal.serve")


def build_app(settings: ServerSettings) -> FastAPI:
    """The ASGI app for `settings` (imported late: the engine is only needed to serve)."""
    from api.app import create_app
    from reconciler.server.clock import SystemClock
    from reconciler.server.controller import Controller
    from reconciler.server.source import GitSource
    from reconciler.transport.connect import transport_for

    settings.state_dir.mkdir(parents=True, exist_ok=True)
    store = Store.open(settings.state_dir)
    source = GitSource(settings.repo, settings.state_dir, settings.branch)
    key = settings.key_path
    controller = Controller(
        source=source,
        store=store,
        transports=lambda desired: transport_for(desired, key, settings.become_password),
        clock=SystemClock(),
        poll_interval=settings.poll_interval,
        poll_jitter=settings.poll_jitter,
    )
    return create_app(controller, store, settings)


def run_serve(settings: ServerSettings) -> int:
    import uvicorn

    from reconciler.logfmt import configure_logging
    from reconciler.server.source import redact_url

    configure_logging()
    if not settings.key_path.is_file():
        log.error("SSH private key not found", extra={"path": str(settings.key_path)})
        return 2
    if settings.webhook_secret is None:
        log.warning("no webhook secret: POST /webhooks/git refuses every request")
    log.info(
        "starting",
        extra={
            "repo": redact_url(settings.repo),
            "branch": settings.branch,
            "state_dir": str(settings.state_dir),
            "listen": endpoint(settings.listen_host, settings.listen_port),
            "poll": settings.poll_interval,
        },
    )
    app = build_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.listen_host,
        port=settings.listen_port,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    uvicorn.Server(config).run()
    return 0


def create_token(state_dir: Path, role: Role, name: str = "") -> str:
    """Store a new token's hash and return the token (shown once, never stored)."""
    store = Store.open(state_dir)
    try:
        record, token = store.create_token(role, name)
        store.audit("token.created", actor="cli", detail={"id": record.id, "role": role})
        return token
    finally:
        store.close()
