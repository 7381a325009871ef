"""A real `shoal serve` process (uvicorn, the real app, a SQLite store or the PostgreSQL one
given) that needs no hosts.

The repository it watches is a real bare git repository whose head is the `bad-scheduler`
fixture: invalid, so every pass fetches, validates and records errors without opening an SSH
connection. What a test needs in the store (plans, a run, facts) is written before the process
starts, through the same Store class the server uses.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from reconciler.server.store.database import Store

ROOT = Path(__file__).resolve().parents[2]
INVALID_TREE = ROOT / "fixtures" / "invalid" / "bad-scheduler"
SHOAL = str(Path(sys.executable).with_name("shoal"))
SECRET = "server-test-webhook-secret"


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def pushing_repo(tmp: Path, who: str) -> tuple[Path, Path]:
    """A bare repository on branch main (what the server watches) and a work tree whose
    `origin` it is, committing as `who`: (bare, work)."""
    bare, work = tmp / "config.git", tmp / "work"
    git("init", "-q", "--bare", "-b", "main", str(bare), cwd=tmp)
    git("init", "-q", "-b", "main", str(work), cwd=tmp)
    git("config", "user.email", f"{who}@example.invalid", cwd=work)
    git("config", "user.name", who, cwd=work)
    git("remote", "add", "origin", str(bare), cwd=work)
    return bare, work


class Repo:
    """A bare repository on branch main, and a clone that pushes to it."""

    def __init__(self, tmp: Path) -> None:
        self.bare, self.work = pushing_repo(tmp, "server-test")
        shutil.copytree(INVALID_TREE, self.work, dirs_exist_ok=True)
        self.head = self.commit("an invalid revision: no host is ever contacted")

    def commit(self, message: str, branch: str = "main") -> str:
        git("checkout", "-q", "-B", branch, cwd=self.work)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "--allow-empty", "-m", message, cwd=self.work)
        git("push", "-q", "origin", branch, cwd=self.work)
        sha = git("rev-parse", "HEAD", cwd=self.work)
        git("checkout", "-q", "main", cwd=self.work)
        return sha


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """`shoal serve` on a loopback port; tokens of every role made before it starts."""

    def __init__(
        self, tmp: Path, *, store_url: str | None = None, repo: Repo | None = None
    ) -> None:
        self.tmp = tmp
        self.repo = repo or Repo(tmp)
        self.state = tmp / "state"
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self.url = f"http://{self.host}:{self.port}"
        self.log = tmp / "serve.log"
        # Never read: the head is invalid, so no pass gets as far as SSH. `serve` wants a file.
        key = tmp / "id_ed25519"
        key.write_text("not a key\n")
        key.chmod(0o600)
        self.argv = [
            SHOAL, "serve", "--repo", str(self.repo.bare), "--state-dir", str(self.state),
            "--listen", f"{self.host}:{self.port}", "--poll", "3600", "--key", str(key),
            *(["--store", store_url] if store_url else []),
        ]  # fmt: skip
        store = Store.connect(store_url) if store_url else Store.open(self.state)
        try:
            self.tokens = {r: store.create_token(r, r)[1] for r in ("viewer", "approver", "admin")}
        finally:
            store.close()
        self.proc: subprocess.Popen[bytes] | None = None

    def auth(self, role: str = "viewer") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def start(self, timeout: float = 60.0) -> None:
        env = {**os.environ, "SHOAL_WEBHOOK_SECRET": SECRET}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=5) as http:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, self.tail()
                try:
                    if (
                        http.get("/readyz").status_code == 200
                        and self.loop(http)["passes_completed"] >= 1
                    ):
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise AssertionError("shoal serve did not become ready:\n" + self.tail())

    def loop(self, http: httpx.Client) -> dict[str, Any]:
        """The loop's counters as GET /clusters reports them."""
        response = http.get("/clusters", headers=self.auth())
        assert response.status_code == 200, response.text
        loop: dict[str, Any] = response.json()["loop"]
        return loop

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""
