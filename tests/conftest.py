"""Shared pytest setup: the session lab (real hosts) and the rules for `lab`-marked tests.

A `lab` test needs root, `ip` and OpenSSH's sshd. Where they are missing it is skipped locally,
but under CI=true it fails, and any `lab` test that ends up skipped anyway (by whatever means)
turns the whole session's exit status into a failure: CI never passes without the real hosts.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from lab import Lab, Topology, prerequisites, reap_abandoned_labs
from reconciler.server.store.database import Store
from tests.machine_leftovers import SESSION_ENV, Snapshot, leftovers, snapshot
from tests.support import postgres as pg

# One token per pytest process (each xdist worker too), so parallel runs never share a lab.
SESSION_TOKEN = secrets.token_hex(4)[:7]
SESSION_LAB_ID = f"t{SESSION_TOKEN}"

# Inherited by every process a test starts: one still running at the end is a leftover.
os.environ[SESSION_ENV] = SESSION_TOKEN

_skipped_lab_tests: list[str] = []
_machine_before: Snapshot | None = None
_machine_leftovers: list[str] = []


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_lab() -> None:
    """Skip (locally) or fail (CI) the current test when this machine cannot run a lab."""
    missing = prerequisites()
    if not missing:
        return
    message = f"lab prerequisites missing: {', '.join(missing)}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: lab tests must run)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _lab_prerequisites(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("lab") is not None:
        require_lab()


@pytest.fixture(scope="session")
def session_token() -> str:
    """Seven characters unique to this pytest process: a suffix for the ids of test labs."""
    return SESSION_TOKEN


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def lab() -> AsyncIterator[Lab]:
    """The default topology (lvs1 lvs2, web1-3, client1), shared by the whole session.

    Tests that change a host must undo it; tests that need to break hosts bring up their own.
    """
    require_lab()
    # Test labs whose pytest was killed before its teardown ran.
    await reap_abandoned_labs()
    async with Lab.up(SESSION_LAB_ID, Topology.default(), ephemeral=True) as session_lab:
        yield session_lab


@pytest.fixture(scope="session")
def postgres() -> Iterator[pg.PostgresServer]:
    """A PostgreSQL server of this pytest process (tests/support/postgres.py), on a Unix socket.

    Missing binaries skip the test locally (`make unit` without `make setup-tests`); under CI=true
    they fail it: the PostgreSQL store is always tested in CI.
    """
    why = pg.missing()
    if why is not None:
        if in_ci():
            pytest.fail(f"{why} (CI=true: the PostgreSQL store must be tested)", pytrace=False)
        pytest.skip(why)
    server = pg.PostgresServer.start()
    try:
        yield server
    finally:
        server.stop()


StoreOpener = Callable[[], Store]


class StoreMaker:
    """Opens stores of one backend for a test: one per state directory, the same data again
    when the same directory is given again (a restart, or a second server on it)."""

    def __init__(self, backend: str, postgres: pg.PostgresServer | None) -> None:
        self.backend = backend
        self._postgres = postgres
        self._urls: dict[Path, str] = {}
        self._opened: list[Store] = []

    def url(self, state_dir: Path) -> str | None:
        """The store URL of `state_dir` (None: its SQLite file)."""
        if self._postgres is None:
            return None
        if state_dir not in self._urls:
            self._urls[state_dir] = self._postgres.new_url()
        return self._urls[state_dir]

    def __call__(self, state_dir: Path) -> Store:
        url = self.url(state_dir)
        store = Store.connect(url) if url else Store.open(state_dir)
        self._opened.append(store)
        return store

    def close(self) -> None:
        for store in self._opened:
            store.close()


def _stores(request: pytest.FixtureRequest) -> Iterator[StoreMaker]:
    server = request.getfixturevalue("postgres") if request.param == "postgresql" else None
    maker = StoreMaker(request.param, server)
    yield maker
    maker.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def stores(request: pytest.FixtureRequest) -> Iterator[StoreMaker]:
    """Each store test runs on both stores: SQLite files, then a real PostgreSQL server (a
    schema per state directory). Always both, `make unit` too: they are quick."""
    yield from _stores(request)


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql_app)]
)
def app_stores(request: pytest.FixtureRequest) -> Iterator[StoreMaker]:
    """The app and the controller over each store. Their PostgreSQL half (marker
    postgresql_app) doubles the time of many modules, so `make unit` leaves it out; `make
    test` (scripts/run-tests.sh) runs it, and CI never skips it."""
    yield from _stores(request)


@pytest.fixture
def store_backend(stores: StoreMaker, tmp_path: Path) -> tuple[str, str | None]:
    """(backend name, store URL) of the test's store; the URL is None for SQLite, whose file
    is in `tmp_path / "state"`."""
    return stores.backend, stores.url(tmp_path / "state")


@pytest.fixture
def open_store(stores: StoreMaker, tmp_path: Path) -> StoreOpener:
    """Opens the test's store (again: a second server, or one restarted, on the same data)."""
    return lambda: stores(tmp_path / "state")


_lab_test_ids: set[str] = set()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # By marker, not by keyword: "lab" is also the name of the tests/lab package.
    _lab_test_ids.update(item.nodeid for item in items if item.get_closest_marker("lab"))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and report.nodeid in _lab_test_ids and not hasattr(report, "wasxfail"):
        _skipped_lab_tests.append(report.nodeid)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _skipped_lab_tests and in_ci():
        terminalreporter.write_sep("=", "lab tests skipped under CI=true", red=True)
        for nodeid in _skipped_lab_tests:
            terminalreporter.write_line(nodeid)
    if _machine_leftovers:
        terminalreporter.write_sep("=", "the session left these on the machine", red=True)
        for line in _machine_leftovers:
            terminalreporter.write_line(line)


def pytest_sessionstart(session: pytest.Session) -> None:
    global _machine_before
    _machine_before = snapshot(SESSION_TOKEN)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _machine_before is not None:
        _machine_leftovers.extend(leftovers(_machine_before, snapshot(SESSION_TOKEN)))
    failed = (_skipped_lab_tests and in_ci()) or _machine_leftovers
    if failed and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
