"""Hosts where root cannot log in (issue 15): shoal through sudo, on real sshd, sudo and PAM.

One lab (lvs1 lvs2 web1 web2 client1). On every host a user `deploy` is created, the script that
`shoal sudoers` prints is run as root (the wrapper and a visudo-checked sudoers file, the one
thing an operator does by hand), and sshd is switched to `PermitRootLogin no`, then shown to
refuse root. The repository logs in as deploy with `become = "sudo"` under [login]. Proven:
every ARP method converges with the nftables directors, verification with real traffic passes
and the next plan is in sync, with one channel per host for the facts; an injected failure rolls
every host back byte for byte; the dead-man timer restores a host as root when the controller
cannot confirm; each way the rights can be missing (password required, requiretty, a rule for
another command, no sudo, no wrapper, a non-root login without become) makes `shoal plan` and
`shoal apply` exit 1 naming the host, the user and what is missing, with no host changed; a
password from a file works, a wrong one is named, and the password is in no process's argv or
environment while the apply runs, nor in shoal's output; under `shoal serve` it is in no
process, no log line, no store file and no record the API serves, while a run over HTTP applies
through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from lab import Lab, Topology
from lab.httpd import start_services, stop_services
from lab.nonroot import prepare_sudo_login
from reconciler.apply.executor import apply_plan
from reconciler.desired.models import Desired
from reconciler.facts.gather import gather_facts
from reconciler.plan.compile import managed_paths
from reconciler.server.store.database import DB_FILENAME
from reconciler.transport.become import SUDOERS_PATH, WRAPPER_PATH
from reconciler.transport.ssh import SSHTransport
from tests.lab.executor_support import (
    desired_for,
    explain,
    filter_rules,
    make_plan,
    raw_state,
    ssh_blocking_step,
)
from tests.lab.rollout_support import cluster_toml, converge, settings_toml, write_repo
from tests.lab.server_support import ServeProcess
from tests.server.serve import git, pushing_repo

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="session")]

SHOAL = Path(sys.executable).with_name("shoal")
USER = "deploy"
HOSTS = ("lvs1", "lvs2", "web1", "web2", "client1")
WEIGHTS = {"web1": 1, "web2": 2}
LOGIN = f'\n[login]\nuser = "{USER}"\nbecome = "sudo"\n'
PASSWORD = "corr3ct horse-battery"


@dataclass
class SudoLab:
    lab: Lab
    repo: Path
    vip: str
    install: str  # what `shoal sudoers` printed (NOPASSWD)

    def write(self, arp_method: str | None = "sysctl", **hosts: str) -> Desired:
        """The repo with the cluster on `arp_method` (None: no cluster) and extra host keys."""
        cluster = None if arp_method is None else cluster_toml(self.vip, WEIGHTS, arp_method)
        return write_repo(self.lab, self.repo, cluster, settings_toml(verify=True) + LOGIN, hosts)


def shoal(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SHOAL), *args], capture_output=True, text=True, timeout=timeout)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def sudo_lab(
    session_token: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[SudoLab]:
    async with Lab.up(f"b{session_token}", Topology.build(2, 2, 1), ephemeral=True) as lab:
        repo = tmp_path_factory.mktemp("sudo") / "repo"
        vip = str(lab.host("lvs1").address).rsplit(".", 1)[0] + ".100"
        s = SudoLab(lab, repo, vip, "")
        s.write()
        printed = shoal("sudoers", str(repo))
        assert printed.returncode == 0, printed.stderr
        s.install = printed.stdout
        done = await prepare_sudo_login(lab, HOSTS, USER, s.install, refuse_root=True)
        for h in HOSTS:
            assert f"installed {WRAPPER_PATH} and {SUDOERS_PATH} on {h}" in done[h]
        await start_services(lab, [80])
        try:
            yield s
        finally:
            await stop_services(lab)


async def states(lab: Lab) -> dict[str, dict[str, str]]:
    return {h: await raw_state(lab, h) for h in HOSTS}


async def test_every_arp_method_converges_through_sudo_with_root_login_refused(
    sudo_lab: SudoLab,
) -> None:
    lab = sudo_lab.lab
    desired = sudo_lab.write("sysctl")
    async with SSHTransport(desired.inventory, desired.known_hosts, lab.client_key_path) as t:
        facts = await gather_facts(t, list(HOSTS), managed_paths(desired))
        # One round trip each, as without become: the facts script went through the wrapper.
        assert dict(t.channels_opened) == dict.fromkeys(HOSTS, 1)
    for h in HOSTS:
        login = facts[h].login.value
        assert login is not None, facts[h].login.unknown_reason
        assert (login.uid, login.user) == (0, "root")
        assert f"Accepted publickey for {USER} " in lab.sshd_log_path(h).read_text()
    first = shoal("apply", str(sudo_lab.repo), "--key", str(lab.client_key_path), "--yes",
                  "--json")  # fmt: skip
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    run = json.loads(first.stdout)["run"]
    assert run["ok"] and run["verification"]["ok"], run["comment"]
    for method in ("arptables", "nft-arp", "redirect"):
        result, after = await converge(lab, sudo_lab.write(method))
        assert result is not None and result.ok, (method, explain(result) if result else None)
        assert result.verification is not None and result.verification.ok, method
        assert after.empty, (method, [s.id for hp in after.hosts.values() for s in hp.steps])
    again = shoal("plan", str(sudo_lab.repo), "--key", str(lab.client_key_path), "--json")
    assert again.returncode == 0, again.stdout[-3000:]


async def test_an_injected_failure_rolls_every_host_back_byte_for_byte(sudo_lab: SudoLab) -> None:
    lab = sudo_lab.lab
    cleared, after = await converge(lab, sudo_lab.write(None))
    assert cleared is not None and cleared.ok, explain(cleared) if cleared else None
    assert after.empty
    before = await states(lab)
    desired = sudo_lab.write("sysctl")
    # web2's `systemctl enable` of the boot restore unit fails: its phase rolls back, and the
    # batch before it (web1) is rolled back by the controller.
    await lab.inject_failing_command("web2", "/usr/bin/systemctl", exit_code=4)
    try:
        result, _ = await converge(lab, desired)
    finally:
        await lab.clear_injections("web2")
    assert result is not None and not result.ok
    assert {r.host for r in result.rollbacks} == {"web1", "web2"}, explain(result)
    assert all(r.proven for r in result.rollbacks), explain(result)
    assert await states(lab) == before


def as_deploy(desired: Desired, *hosts: str) -> Desired:
    inventory = desired.inventory
    changed = {
        name: h.model_copy(update={"user": USER, "become": "sudo"}) if name in hosts else h
        for name, h in inventory.hosts.items()
    }
    return desired.model_copy(
        update={"inventory": inventory.model_copy(update={"hosts": changed})}
    )


async def test_the_dead_man_timer_restores_the_host_as_root(sudo_lab: SudoLab) -> None:
    """A phase that blocks new SSH logins: the confirmation fails, the timer (started by the
    phase, as root, through sudo) undoes the iptables rule, which only root can do."""
    lab, host = sudo_lab.lab, "web1"
    filter_before = await filter_rules(lab, host)
    desired = as_deploy(
        desired_for(lab, lockout_timeout=5, command_timeout=5, connect_timeout=1), host
    )
    async with SSHTransport(
        desired.inventory, lab.known_hosts_path, lab.client_key_path, connect_timeout=1,
        command_timeout=5,
    ) as t:  # fmt: skip
        result = await apply_plan(make_plan({host: [ssh_blocking_step(host)]}), desired, t)
    assert not result.ok
    (rb,) = result.rollbacks
    assert rb.by == "timer" and rb.proven, explain(result)
    assert result.phases[0].lockout == "fired"
    assert await filter_rules(lab, host) == filter_before
    assert f"Accepted publickey for {USER} " in lab.sshd_log_path(host).read_text()


async def _reinstall(lab: Lab, install: str) -> None:
    await lab.exec("web2", ["sh"], input=install)


async def _sudoers(lab: Lab, text: str) -> None:
    await lab.exec("web2", ["sh", "-c", f"cat >{SUDOERS_PATH} && chmod 0440 {SUDOERS_PATH}"],
                   input=text)  # fmt: skip


Breakage = Callable[[SudoLab], Awaitable[None]]


async def _password_required(s: SudoLab) -> None:
    await _reinstall(s.lab, shoal("sudoers", str(s.repo), "--password-required").stdout)


async def _requiretty(s: SudoLab) -> None:
    tty = "/etc/sudoers.d/zz-tty"  # read after shoal's file: the last match wins
    await s.lab.exec("web2", ["sh", "-c", f"cat >{tty} && chmod 0440 {tty}"],
                     input=f"Defaults:{USER} requiretty\n")


async def _other_command(s: SudoLab) -> None:
    await _sudoers(s.lab, f"Defaults:{USER} !requiretty\n{USER} ALL=(root) NOPASSWD: /bin/true\n")


async def _no_sudo(s: SudoLab) -> None:
    # A file that is not executable over sudo, in web2's own mount namespace only.
    await s.lab.exec("web2", ["sh", "-c", ": >/run/not-sudo && chmod 0644 /run/not-sudo && "
                              "mount --bind /run/not-sudo /usr/bin/sudo"])  # fmt: skip


async def _no_wrapper(s: SudoLab) -> None:
    await s.lab.exec("web2", ["rm", WRAPPER_PATH])


async def _no_become(s: SudoLab) -> None:
    s.write("sysctl", web2='become = "none"')


async def _repair(s: SudoLab) -> None:
    lab = s.lab
    await lab.exec("web2", ["sh", "-c", "if grep -q ' /usr/bin/sudo ' /proc/self/mounts; then "
                            "umount /usr/bin/sudo; fi; rm -f /etc/sudoers.d/zz-tty"])  # fmt: skip
    await _reinstall(lab, s.install)
    s.write("sysctl")


REFUSALS: dict[str, tuple[Breakage, str]] = {
    # No rule of the user is NOPASSWD, so sudo will not even list its rules without one.
    "password-required": (_password_required, "sudo asks for a password before it says whether "
                          f"{WRAPPER_PATH} may run as root: no NOPASSWD rule allows it"),
    "requiretty": (_requiretty, f"add `Defaults:{USER} !requiretty`"),
    "rule-for-another-command": (_other_command, f"sudoers does not allow running {WRAPPER_PATH} "
                                 "as root"),
    "no-sudo": (_no_sudo, "sudo is not installed"),
    "no-wrapper": (_no_wrapper, f"{WRAPPER_PATH} is not installed"),
    "no-become": (_no_become, f"login user {USER} (uid "),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(REFUSALS))
async def test_missing_rights_stop_plan_and_apply_naming_host_user_and_what(
    sudo_lab: SudoLab, case: str
) -> None:
    lab = sudo_lab.lab
    sudo_lab.write("sysctl")
    before = await states(lab)
    breakage, names = REFUSALS[case]
    await breakage(sudo_lab)
    try:
        key = ("--key", str(lab.client_key_path))
        plan = shoal("plan", str(sudo_lab.repo), *key, "--json")
        assert plan.returncode == 1, plan.stdout[-3000:] + plan.stderr[-2000:]
        blocked = json.loads(plan.stdout)["summary"]["hosts_blocked"]
        assert list(blocked) == ["web2"], blocked
        assert blocked["web2"].startswith(f"web2: login user {USER} "), blocked
        assert names in blocked["web2"], blocked
        # The other hosts are planned (they have changes); the apply still stops them all.
        applied = shoal("apply", str(sudo_lab.repo), *key, "--yes", "--json")
        assert applied.returncode == 1, applied.stdout[-3000:] + applied.stderr[-2000:]
        run = json.loads(applied.stdout)["run"]
        assert not run["ok"] and blocked["web2"] in run["comment"], (run["comment"], run["errors"])
        assert await states(lab) == before
    finally:
        await _repair(sudo_lab)


@contextlib.contextmanager
def watching_processes(secret: bytes) -> Iterator[list[str]]:
    """Every process whose argv or environment holds `secret`, looked for until the block ends."""
    found: list[str] = []
    stop = threading.Event()

    def scan() -> None:
        while not stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                for part in ("cmdline", "environ"):
                    with contextlib.suppress(OSError):
                        if secret in Path(f"/proc/{pid}/{part}").read_bytes():
                            found.append(f"{pid} {part}")
            time.sleep(0.01)

    thread = threading.Thread(target=scan, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        stop.set()
        thread.join(10)


async def _with_password(s: SudoLab, tmp_path: Path) -> Path:
    """web2's sudoers asks deploy for PASSWORD; the 0600 file holding it."""
    # chpasswd reads the password on stdin: it is in no argv here either.
    await s.lab.exec("web2", ["chpasswd"], input=f"{USER}:{PASSWORD}\n")
    await _password_required(s)
    password_file = tmp_path / "sudo-password"
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    return password_file


