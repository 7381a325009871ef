"""`shoal sudoers [REPO] [--host H]`: what to install on hosts where shoal logs in as non-root.

It prints one POSIX sh script, to run as root on each host with become = "sudo" (for example
`shoal sudoers --host web1 | ssh web1 sudo sh` once, by a person who may use sudo there):
it installs the wrapper at `WRAPPER_PATH` and a sudoers file that lets the inventory's login
users run that one path as their become_user, checked with `visudo -c` before it is put in
place, so a typo cannot lock the site out of sudo. Running it again replaces both files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from reconciler.desired.loader import load_repository
from reconciler.desired.models import Desired
from reconciler.errors import DesiredStateInvalid
from reconciler.transport.become import SUDOERS_PATH, WRAPPER_PATH, WRAPPER_SCRIPT, sudoers_fragment


def become_hosts(desired: Desired, host: str | None) -> dict[str, tuple[str, str]]:
    """Host -> (login user, become_user) of the hosts with become = "sudo" (or just `host`)."""
    hosts = desired.inventory.hosts
    if host is not None and host not in hosts:
        known = ", ".join(sorted(hosts)) or "none"
        raise ValueError(f"host {host!r} is not in the inventory (hosts: {known})")
    chosen = [host] if host is not None else sorted(hosts)
    out = {
        name: (hosts[name].user, hosts[name].become_user)
        for name in chosen
        if hosts[name].become == "sudo"
    }
    if not out:
        where = host or "any host"
        raise ValueError(
            f'{where}: become is not "sudo"; set become = "sudo" (and user) for the host in '
            "inventory.toml or under [login] in shoal.toml first"
        )
    return out


def install_script(hosts: dict[str, tuple[str, str]], *, nopasswd: bool = True) -> str:
    """The root shell script that installs the wrapper and the sudoers file for `hosts`."""
    fragment = sudoers_fragment(hosts.values(), nopasswd=nopasswd)
    libexec = WRAPPER_PATH.rsplit("/", 1)[0]
    return f"""#!/bin/sh
# Run as root on each of: {" ".join(sorted(hosts))}
# Installs {WRAPPER_PATH} (the one command shoal runs under sudo) and {SUDOERS_PATH}.
set -eu
command -v sudo >/dev/null 2>&1 || {{ echo 'shoal: install sudo first' >&2; exit 1; }}
command -v visudo >/dev/null 2>&1 || {{ echo 'shoal: visudo not found' >&2; exit 1; }}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/shoal-run" <<'SHOAL_WRAPPER_END'
{WRAPPER_SCRIPT}SHOAL_WRAPPER_END
cat >"$tmp/sudoers" <<'SHOAL_SUDOERS_END'
{fragment}SHOAL_SUDOERS_END
visudo -cqf "$tmp/sudoers" || {{ echo 'shoal: the sudoers file does not parse' >&2; exit 1; }}
install -d -m 0755 -o root -g root {libexec}
install -m 0755 -o root -g root "$tmp/shoal-run" {WRAPPER_PATH}
install -m 0440 -o root -g root "$tmp/sudoers" {SUDOERS_PATH}
echo "shoal: installed {WRAPPER_PATH} and {SUDOERS_PATH} on $(hostname)"
"""


def run_sudoers(
    repo: Path,
    *,
    host: str | None,
    nopasswd: bool,
    echo: Callable[[str], None],
    error: Callable[[str], None],
) -> int:
    try:
        desired = load_repository(repo)
    except DesiredStateInvalid as exc:
        error("invalid repository:\n" + "\n".join(str(i) for i in exc.issues))
        return 2
    try:
        hosts = become_hosts(desired, host)
    except ValueError as exc:
        error(str(exc))
        return 2
    echo(install_script(hosts, nopasswd=nopasswd).rstrip("\n"))
    return 0
