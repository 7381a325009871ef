"""The save / undo shell commands of a whole-table nft step, run by a real shell.

`nft` is a stand-in on PATH (the unit tests run without root or a network namespace; the lab
tests run the real one): it prints a table for `list table` and records what `-f -` was fed.
What is under test is the commands' own file handling: the undo puts back the saved text and
leaves no save file, and no save directory the step created.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from states import nft_scripts

FAKE_NFT = """#!/bin/sh
case "$1" in
  list) echo "table $3 $4 { saved }" ;;
  -f) cat >> "$NFT_FED" ;;
  delete) echo "delete $3 $4" >> "$NFT_FED" ;;
esac
"""


@pytest.fixture
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nft").write_text(FAKE_NFT)
    (bin_dir / "nft").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("NFT_FED", str(tmp_path / "fed"))
    save_dir = tmp_path / "var" / "lib" / "shoal" / "nft"
    monkeypatch.setattr(nft_scripts, "SAVE_DIR", str(save_dir))
    return save_dir


def _run(argv: tuple[str, ...]) -> None:
    subprocess.run(argv, check=True, timeout=10)


@pytest.mark.parametrize("change", ["delete", "replace"])
def test_undo_leaves_no_save_and_no_directory_the_step_made(shell: Path, change: str) -> None:
    step = (
        nft_scripts.save_then_delete_argv("arp", "shoal_arp")
        if change == "delete"
        else nft_scripts.save_then_load_argv("arp", "shoal_arp", "table arp shoal_arp {}\n")
    )
    _run(step)
    saved = Path(nft_scripts.save_path("arp", "shoal_arp"))
    assert saved.read_text() == "table arp shoal_arp { saved }\n"
    _run(nft_scripts.restore_argv("arp", "shoal_arp"))
    fed = Path(os.environ["NFT_FED"]).read_text()
    assert fed.endswith(
        "table arp shoal_arp\ndelete table arp shoal_arp\ntable arp shoal_arp { saved }\n"
    )
    assert not shell.exists() and shell.parent.exists()


def test_undo_keeps_a_directory_that_was_there(shell: Path) -> None:
    shell.mkdir(parents=True)
    (shell / "shoal_dsr.nft").write_text("someone's\n")
    _run(nft_scripts.save_then_delete_argv("arp", "shoal_arp"))
    _run(nft_scripts.restore_argv("arp", "shoal_arp"))
    assert sorted(p.name for p in shell.iterdir()) == ["shoal_dsr.nft"]


def test_two_tables_undone_in_reverse_leave_nothing(shell: Path) -> None:
    _run(nft_scripts.save_then_delete_argv("arp", "shoal_arp"))
    _run(nft_scripts.save_then_delete_argv("netdev", "shoal_dsr"))
    _run(nft_scripts.restore_argv("netdev", "shoal_dsr"))
    _run(nft_scripts.restore_argv("arp", "shoal_arp"))
    assert not shell.exists()
