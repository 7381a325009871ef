"""What the SSH transport sends for a become = "sudo" host: sudo in the command line, the
password and the script on stdin only, one channel per command as without become."""

from __future__ import annotations

import shlex
from pathlib import Path

import asyncssh
import pytest
from pydantic import SecretStr

from reconciler.desired.models import Host, Inventory
from reconciler.transport.become import SCRIPT_MARKER, WRAPPER_PATH
from reconciler.transport.protocol import SCRIPT_ARGV
from reconciler.transport.ssh import SSHTransport


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("key") / "id_ed25519"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(path)
    return path


def transport(key: Path, password: str | None = None) -> SSHTransport:
    hosts = {
        "web1": Host(name="web1", address="10.77.0.21", user="deploy", become="sudo"),
        "web2": Host(name="web2", address="10.77.0.22"),
    }
    return SSHTransport(
        Inventory(hosts=hosts),
        "",
        key,
        become_password=None if password is None else SecretStr(password),
    )


def test_a_plain_host_runs_the_command_itself(key: Path) -> None:
    t = transport(key)
    command = t._command(t._host("web2"), ("ip", "-j", "addr"), None, 30)
    assert "sudo" not in command.line
    assert "ip -j addr" in command.line
    assert command.stdin is None


def test_a_script_goes_to_the_wrapper_on_stdin_under_sudo_n(key: Path) -> None:
    t = transport(key)
    command = t._command(t._host("web1"), SCRIPT_ARGV, "echo hi\n", 30)
    assert shlex.join(("sudo", "-n", "-u", "root", "--", WRAPPER_PATH)) in command.line
    assert command.stdin == f"{SCRIPT_MARKER}\necho hi\n"


def test_a_command_becomes_a_one_line_script(key: Path) -> None:
    t = transport(key)
    command = t._command(t._host("web1"), ("cat", "/etc/shoal file"), None, 30)
    assert command.stdin == f"{SCRIPT_MARKER}\nexec cat '/etc/shoal file' </dev/null\n"


def test_the_password_is_on_stdin_never_in_the_command_line(key: Path) -> None:
    t = transport(key, "hunter2 x")
    command = t._command(t._host("web1"), SCRIPT_ARGV, "true\n", 30)
    assert "hunter2" not in command.line
    assert "sudo -S -k -p ''" in command.line
    assert command.stdin == f"hunter2 x\n{SCRIPT_MARKER}\ntrue\n"
    assert "hunter2" not in repr(t.__dict__)
