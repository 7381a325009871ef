"""Helpers the facts tests share: the real /bin/sh as a host, and the HTTP API over a real store
(one-step plans and fresh-host gathers are in tests/support)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from reconciler.server.controller import Controller
from reconciler.server.settings import ServerSettings
from reconciler.server.source import GitSource
from reconciler.server.store.database import Store
from reconciler.transport.fake import Call, Reply


def sh_responder(env: Mapping[str, str] | None = None) -> Callable[[Call], Awaitable[Reply]]:
    """A FakeTransport responder that runs each script with this machine's real /bin/sh, as
    sshd would on a host; `env` replaces the environment (a login's own PATH, say)."""

    async def run(call: Call) -> Reply:
        proc = await asyncio.create_subprocess_exec(
            "sh",
            "-s",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=None if env is None else dict(env),
        )
        out, err = await asyncio.wait_for(
            proc.communicate(call.script.encode()), call.timeout or 30
        )
        return Reply(proc.returncode or 0, out.decode(), err.decode())

    return run


local_sh = sh_responder()


class PlanApi:
    """The real app over a real store, for reading plans back over HTTP; the controller is
    never started and its repository never fetched."""

    def __init__(self, tmp: Path) -> None:
        state = tmp / "state"
        self.store = Store.open(state)
        repo = str(tmp / "repo.git")
        settings = ServerSettings(repo=repo, state_dir=state, poll_interval=3600)
        controller = Controller(
            source=GitSource(repo, state),
            store=self.store,
            client_key=tmp / "no-key",
            poll_interval=3600,
        )
        self.app: FastAPI = create_app(controller, self.store, settings)
        self.client = TestClient(self.app)
        self.viewer = {"Authorization": f"Bearer {self.store.create_token('viewer', 'viewer')[1]}"}