async def test_a_password_from_a_file_is_fed_to_sudo_and_shown_nowhere(
    sudo_lab: SudoLab, tmp_path: Path
) -> None:
    lab = sudo_lab.lab
    password_file = await _with_password(sudo_lab, tmp_path)
    key = ("--key", str(lab.client_key_path))
    sudo_lab.write("sysctl")
    # The watcher sees what it looks for: a process with a canary in its argv is found.
    with watching_processes(b"canary-e3b0c442") as canary:
        subprocess.run(["sh", "-c", "sleep 0.5", "canary-e3b0c442"], check=True)
    assert canary, "the /proc watcher found nothing"
    try:
        with watching_processes(PASSWORD.encode()) as found:
            applied = shoal("apply", str(sudo_lab.repo), *key, "--yes", "--json",
                            "--become-password-file", str(password_file))  # fmt: skip
        assert applied.returncode == 0, applied.stdout[-4000:] + applied.stderr[-2000:]
        assert json.loads(applied.stdout)["run"]["ok"]
        assert found == []
        assert PASSWORD not in applied.stdout + applied.stderr
        synced = shoal("plan", str(sudo_lab.repo), *key, "--json",
                       "--become-password-file", str(password_file))  # fmt: skip
        assert synced.returncode == 0, synced.stdout[-3000:]
        # The same password from the environment; and a wrong one is named, not retried.
        env = {**os.environ, "SHOAL_BECOME_PASSWORD": PASSWORD}
        by_env = subprocess.run([str(SHOAL), "plan", str(sudo_lab.repo), *key, "--json"],
                                capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
        assert by_env.returncode == 0, by_env.stdout[-3000:]
        password_file.write_text("not the password\n")
        wrong = shoal("plan", str(sudo_lab.repo), *key, "--json",
                      "--become-password-file", str(password_file))  # fmt: skip
        assert wrong.returncode == 1, wrong.stdout[-3000:]
        blocked = json.loads(wrong.stdout)["summary"]["hosts_blocked"]
        assert "did not accept the password" in blocked["web2"], blocked
        assert "not the password" not in wrong.stdout + wrong.stderr
        password_file.chmod(0o644)
        loose = shoal("plan", str(sudo_lab.repo), *key, "--become-password-file",
                      str(password_file))  # fmt: skip
        assert loose.returncode == 2 and "lets others read the sudo password" in loose.stderr
    finally:
        await _repair(sudo_lab)


async def _run_over_http(serve: ServeProcess, sha: str) -> dict[str, Any]:
    """Approve the pending plan for `sha` and wait for its run to end: the run record."""
    deadline = time.monotonic() + 120
    while True:
        mine = [p for p in await serve.get("/plans?state=pending") if p["revision"] == sha]
        if mine:
            break
        assert time.monotonic() < deadline, serve.log.read_text()[-3000:]
        await asyncio.sleep(0.1)
    approved = await serve.http.post(f"/plans/{mine[0]['id']}/approve", json={"comment": "lab"},
                                     headers=serve.auth("approver"))  # fmt: skip
    assert approved.status_code == 202, approved.text
    while (run := await serve.get(f"/runs/{approved.json()['run_id']}"))["state"] == "applying":
        assert time.monotonic() < deadline, "the run did not end"
        await asyncio.sleep(0.2)
    assert isinstance(run, dict)
    return run


async def test_serve_feeds_the_password_to_sudo_and_logs_and_stores_it_nowhere(
    sudo_lab: SudoLab, tmp_path: Path
) -> None:
    lab = sudo_lab.lab
    password_file = await _with_password(sudo_lab, tmp_path)
    key = ("--key", str(lab.client_key_path))
    try:
        # A known start whatever ran before: sysctl applied; the server then moves to arptables.
        sudo_lab.write("sysctl")
        start = shoal("apply", str(sudo_lab.repo), *key, "--yes", "--json",
                      "--become-password-file", str(password_file))  # fmt: skip
        assert start.returncode == 0, start.stdout[-3000:] + start.stderr[-2000:]
        bare, work = pushing_repo(tmp_path, "sudo-lab")
        sudo_lab.write("arptables")
        shutil.copytree(sudo_lab.repo, work, dirs_exist_ok=True)
        # A person approves over HTTP here, as a site would, rather than the lab's auto policy.
        settings = work / "shoal.toml"
        manual = settings.read_text().replace('approval = "auto"', 'approval = "manual"')
        settings.write_text(manual)
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", "arptables through sudo with a password", cwd=work)
        git("push", "-q", "origin", "main", cwd=work)
        sha = git("rev-parse", "HEAD", cwd=work)
        serve = ServeProcess(lab, tmp_path, bare)
        serve.argv += ["--become-password-file", str(password_file)]
        try:
            with watching_processes(PASSWORD.encode()) as found:
                await serve.start()
                run = await _run_over_http(serve, sha)
                assert run["state"] == "applied" and run["ok"], run
                assert run["verification"]["ok"], run["verification"]
                web2 = (await lab.exec("web2", ["arptables-save"])).stdout
                assert sudo_lab.vip in web2, web2
                # Every record the server keeps, as served.
                paths = ("/plans", f"/runs/{run['id']}", "/audit", "/clusters")
                served = json.dumps([await serve.get(p) for p in paths])
            assert found == []
            assert sha in served and PASSWORD not in served
        finally:
            await serve.stop()
            await serve.http.aclose()
        # What it wrote: its log, and every file of its store (database, WAL, journal, backups).
        written = {p: p.read_bytes() for p in (serve.log, *serve.state.rglob("*")) if p.is_file()}
        assert serve.state / DB_FILENAME in written, sorted(written)
        assert serve.log.stat().st_size > 0
        leaked = [str(p) for p, data in written.items() if PASSWORD.encode() in data]
        assert leaked == []
    finally:
        await _repair(sudo_lab)
