"""Helpers the facts tests share: the real /bin/sh as a host, a one-step plan, the HTTP API over
a real store, and facts of fresh hosts for the example repository."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from reconciler.cli.plan import HostDone
from reconciler.desired.models import Desired
from reconciler.facts.hostfacts import HostFacts
from reconciler.plan.steps import Change, HostPlan, Phase, Plan, Step, plan_id
from reconciler.server.controller import Controller
from reconciler.server.settings import ServerSettings
from reconciler.server.source import GitSource
from reconciler.server.store import Store
from reconciler.transport.fake import Call, Reply
from tests.statecases import fresh_facts

EXAMPLE = Path(__file__).resolve().parents[3] / "fixtures" / "config-repo"


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


def make_plan(revision: str = "a" * 40, host: str = "web1", digest: str = "d1") -> Plan:
    """A plan of one step on one host (adding a VIP to lo)."""
    step = Step(
        id=f"{host}/vip/add",
        host=host,
        state_id="vip",
        function="addr.present",
        subsystem="addr",
        phase=Phase.REAL_SERVERS_PREPARE,
        description="add 10.77.0.100/32 to lo",
        change=Change(before=None, after="10.77.0.100/32 dev lo"),
        commands=(("ip", "addr", "add", "10.77.0.100/32", "dev", "lo"),),
        undo=(("ip", "addr", "del", "10.77.0.100/32", "dev", "lo"),),
    )
    hosts = {host: HostPlan(host=host, facts_digest=digest, steps=(step,))}
    return Plan(
        id=plan_id(revision, {host: digest}, hosts),
        revision=revision,
        clusters=("web",),
        hosts=hosts,
    )


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


async def fresh(desired: Desired, done: HostDone) -> dict[str, HostFacts]:
    """Every inventory host as a fresh machine (nothing of shoal's on it)."""
    out = {}
    for host, inv in sorted(desired.inventory.hosts.items()):
        out[host] = fresh_facts(host, inv.address, interface=inv.interface)
        done(host, out[host])
    return out
