"""A throwaway PostgreSQL server for the tests: Debian's binaries, a cluster made by initdb in a
temporary directory, reachable only on a Unix socket in that directory (no TCP at all).

The server runs as an unprivileged user: `nobody` when the tests run as root (initdb and postgres
refuse root), else the user running the tests. It is started once per pytest process
(`tests/conftest.py`, fixture `postgres`) and stopped at the end; each test gets a schema of its
own (`PostgresServer.new_url`), so tests never see each other's rows. Durability is switched off
(fsync): the cluster is thrown away, and the tests are what is timed.

Costs about 2 s to start on a loaded machine, a few ms per test schema.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg

# Debian 12's postgresql package (15); scripts/setup.sh --tests installs it.
PG_BIN = Path(os.environ.get("SHOAL_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_PACKAGE = "postgresql"
SUPERUSER = "shoal"
DATABASE = "shoal"
START_DEADLINE = 60.0


def missing() -> str | None:
    """Why this machine cannot start the test server, or None when it can."""
    for name in ("initdb", "postgres"):
        if not (PG_BIN / name).is_file():
            return f"{PG_BIN / name} not found (Debian package {PG_PACKAGE}; make setup-tests)"
    return None


class PostgresServer:
    """One running test server; `stop()` ends it and removes its directory."""

    def __init__(self, root: Path, process: subprocess.Popen[bytes], run_as: dict[str, Any]):
        self.root = root
        self.socket_dir = root
        self._process = process
        self._run_as = run_as

    @classmethod
    def start(cls) -> PostgresServer:
        root = Path(tempfile.mkdtemp(prefix="shoal-pg-"))
        run_as: dict[str, Any] = {}
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(root, nobody.pw_uid, nobody.pw_gid)
            run_as = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
        data = root / "data"
        log = root / "server.log"
        try:
            _run(
                [str(PG_BIN / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust",
                 "--encoding=UTF8", "--no-locale", "--no-sync"],
                run_as,
            )
            with log.open("wb") as out:
                if run_as:
                    os.chown(log, run_as["user"], run_as["group"])
                process = subprocess.Popen(
                    [str(PG_BIN / "postgres"), "-D", str(data),
                     "-c", "listen_addresses=", "-c", f"unix_socket_directories={root}",
                     "-c", "fsync=off",
                     "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                     "-c", "max_connections=200"],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=root,
                    **run_as,
                )
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        server = cls(root, process, run_as)
        try:
            server._wait_ready()
            with psycopg.connect(server.conninfo("postgres"), autocommit=True) as db:
                db.execute(f"CREATE DATABASE {DATABASE}")
        except BaseException:
            server.stop()
            raise
        return server

    def conninfo(self, dbname: str = DATABASE) -> str:
        return f"host={self.socket_dir} user={SUPERUSER} dbname={dbname}"

    def url(self, *, schema: str | None = None, dbname: str = DATABASE) -> str:
        """A postgresql:// URL of `dbname` on the socket, in `schema` when one is given."""
        url = f"postgresql:///{dbname}?host={quote(str(self.socket_dir), safe='')}&user={SUPERUSER}"
        if schema is not None:
            url += "&options=" + quote(f"-c search_path={schema}", safe="")
        return url

    def new_url(self) -> str:
        """The URL of a new, empty schema: a store of its own for one test."""
        schema = f"t_{secrets.token_hex(6)}"
        with psycopg.connect(self.conninfo(), autocommit=True) as db:
            db.execute(f"CREATE SCHEMA {schema}")
        return self.url(schema=schema)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_DEADLINE
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"postgres exited {self._process.returncode}: {self.log()}")
            try:
                psycopg.connect(self.conninfo("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres not ready: {exc}: {self.log()}") from exc
                time.sleep(0.1)

    def log(self) -> str:
        try:
            return (self.root / "server.log").read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self._process.poll() is None:
            # SIGINT: PostgreSQL's fast shutdown (sessions ended, no waiting for clients).
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def _run(argv: Sequence[str], run_as: dict[str, Any]) -> None:
    # cwd: the unprivileged user may not enter the caller's directory.
    done = subprocess.run(
        list(argv), stdin=subprocess.DEVNULL, capture_output=True, check=False, cwd="/", **run_as
    )
    if done.returncode != 0:
        out = (done.stdout + done.stderr).decode(errors="replace")
        raise RuntimeError(f"{argv[0]} exited {done.returncode}: {out}")
