"""The sudo wrapper protocol: the wrapper run by a real sh, commands as wrapper scripts, and
sudo's refusals (as sudo 1.9 prints them) turned into errors naming host, user and what is
missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler.errors import PrivilegeMissing, Stalled
from reconciler.transport.become import (
    NO_SUDO,
    SCRIPT_MARKER,
    STARTED,
    WRAPPER_PATH,
    WRAPPER_PROTOCOL_EXIT,
    WRAPPER_SCRIPT,
    asked_for_password,
    command_script,
    list_argv,
    login_command,
    refusal_after_listing,
    sudo_argv,
    sudo_stdin,
    sudoers_fragment,
    unwrap,
)
from reconciler.transport.protocol import CommandResult


@pytest.fixture
def wrapper(tmp_path: Path) -> Path:
    path = tmp_path / "shoal-run"
    path.write_text(WRAPPER_SCRIPT)
    path.chmod(0o755)
    return path


def run_wrapper(wrapper: Path, stdin: str) -> subprocess.CompletedProcess[str]:
    env = {"TMPDIR": str(wrapper.parent), "PATH": os.environ["PATH"]}
    return subprocess.run(
        [str(wrapper)], input=stdin, capture_output=True, text=True, env=env, timeout=30
    )


def test_wrapper_skips_a_password_sudo_did_not_read_and_announces_the_script(
    wrapper: Path,
) -> None:
    script = 'echo "as $(id -u)"; read x && echo "stdin: $x" || echo "stdin empty"; exit 7\n'
    done = run_wrapper(wrapper, sudo_stdin(script, "pa ss\tword"))
    assert done.returncode == 7
    assert done.stdout == f"{STARTED}\nas {os.getuid()}\nstdin empty\n"
    assert "pa ss" not in done.stdout + done.stderr
    # Its temporary copy of the script is gone after it ran.
    assert sorted(p.name for p in wrapper.parent.iterdir()) == ["shoal-run"]


def test_wrapper_without_password_line(wrapper: Path) -> None:
    done = run_wrapper(wrapper, sudo_stdin("printf '%s' \"$PATH\"\n", None))
    assert done.returncode == 0
    assert done.stdout.startswith(f"{STARTED}\n/usr/local/sbin:")


@pytest.mark.parametrize(
    "stdin",
    ["", "echo pwned\n", "password\nsecond\n" + SCRIPT_MARKER + "\necho late\n"],
    ids=["empty", "no-marker", "marker-on-third-line"],
)
def test_wrapper_refuses_stdin_without_the_marker_and_runs_nothing(
    wrapper: Path, stdin: str
) -> None:
    done = run_wrapper(wrapper, stdin)
    assert done.returncode == WRAPPER_PROTOCOL_EXIT
    assert STARTED not in done.stdout
    assert "pwned" not in done.stdout and "late" not in done.stdout


@pytest.mark.parametrize(
    "input",
    [None, "", "one line\n", "no newline at the end", "a\n\nb\n\n", "$HOME `id` \\n 'q' \"d\"\n",
     "SHOAL_INPUT_0123456789abcdef\nEOF\n"],
)  # fmt: skip
def test_a_command_as_a_wrapper_script_gets_exactly_its_input(input: str | None) -> None:
    script = command_script(("cat",), input)
    done = subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (input or "")


def test_a_command_script_quotes_every_argument_and_keeps_the_exit_status() -> None:
    script = command_script(("sh", "-c", 'printf "%s|" "$0" "$1"; exit 3', "a b", "$(id)"), None)
    done = subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (3, "a b|$(id)|")


def test_sudo_never_prompts_and_takes_the_password_only_on_stdin() -> None:
    assert sudo_argv("root", with_password=False) == (
        "sudo", "-n", "-u", "root", "--", WRAPPER_PATH,
    )  # fmt: skip
    with_password = sudo_argv("root", with_password=True)
    assert with_password[:5] == ("sudo", "-S", "-k", "-p", "")
    assert with_password[-1] == WRAPPER_PATH
    assert sudo_stdin("echo\n", "secret").startswith(f"secret\n{SCRIPT_MARKER}\n")


def test_the_login_shell_says_when_sudo_is_missing() -> None:
    line = login_command("exec sudo -n true")
    done = subprocess.run(
        ["/bin/sh", "-c", line], capture_output=True, text=True, env={"PATH": "/nonexistent"}
    )
    assert done.returncode == 127
    assert NO_SUDO in done.stderr


def result(stdout: str = "", stderr: str = "", status: int = 1) -> CommandResult:
    return CommandResult(host="web1", argv=("sh", "-s"), exit_status=status, stdout=stdout,
                         stderr=stderr)  # fmt: skip


def test_unwrap_returns_the_scripts_own_output() -> None:
    got = unwrap(result(f"{STARTED}\nhello\n", "warn\n", 4), "deploy", "root")
    assert (got.stdout, got.stderr, got.exit_status) == ("hello\n", "warn\n", 4)


# What sudo 1.9.13 (Debian 12) and the login shell print, measured on lab hosts.
REFUSALS = [
    ("sudo: a password is required\n", "asks for a password"),
    ("Sorry, try again.\nSorry, try again.\nsudo: 3 incorrect password attempts\n",
     "did not accept the password"),
    ("sudo: no password was provided\n", "did not accept the password"),
    ("sudo: sorry, you must have a tty to run sudo\n", "Defaults:deploy !requiretty"),
    ("Sorry, user deploy is not allowed to execute '/usr/local/libexec/shoal-run' as root on "
     "web1.\n", "does not allow running /usr/local/libexec/shoal-run as root"),
    ("deploy is not in the sudoers file.\n", "does not allow running"),
    (f"{NO_SUDO}\n", "sudo is not installed"),
    ("sudo: /usr/local/libexec/shoal-run: command not found\n",
     "/usr/local/libexec/shoal-run is not installed"),
    ("shoal-run: stdin does not start with the script marker: nothing ran\n",
     "did not run the script"),
    ("sudo: unable to resolve host web1\nsudo: something new\n", "sudo: something new"),
    ("", "exit status 1, no message"),
]  # fmt: skip


@pytest.mark.parametrize(("stderr", "names"), REFUSALS)
def test_a_refusal_names_host_user_and_what_is_missing(stderr: str, names: str) -> None:
    with pytest.raises(PrivilegeMissing) as info:
        unwrap(result("", stderr), "deploy", "root")
    message = str(info.value)
    assert message.startswith("web1: login user deploy cannot run shoal as root: ")
    assert names in message
    assert (info.value.host, info.value.user) == ("web1", "deploy")
    # A refusal waits for a change (on the host or in the repository), it is not retried.
    assert isinstance(info.value, Stalled)


def test_output_that_did_not_come_from_the_wrapper_is_a_refusal() -> None:
    # A login shell's banner or a script's output without the wrapper's line: nothing ran.
    with pytest.raises(PrivilegeMissing):
        unwrap(result("ran something\n", "", 0), "deploy", "root")


def test_the_sudoers_fragment_grants_the_wrapper_only_and_parses(tmp_path: Path) -> None:
    text = sudoers_fragment([("deploy", "root"), ("ops", "root"), ("deploy", "root")])
    rules = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert rules == [
        "Defaults:deploy !requiretty",
        "Defaults:ops !requiretty",
        f"deploy ALL=(root) NOPASSWD: {WRAPPER_PATH}",
        f"ops ALL=(root) NOPASSWD: {WRAPPER_PATH}",
    ]
    assert "NOPASSWD" not in sudoers_fragment([("deploy", "root")], nopasswd=False)
    visudo = shutil.which("visudo") or "/usr/sbin/visudo"
    path = tmp_path / "shoal"
    path.write_text(text)
    done = subprocess.run([visudo, "-cf", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_password_prompt_is_told_apart_by_listing_the_wrapper() -> None:
    asked = result("", "sudo: a password is required\n")
    assert asked_for_password(asked)
    assert list_argv("root") == ("sudo", "-n", "-l", "-u", "root", "--", WRAPPER_PATH)
    allowed = result(f"{WRAPPER_PATH}\n", "", 0)
    no_rule = result("", "", 1)
    cannot_tell = result("", "sudo: a password is required\n", 1)
    cases = {
        "asks for a password": allowed,
        f"sudoers does not allow running {WRAPPER_PATH} as root": no_rule,
        "no NOPASSWD rule allows it": cannot_tell,
    }
    for names, listing in cases.items():
        message = str(refusal_after_listing(asked, listing, "deploy", "root"))
        assert message.startswith("web1: login user deploy cannot run shoal as root: ")
        assert names in message, (names, message)
