"""`shoal sudoers`: the install script for become = "sudo" hosts, checked by a real sh and
visudo; and the errors when no host needs it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from typer.testing import CliRunner

from reconciler.cli.main import app
from reconciler.transport.become import WRAPPER_PATH, WRAPPER_SCRIPT

EXAMPLE = Path(__file__).resolve().parents[3] / "fixtures" / "config-repo"
runner = CliRunner()


def repo_with_sudo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE, repo)
    with (repo / "shoal.toml").open("a") as f:
        f.write('\n[login]\nuser = "deploy"\nbecome = "sudo"\n')
    inventory = (repo / "inventory.toml").read_text()
    inventory = inventory.replace("[hosts.web2]\n", '[hosts.web2]\nuser = "ops"\n')
    inventory = inventory.replace("[hosts.client1]\n", '[hosts.client1]\nbecome = "none"\n')
    (repo / "inventory.toml").write_text(inventory)
    return repo


def sections(script: str, end: str) -> str:
    start = script.index(f"<<'{end}'\n") + len(f"<<'{end}'\n")
    return script[start : script.index(f"{end}\n", start)]


def test_the_script_carries_the_wrapper_and_rules_for_every_login(tmp_path: Path) -> None:
    done = runner.invoke(app, ["sudoers", str(repo_with_sudo(tmp_path))])
    assert done.exit_code == 0, done.output
    script = done.output
    assert script.splitlines()[1] == "# Run as root on each of: lvs1 lvs2 web1 web2 web3"
    assert sections(script, "SHOAL_WRAPPER_END") == WRAPPER_SCRIPT
    rules = [
        line
        for line in sections(script, "SHOAL_SUDOERS_END").splitlines()
        if not line.startswith("#")
    ]
    assert rules == [
        "Defaults:deploy !requiretty",
        "Defaults:ops !requiretty",
        f"deploy ALL=(root) NOPASSWD: {WRAPPER_PATH}",
        f"ops ALL=(root) NOPASSWD: {WRAPPER_PATH}",
    ]
    assert subprocess.run(["sh", "-n"], input=script, text=True).returncode == 0


def test_one_host_and_a_password(tmp_path: Path) -> None:
    done = runner.invoke(
        app, ["sudoers", str(repo_with_sudo(tmp_path)), "--host", "web2", "--password-required"]
    )
    assert done.exit_code == 0, done.output
    assert f"ops ALL=(root) {WRAPPER_PATH}\n" in done.output
    assert "deploy" not in done.output and "NOPASSWD" not in done.output


def test_a_host_without_become_or_unknown_is_an_error(tmp_path: Path) -> None:
    repo = repo_with_sudo(tmp_path)
    done = runner.invoke(app, ["sudoers", str(repo), "--host", "client1"])
    assert done.exit_code == 2
    assert 'client1: become is not "sudo"' in done.output
    done = runner.invoke(app, ["sudoers", str(repo), "--host", "nosuch"])
    assert done.exit_code == 2
    assert "host 'nosuch' is not in the inventory" in done.output
    done = runner.invoke(app, ["sudoers", str(EXAMPLE)])
    assert done.exit_code == 2
    assert 'any host: become is not "sudo"' in done.output
