"""Getting root on a host whose login is not root: sudo, through one wrapper, with clear errors.

With `become = "sudo"` every remote script (facts, apply phases, confirmation, recovery,
verification) is sent to the wrapper `WRAPPER_PATH` under `sudo`, in the same one channel as
without become, so round trips do not change. The wrapper is a short root-owned script the
operator installs (`shoal sudoers` prints it and the sudoers line). Why one wrapper and not a
list of commands: every command shoal runs as root (nft, ip, sysctl, systemctl, writing files
under /etc) is root-equivalent on its own, so a list would grant no less and would break whenever
a script changes; one exact path gives one sudoers line, a fixed environment, and a line in the
host's journal with the sha256 of every script that ran as root (sudo logs only the command
line, which is the same for every script).

stdin carries, in order: the sudo password and a newline when one is given (sudo `-S` reads
exactly that line), the marker line, then the script. The wrapper skips at most one line before
the marker, so a password that sudo did not ask for (a NOPASSWD rule) is dropped unread instead of
running as shell input. The password never appears in argv or an environment.

The wrapper's first line on stdout (`STARTED`) says it got the script: without that line nothing
ran as root, and what sudo printed becomes a `PrivilegeMissing` naming the host, the user and
what is missing. Nothing on the host has changed then.
"""

from __future__ import annotations

import re
import secrets
import shlex
from collections.abc import Iterable
from dataclasses import replace

from reconciler.errors import PrivilegeMissing
from reconciler.transport.protocol import Argv, CommandResult

WRAPPER_PATH = "/usr/local/libexec/shoal-run"
SCRIPT_MARKER = "#shoal-run v1#"
# Printed by the login shell when sudo is not on its PATH (before sudo could say anything).
NO_SUDO = "#shoal-become# sudo not found"
# The wrapper's own exit status when stdin does not carry the protocol (nothing ran).
WRAPPER_PROTOCOL_EXIT = 125
# The wrapper's first line on stdout, before the script runs: without it, nothing ran as root.
STARTED = "#shoal-run# started"

WRAPPER_SCRIPT = f"""#!/bin/sh
# {WRAPPER_PATH}: runs the script shoal sends on stdin, as the user sudo made us (root).
# Installed by the operator, root:root 0755; sudoers allows the login user exactly this path.
# stdin: [one line: a password sudo did not need] {SCRIPT_MARKER} newline, then the script.
set -u
umask 022
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LC_ALL=C
export PATH LC_ALL
IFS= read -r line || exit {WRAPPER_PROTOCOL_EXIT}
if [ "$line" != '{SCRIPT_MARKER}' ]; then
  IFS= read -r line || exit {WRAPPER_PROTOCOL_EXIT}
fi
if [ "$line" != '{SCRIPT_MARKER}' ]; then
  echo 'shoal-run: stdin does not start with the script marker: nothing ran' >&2
  exit {WRAPPER_PROTOCOL_EXIT}
fi
script=$(mktemp "${{TMPDIR:-/tmp}}/shoal-run.XXXXXX") || exit {WRAPPER_PROTOCOL_EXIT}
trap 'rm -f "$script"' EXIT
cat >"$script"
printf '%s\\n' '{STARTED}'
if command -v logger >/dev/null 2>&1 && command -v sha256sum >/dev/null 2>&1; then
  logger -t shoal-run "uid=$(id -u) by=${{SUDO_USER:-?}} bytes=$(wc -c <"$script")" \\
    "sha256=$(sha256sum <"$script" | cut -d' ' -f1)" 2>/dev/null || :
fi
sh "$script" </dev/null
"""


def sudo_argv(become_user: str, *, with_password: bool) -> Argv:
    """The command that runs the wrapper as `become_user`: never prompts on a terminal.

    Without a password `-n` fails at once where sudo would ask. With one, `-S -p ''` reads it
    from stdin silently and `-k` ignores cached credentials, so sudo reads the line every time
    and the line is never left over for the script.
    """
    if with_password:
        return ("sudo", "-S", "-k", "-p", "", "-u", become_user, "--", WRAPPER_PATH)
    return ("sudo", "-n", "-u", become_user, "--", WRAPPER_PATH)


def login_command(remote: str) -> str:
    """`remote` (an `exec ...` line) after a check that sudo is there at all."""
    return (
        f"command -v sudo >/dev/null 2>&1 || {{ echo {shlex.quote(NO_SUDO)} >&2; exit 127; }}; "
        f"{remote}"
    )


def sudo_stdin(script: str, password: str | None) -> str:
    """What the channel's stdin carries (see the module docstring)."""
    head = f"{password}\n" if password is not None else ""
    return f"{head}{SCRIPT_MARKER}\n{script}"


def command_script(argv: Argv, input: str | None) -> str:
    """One command as a script for the wrapper; its stdin, if any, as a quoted here-document."""
    line = shlex.join(argv)
    if input is None:
        return f"exec {line} </dev/null\n"
    body = input if input.endswith("\n") or not input else input + "\n"
    delimiter = f"SHOAL_INPUT_{secrets.token_hex(8)}"
    while delimiter in body:  # a random 64-bit name in the input: pick again
        delimiter = f"SHOAL_INPUT_{secrets.token_hex(8)}"
    if body is not input:
        # A here-document always ends in a newline; the one added above is taken off again.
        return f"head -c -1 <<'{delimiter}' | {line}\n{body}{delimiter}\n"
    return f"exec {line} <<'{delimiter}'\n{body}{delimiter}\n"


