"""The server lab tests' shared parts: a pushing repository, `shoal serve` as a process, signing.

tests/lab/test_server_lab.py and tests/lab/test_serve_crash_recovery.py both drive a real
`shoal serve` against lab hosts; what they share lives here so that neither imports the other.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from lab import Lab
from tests.server.serve import free_port, git, pushing_repo

ROOT = Path(__file__).resolve().parents[2]
FIXTURE_REPO = ROOT / "fixtures" / "config-repo"
SECRET = "lab-webhook-secret"
SHOAL = str(Path(sys.executable).with_name("shoal"))


def sign(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


class Repo:
    """A bare repository and a clone that commits and pushes to it."""

    def __init__(self, tmp: Path, lab: Lab) -> None:
        self.bare, self.work = pushing_repo(tmp, "lab")
        lab.write_config_repo(FIXTURE_REPO, self.work)
        # No lab HTTP service runs here, so no verification phase after the controller's applies
        # (test_executor_verify and the demo run it).
        settings = self.work / "shoal.toml"
        text = settings.read_text().replace("[verify]\n", "[verify]\nenabled = false\n")
        settings.write_text(text)

    def push(self, edit: Callable[[Path], None], message: str) -> str:
        edit(self.work)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "--allow-empty", "-m", message, cwd=self.work)
        git("push", "-q", "origin", "main", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)


def set_in_file(path: Path, pattern: str, replacement: str) -> None:
    text = path.read_text()
    new, count = re.subn(pattern, replacement, text, count=1, flags=re.MULTILINE)
    assert count == 1, f"{pattern!r} not found in {path}"
    path.write_text(new)


def web_toml(root: Path) -> Path:
    return root / "clusters" / "web.toml"


async def sysctl(lab: Lab, host: str, key: str) -> str:
    return (await lab.exec(host, ["sysctl", "-n", key])).stdout.strip()


class ServeProcess:
    """`shoal serve` against the lab's hosts; `store_url`: on that PostgreSQL store (several
    may share one), else the SQLite file of its own state dir. `name` tells several apart."""

    def __init__(
        self, lab: Lab, tmp: Path, repo: Path, *, store_url: str | None = None, name: str = "serve"
    ) -> None:
        self.state = tmp / f"{name}-state"
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self.log = tmp / f"{name}.log"
        store = ["--store", store_url] if store_url else []
        self.argv = [
            SHOAL, "serve", "--repo", str(repo), "--state-dir", str(self.state),
            "--listen", f"{self.host}:{self.port}", "--poll", "3600",
            "--key", str(lab.client_key_path), *store,
        ]  # fmt: skip
        self.tokens = {
            role: subprocess.run(
                [SHOAL, "token", "create", "--role", role, "--state-dir", str(self.state),
                 *store],
                check=True, capture_output=True, text=True,
            ).stdout.strip()
            for role in ("viewer", "approver", "admin")
        }  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.AsyncClient(base_url=f"http://{self.host}:{self.port}", timeout=60)

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    async def start(self) -> None:
        env = {**os.environ, "SHOAL_WEBHOOK_SECRET": SECRET}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log, env=env)

        async def ready() -> bool:
            try:
                return (await self.http.get("/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            if await ready():
                return
            await asyncio.sleep(0.1)
        raise AssertionError("shoal serve did not become ready:\n" + self.log.read_text()[-3000:])

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    async def get(self, path: str) -> Any:
        response = await self.http.get(path, headers=self.auth("viewer"))
        assert response.status_code == 200, response.text
        return response.json()
