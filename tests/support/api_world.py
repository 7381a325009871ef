"""The API under test with everything real but the hosts: app, store, controller, a git repo.

`World` is what the API's unit tests (and the tests of what the API shows: runs, file diffs)
start from: a bare repository with one pushed revision, a store, a controller that never
reaches a host, the FastAPI app and a token per role.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from reconciler.plan.steps import Plan
from reconciler.server.controller import Controller
from reconciler.server.settings import ServerSettings
from reconciler.server.source import GitSource
from reconciler.server.store.database import Store
from tests.support.plans import make_plan as store_plan

SECRET = "webhook-secret-for-tests"


FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def push_tree(src: Path, bare: Path, work: Path) -> str:
    if not work.exists():
        git("clone", "-q", str(bare), str(work), cwd=bare.parent)
        git("config", "user.email", "t@example.invalid", cwd=work)
        git("config", "user.name", "t", cwd=work)
        git("checkout", "-q", "-B", "main", cwd=work)
    for item in work.iterdir():
        if item.name != ".git":
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    shutil.copytree(src, work, dirs_exist_ok=True)
    git("add", "-A", cwd=work)
    git("commit", "-q", "--allow-empty", "-m", "update", cwd=work)
    git("push", "-q", "origin", "main", cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


def make_plan(revision: str, host: str = "web1") -> Plan:
    """The store tests' one-step plan, with a facts digest of the length real ones have."""
    return store_plan(revision, host, digest="f" * 64)


class World:
    """A bare repository, the real app and controller over a real store: the SQLite file in
    `tmp / "state"`, or the store `stores` opens for that directory (tests/conftest.py)."""

    def __init__(self, tmp: Path, stores: Callable[[Path], Store] = Store.open) -> None:
        self.bare = tmp / "repo.git"
        self.work = tmp / "work"
        git("init", "-q", "--bare", "-b", "main", str(self.bare), cwd=tmp)
        self.head = push_tree(FIXTURES / "invalid" / "bad-scheduler", self.bare, self.work)
        self.state = tmp / "state"
        self.store = stores(self.state)
        self.settings = ServerSettings(
            repo=str(self.bare),
            state_dir=self.state,
            poll_interval=3600,
            webhook_secret=SECRET,
            max_body_bytes=4096,
        )
        self.controller = Controller(
            source=GitSource(str(self.bare), self.state),
            store=self.store,
            client_key=tmp / "no-key",
            poll_interval=3600,
        )
        self.app: FastAPI = create_app(self.controller, self.store, self.settings)
        self.client = TestClient(self.app)
        self.tokens = {r: self.store.create_token(r, r)[1] for r in ("viewer", "approver", "admin")}

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}
