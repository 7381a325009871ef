"""Lab hosts that shoal logs in to as a user other than root (issue 15), set up as root.

What an operator does once per host before shoal can log in as, say, `deploy` with
`become = "sudo"`: create the login user, run as root the install script that `shoal sudoers`
printed (the wrapper and a visudo-checked sudoers file), and optionally forbid root logins in
sshd. Tests of sudo and of logins without rights, and the benchmark's shoal-sudo row, use the
same steps from here. Netns hosts only where sshd's own files are touched; the lab package
knows nothing of shoal, so the install script is whatever the caller got from `shoal sudoers`.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import time
from collections.abc import Iterable

from lab import proc
from lab import vm as vms
from lab.lab import Lab, LabError
from lab.naming import MARKER_ENV, marker_value

AUTHORIZED_KEYS = "/etc/shoal-lab/authorized_keys"
_SETUP_CONCURRENCY = 16  # lab.exec is an nsenter each: a 100-host lab need not fork 200 at once


def add_user_script(user: str) -> str:
    """Root shell script that creates `user` as a login the lab's key opens (pure).

    No home on the machine (a netns host shares the machine's /home), a password field that
    is not locked (sshd without PAM refuses a locked account even for a key), and the lab's
    authorized keys readable by the user (sshd reads them as the user; public keys only).
    Run twice, it leaves the user as it is.
    """
    u, home = shlex.quote(user), shlex.quote(f"/var/lib/{user}")
    return (
        f"id {u} >/dev/null 2>&1 || useradd --no-create-home --home-dir {home} --shell /bin/sh "
        f"{u}; usermod -p '*' {u} && chmod 0644 {AUTHORIZED_KEYS}"
    )


async def add_login_user(lab: Lab, host: str, user: str) -> None:
    """Create `user` on `host` (inside the host: its own /etc) so the lab's key logs in as it."""
    await lab.exec(host, ["sh", "-c", add_user_script(user)])


async def install_as_root(lab: Lab, host: str, script: str) -> str:
    """Run `script` (what `shoal sudoers` printed) as root on `host`; its output."""
    return (await lab.exec(host, ["sh"], input=script)).stdout


async def root_login_refused(lab: Lab, host: str) -> bool:
    """True when sshd answers and refuses root; False when it lets root in or is restarting."""
    argv = vms.ssh_argv(
        lab.host(host).address, lab.known_hosts_path, lab.client_key_path, ["true"],
        connect_timeout=5,
    )  # fmt: skip
    env = {**proc.BASE_ENV, "HOME": "/root", MARKER_ENV: marker_value(lab.lab_id, host)}
    result = await proc.run(argv, check=False, timeout=30, env=env)
    # ssh exits 255 both when refused and when nothing listens (sshd re-executing itself):
    # only its message tells them apart.
    return result.returncode == 255 and "Permission denied" in result.stderr


async def disable_root_login(lab: Lab, host: str, *, timeout: float = 15.0) -> None:
    """`PermitRootLogin no` in a netns host's sshd_config, then wait until sshd, re-executed by
    SIGHUP, refuses a root login (the lab writes the file afresh at every up)."""
    one = lab.host(host)
    if one.kind != "netns":
        raise LabError(f"{host} is a {one.kind} host: its sshd_config is not the lab's to edit")
    config = lab.host_dir(host) / "sshd_config"
    lines = config.read_text().splitlines(keepends=True)
    allowed = "PermitRootLogin prohibit-password\n"
    if allowed not in lines:
        raise LabError(f"{host}: {config} has no {allowed.strip()!r} line to change")
    config.write_text("".join("PermitRootLogin no\n" if x == allowed else x for x in lines))
    os.kill(one.sshd_pid, signal.SIGHUP)  # sshd re-executes itself, reading the file anew
    deadline = time.monotonic() + timeout
    while not await root_login_refused(lab, host):
        if time.monotonic() > deadline:
            raise LabError(f"{host}: sshd still lets root in {timeout:g} s after SIGHUP")
        await asyncio.sleep(0.2)


async def prepare_sudo_login(
    lab: Lab, hosts: Iterable[str], user: str, install: str, *, refuse_root: bool = False
) -> dict[str, str]:
    """On every host: `user` added, `install` run as root, root logins refused if asked.

    Returns each host's install output, for the caller to check against what it expects.
    """
    limit = asyncio.Semaphore(_SETUP_CONCURRENCY)

    async def one(host: str) -> tuple[str, str]:
        async with limit:
            await add_login_user(lab, host, user)
            out = await install_as_root(lab, host, install)
            if refuse_root:
                await disable_root_login(lab, host)
            return host, out

    return dict(await asyncio.gather(*(one(h) for h in hosts)))
