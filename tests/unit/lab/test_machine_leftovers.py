"""The session's leftover check finds what a session adds on the machine, and only that."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.machine_leftovers import SESSION_ENV, leftovers, snapshot


def test_a_new_shoal_path_is_a_leftover_and_an_old_one_is_not(tmp_path: Path) -> None:
    etc, var_lib, lab_root = tmp_path / "etc", tmp_path / "var-lib", tmp_path / "lab"
    for d in (etc, var_lib, lab_root):
        d.mkdir()
    (etc / "shoal-old.conf").write_text("there before the session\n")
    (lab_root / "tzzzzzzz").mkdir()  # another session's lab
    roots = (str(etc), str(var_lib))
    before = snapshot("tabcdefg", roots=roots, state_root=lab_root)

    (var_lib / "shoal" / "backups").mkdir(parents=True)
    (etc / "systemd" / "system").mkdir(parents=True)
    (etc / "systemd" / "system" / "shoal-restore.service").write_text("")
    (etc / "unrelated.conf").write_text("")
    (lab_root / "btabcdefg").mkdir()  # this session's
    (lab_root / "bzzzzzzz").mkdir()  # another session's
    after = snapshot("tabcdefg", roots=roots, state_root=lab_root)

    assert leftovers(before, after) == [
        f"path {etc}/systemd/system/shoal-restore.service",
        f"path {lab_root}/btabcdefg",
        f"path {var_lib}/shoal",
    ]
    assert leftovers(after, after) == []


def test_a_process_started_in_the_session_and_still_alive_is_a_leftover(tmp_path: Path) -> None:
    token = "tproc123"
    before = snapshot(token, roots=(), state_root=tmp_path)
    env = {**os.environ, SESSION_ENV: token}
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    try:
        found = leftovers(before, snapshot(token, roots=(), state_root=tmp_path))
        assert [line.split()[:2] for line in found] == [["process", str(child.pid)]]
    finally:
        child.kill()
        child.wait()
    assert leftovers(before, snapshot(token, roots=(), state_root=tmp_path)) == []
