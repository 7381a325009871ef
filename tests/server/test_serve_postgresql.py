"""Real `shoal serve` processes on a real PostgreSQL store (`--store postgresql://...`).

Two servers on one database both serve the API from it: a token made by the CLI on the
database works on both, a lock set through one is listed and audited by the other, and a
restarted server finds everything again. The state directories hold no SQLite file: the store
really is the database. The watched head is invalid, so no host is ever contacted.

A webhook delivered to one server wakes the other too (LISTEN/NOTIFY): the owner of a cluster
passes at once whichever server the Git host reached.

Costs about 10 s (two server start-ups and one restart).
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reconciler.server.store.database import DB_FILENAME, Store
from tests.server.serve import SHOAL, Repo, ServeProcess
from tests.server.test_webhook_deliveries import PUSH_MAIN, signed
from tests.support.postgres import PostgresServer

Pair = tuple[ServeProcess, ServeProcess, str]


@pytest.fixture
def pair(tmp_path: Path, postgres: PostgresServer) -> Iterator[Pair]:
    url = postgres.new_url()
    repo = Repo(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = ServeProcess(tmp_path / "a", store_url=url, repo=repo)
    b = ServeProcess(tmp_path / "b", store_url=url, repo=repo)
    try:
        a.start()
        b.start()
        yield a, b, url
    finally:
        a.stop()
        b.stop()


def test_two_servers_share_one_postgresql_store(pair: Pair, tmp_path: Path) -> None:
    a, b, url = pair
    argv = [SHOAL, "token", "create", "--role", "admin", "--name", "ops",
            "--state-dir", str(tmp_path / "cli"), "--store", url]  # fmt: skip
    made = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert made.returncode == 0, made.stderr
    admin = {"Authorization": f"Bearer {made.stdout.strip()}"}
    with httpx.Client(base_url=a.url, timeout=30) as on_a, httpx.Client(
        base_url=b.url, timeout=30
    ) as on_b:
        for http in (on_a, on_b):
            ready = http.get("/readyz")
            assert ready.status_code == 200 and ready.json()["checks"]["store"] is True
        # b's tokens work on a: one store.
        assert on_a.get("/clusters", headers=b.auth()).status_code == 200
        locked = on_b.post("/clusters/web/lock", json={"reason": "incident 7"}, headers=admin)
        assert locked.status_code == 201, locked.text
        listed = on_a.get("/locks", headers=a.auth()).json()
        assert [(lk["cluster"], lk["reason"]) for lk in listed] == [("web", "incident 7")]
        audit = on_a.get("/audit", params={"action": "cluster.locked"}, headers=a.auth())
        assert audit.status_code == 200, audit.text
        assert [e["actor"] for e in audit.json()] == ["token:ops"]
    a.stop()
    a.start()
    with httpx.Client(base_url=a.url, timeout=30) as on_a:
        assert on_a.post("/clusters/web/unlock", headers=admin).status_code == 200
    assert not (a.state / DB_FILENAME).exists() and not (b.state / DB_FILENAME).exists()
    store = Store.connect(url)
    try:
        assert store.cluster_locks() == {}
        actions = [e.action for e in store.list_audit()]
        assert "cluster.locked" in actions and "cluster.unlocked" in actions
    finally:
        store.close()


def test_serve_names_a_store_it_cannot_reach_and_exits(tmp_path: Path) -> None:
    # A socket directory with no server: nothing is contacted, nothing leaves the machine.
    url = f"postgresql://shoal:s3cret@/shoal?host={tmp_path}"
    serve = ServeProcess(tmp_path, store_url=None)
    argv = [*serve.argv, "--store", url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    out = done.stdout + done.stderr
    assert f"store 'postgresql://shoal:***@/shoal?host={tmp_path}': cannot connect" in out
    assert "s3cret" not in out


def test_a_webhook_to_one_server_wakes_the_other(pair: Pair) -> None:
    a, b, _ = pair
    with httpx.Client(base_url=a.url, timeout=30) as on_a, httpx.Client(
        base_url=b.url, timeout=30
    ) as on_b:
        before = a.loop(on_a)["wakes"]
        # Sent again (a new delivery each time) until a's wakes move: a's listener may still
        # be connecting when the first one goes out. None is ever sent to a.
        deadline = time.monotonic() + 60
        while a.loop(on_a)["wakes"] == before:
            assert time.monotonic() < deadline, a.tail()
            sent = on_b.post("/webhooks/git", content=PUSH_MAIN,
                             headers=signed("github", PUSH_MAIN, str(uuid.uuid4())))  # fmt: skip
            assert sent.status_code == 202 and sent.json()["outcome"] == "queued", sent.text
            time.sleep(0.2)
        assert "via" in a.tail()  # a logged the wake as told by b