_PASSWORD_REFUSED = ("incorrect password", "Sorry, try again", "no password was provided")
_NOT_ALLOWED = re.compile(
    r"is not allowed to execute|is not in the sudoers file|may not run sudo|not allowed to run sudo"
)


def asked_for_password(result: CommandResult) -> bool:
    """sudo -n wanted a password. sudo asks before it says whether a rule allows the command,
    so this is also what a login without any rule for the wrapper sees: `list_argv` tells."""
    return "a password is required" in result.stderr and not result.stdout.startswith(STARTED)


def list_argv(become_user: str) -> Argv:
    """`sudo -l` for the wrapper: exit 0 if a rule allows it, 1 if none does. Without a
    password it answers only when some rule of the user is NOPASSWD (sudoers' listpw=any)."""
    return ("sudo", "-n", "-l", "-u", become_user, "--", WRAPPER_PATH)


def refusal_after_listing(
    result: CommandResult, listing: CommandResult, user: str, become_user: str
) -> PrivilegeMissing:
    """The refusal of `result` (sudo asked for a password), told apart by `listing`."""
    if listing.exit_status == 0:
        return refusal(result, user, become_user)  # a rule allows it, with a password
    if "a password is required" in listing.stderr:
        return PrivilegeMissing(
            result.host,
            user,
            f"sudo asks for a password before it says whether {WRAPPER_PATH} may run as "
            f"{become_user}: no NOPASSWD rule allows it; add the line shoal sudoers prints, "
            "or give shoal --become-password-file",
        )
    return PrivilegeMissing(
        result.host, user, f"sudoers does not allow running {WRAPPER_PATH} as {become_user}"
    )


def unwrap(result: CommandResult, user: str, become_user: str) -> CommandResult:
    """The script's own result, without the wrapper's first line; PrivilegeMissing if the
    wrapper never started (sudo refused, or the wrapper is missing), so nothing ran as root."""
    head, sep, rest = result.stdout.partition("\n")
    if head == STARTED and sep:
        return replace(result, stdout=rest)
    raise refusal(result, user, become_user)


def refusal(result: CommandResult, user: str, become_user: str) -> PrivilegeMissing:
    """Why sudo did not start the wrapper, from what sudo (or the login shell) printed."""
    err = result.stderr
    host = result.host

    def missing(what: str) -> PrivilegeMissing:
        return PrivilegeMissing(host, user, what)

    if NO_SUDO in err:
        return missing('sudo is not installed (become = "sudo" needs it on the login\'s PATH)')
    if "you must have a tty" in err:
        return missing(
            f"sudoers has `Defaults requiretty`; shoal runs without a terminal: add "
            f"`Defaults:{user} !requiretty` (shoal sudoers prints it)"
        )
    if "a password is required" in err:
        return missing(
            f"sudo asks for a password to run {WRAPPER_PATH} as {become_user}: allow it with "
            "NOPASSWD (shoal sudoers prints the line) or give shoal --become-password-file"
        )
    if any(said in err for said in _PASSWORD_REFUSED):
        return missing(
            f"sudo did not accept the password given to shoal for running {WRAPPER_PATH} as "
            f"{become_user} (or sudoers has no rule for {user})"
        )
    if _NOT_ALLOWED.search(err):
        return missing(f"sudoers does not allow running {WRAPPER_PATH} as {become_user}")
    if WRAPPER_PATH in err and ("command not found" in err or "No such file" in err):
        return missing(f"{WRAPPER_PATH} is not installed (shoal sudoers prints it)")
    if "shoal-run:" in err:
        return missing(f"{WRAPPER_PATH} did not run the script: {err.strip()}")
    last = err.strip().splitlines()[-1:] or [f"exit status {result.exit_status}, no message"]
    return missing(f"sudo did not start {WRAPPER_PATH} as {become_user}: {last[0]}")


SUDOERS_PATH = "/etc/sudoers.d/shoal"


def sudoers_fragment(rules: Iterable[tuple[str, str]], *, nopasswd: bool = True) -> str:
    """The sudoers file that lets each (login user, become_user) pair run the wrapper, only.

    `!requiretty` because shoal never has a terminal; without NOPASSWD shoal must be given the
    password (`--become-password-file`) and sudo is asked for it on every script.
    """
    tag = "NOPASSWD: " if nopasswd else ""
    lines = [
        f"# {SUDOERS_PATH}: the users shoal logs in as may run its wrapper as root, nothing else.",
        f"# Installed root:root 0440; the wrapper {WRAPPER_PATH} root:root 0755.",
    ]
    pairs = sorted(set(rules))
    for user in sorted({user for user, _ in pairs}):
        lines.append(f"Defaults:{user} !requiretty")
    lines.extend(f"{user} ALL=({target}) {tag}{WRAPPER_PATH}" for user, target in pairs)
    return "\n".join(lines) + "\n"
