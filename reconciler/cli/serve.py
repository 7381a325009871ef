"""`shoal serve` and `shoal token create`: wiring the store, source, controller and API.

`serve` opens the state directory, builds the controller and the FastAPI app, and runs uvicorn
until SIGINT/SIGTERM (the app's lifespan lets a running apply finish before exit).
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI

from reconciler.desired.endpoint import endpoint
from reconciler.server.settings import ServerSettings
from reconciler.server.store.connection import StoreUnavailable
from reconciler.server.store.database import StoreUrlError, open_store, redact_store_url
from reconciler.server.store.records import Role

if TYPE_CHECKING:
    from reconciler.server.controller import Peers
    from reconciler.server.ownership import Ownership

log = logging.getLogger("shoal.serve")


def build_app(settings: ServerSettings) -> FastAPI:
    """The ASGI app for `settings` (imported late: the engine is only needed to serve)."""
    from api.app import create_app
    from reconciler.server.clock import SystemClock
    from reconciler.server.controller import Controller
    from reconciler.server.source import GitSource
    from reconciler.transport.connect import transport_for

    settings.state_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(settings.state_dir, settings.store_url)
    source = GitSource(settings.repo, settings.state_dir, settings.branch)
    key = settings.key_path
    ownership: Ownership | None = None
    peers: Peers | None = None
    if settings.store_url:
        # Servers sharing the store: clusters owned by advisory locks, wakes told to the others.
        from reconciler.server.postgres_ownership import PostgresOwnership
        from reconciler.server.postgres_wake import PostgresPeers
        from reconciler.server.store.postgres_engine import conninfo_of

        conninfo = conninfo_of(settings.store_url)
        name = server_name(settings)
        ownership = PostgresOwnership(conninfo, store, name)
        peers = PostgresPeers(conninfo, store, name)
    controller = Controller(
        source=source,
        store=store,
        transports=lambda desired: transport_for(desired, key, settings.become_password),
        clock=SystemClock(),
        poll_interval=settings.poll_interval,
        poll_jitter=settings.poll_jitter,
        notify=settings.notify,
        link_base=settings.notify.link_base
        or f"http://{endpoint(settings.listen_host, settings.listen_port)}",
        ownership=ownership,
        peers=peers,
    )
    return create_app(controller, store, settings)


def server_name(settings: ServerSettings) -> str:
    """This server among those sharing a store: host, API port and process id (the audit log
    and the cluster owners table name it)."""
    return f"{socket.gethostname()}:{settings.listen_port}:{os.getpid()}"


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
            "store": redact_store_url(settings.store_url) if settings.store_url else "sqlite",
            "listen": endpoint(settings.listen_host, settings.listen_port),
            "poll": settings.poll_interval,
            "notify": [r.name for r in settings.notify.receivers],
        },
    )
    try:
        app = build_app(settings)
    except (StoreUrlError, StoreUnavailable) as exc:
        log.error(str(exc))
        return 2
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


def create_token(state_dir: Path, role: Role, name: str = "", store_url: str | None = None) -> str:
    """Store a new token's hash and return the token (shown once, never stored)."""
    store = open_store(state_dir, store_url)
    try:
        record, token = store.create_token(role, name)
        store.audit("token.created", actor="cli", detail={"id": record.id, "role": role})
        return token
    finally:
        store.close()
