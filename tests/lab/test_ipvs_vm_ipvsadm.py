"""The `ipvsadm` director backend on two VM directors with real IPVS (issue 8).

lvs1 (primary, holds the VIP) and lvs2 (backup) are qemu VMs booted once per session
(`vm_dr_lab`); the tests run in order, each starting from what the one before left.

1. shoal plans from their live `ipvsadm -Sn` (leaving a service it does not own alone, and
   planning `-e` for a weight changed by hand), applies -A and -a at weight 0 then -e, and
   verifies with client traffic through the real IPVS in DR mode (ipvs_vm_scenarios.py).
2. Under client load, web3 joins and then is drained and removed: no request fails.
3. An injected failure after IPVS changes, rolled back byte for byte: from one service, a second
   one (VIP .101) is applied. On lvs1 (the primary, the last phase) `ipvsadm -A`, `-a` and `-e`
   succeed and then `ip addr add` of the new VIP fails (ipvs_vm_inject.py). What the executor
   promises (reconciler/apply/executor.py): the failed host phase restores itself and the restore is
   proven against its snapshot and facts; phases that finished before it on other hosts (the
   real servers' prepare, the backup lvs2) stay applied, since they are not real-server batches
   of the failed phase; nothing after it runs and no verification runs. So lvs1's
   `ipvsadm -Sn` and addresses must be byte for byte what they were, lvs2 keeps the new service,
   and a plain re-apply of the old config converges everything back.
4. A reboot simulation: the directors' IPVS tables, VIPs and ip_vs module gone, shoal-restore
   (the boot unit's script) brings them back, IPVS sysctls included, and the plan is empty.

All of it with lvs1 reached the way issue 15's sites do (`lvs1_under_sudo`): its sshd refuses
root (`PermitRootLogin no`), and the inventory logs in as `deploy` with become = "sudo", the
wrapper and sudoers installed from what `shoal sudoers --host lvs1` printed. lvs2 stays a root
login, so each plan also compares the two: the facts gather is one channel on either. No VM is
booted for this: the session's lvs1 is switched, and switched back for the modules after it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from lab import proc
from lab import vm as vms
from reconciler.apply.executor import apply_plan
from reconciler.desired.models import Desired
from reconciler.plan.compile_director import IPVS_SYSCTLS
from reconciler.plan.persistence import RESTORE_SCRIPT
from tests.lab import ipvs_vm_dual_stack
from tests.lab import ipvs_vm_scenarios as scenarios
from tests.lab.ipvs_vm_inject import clear_failure, inject_failure_when
from tests.lab.ipvs_vm_support import (
    DIRECTORS,
    VM_TEST_MARKS,
    VmDrLab,
    cluster_toml,
    skip_module_unless_wanted,
    transport_for,
)
from tests.lab.rollout_support import explain, pending, plan_and_facts, plan_for, settings_toml

pytestmark = VM_TEST_MARKS
skip_module_unless_wanted()

BACKEND = "ipvsadm"
SUDO_HOST = "lvs1"
USER = "deploy"
SHOAL = Path(sys.executable).with_name("shoal")
# As in test_facts_nonroot_lab: no home on the machine's shared root (the guest's writes stay in
# its tmpfs overlay anyway), an unlocked password field (sshd without PAM refuses a locked
# account even for a key), and the lab's authorized keys readable by the user (sshd reads them
# as the user; the file holds public keys only).
ADD_USER = (
    f"id {USER} >/dev/null 2>&1 || useradd --no-create-home --home-dir /var/lib/{USER} "
    f"--shell /bin/sh {USER}; usermod -p '*' {USER} && chmod 0644 /etc/shoal-lab/authorized_keys"
)
# The guest's sshd reads the lab's sshd_config (under /var/tmp/shoal-lab, which the guest sees
# through its overlay: the edit stays in the guest) and re-executes itself with it on SIGHUP.
_ROOT_LOGIN = """set -eu
sed -i "s/^PermitRootLogin .*/PermitRootLogin $1/" "$2"
grep -qx "PermitRootLogin $1" "$2"
kill -HUP "$(cat /run/sshd.pid)"
"""


def _login_argv(vm: VmDrLab, user: str) -> list[str]:
    """A new SSH connection (no master) to lvs1 as `user`, running `id -un`."""
    lab = vm.lab
    argv = vms.ssh_argv(
        lab.host(SUDO_HOST).address, lab.known_hosts_path, lab.client_key_path, ["id", "-un"]
    )
    argv[argv.index("-l") + 1] = user
    return argv


async def _logs_in(vm: VmDrLab, user: str) -> tuple[bool, str]:
    result = await proc.run(_login_argv(vm, user), check=False, timeout=90)
    return result.returncode == 0 and result.stdout.strip() == user, result.stderr.strip()


# How many root logins lvs1's sshd had accepted when root logins were refused (the boot's
# readiness check, the lab's master): none may be added after.
_ROOT_LOGINS_AT_SWITCH: dict[str, int] = {}


async def _sshd_log(vm: VmDrLab) -> str:
    return str((await vm.lab.exec(SUDO_HOST, ["cat", "/var/log/sshd.log"])).stdout)


async def _accepted_root_logins(vm: VmDrLab) -> int:
    return (await _sshd_log(vm)).count("Accepted publickey for root ")


async def _set_root_login(vm: VmDrLab, value: str) -> None:
    config = str(vm.lab.host_dir(SUDO_HOST) / "sshd_config")  # the path the guest's sshd reads
    await vm.lab.exec(SUDO_HOST, ["sh", "-c", _ROOT_LOGIN, "sh", value, config])


@pytest_asyncio.fixture(loop_scope="session", scope="module", autouse=True)
async def lvs1_under_sudo(vm_dr_lab: VmDrLab) -> AsyncIterator[None]:
    """lvs1 as a hardened site has it: root cannot log in, shoal logs in as deploy with sudo.

    Test-side root access (lab.exec, the injections, the resets) keeps working because it rides
    on the lab's SSH master to the guest, opened as root when the lab came up: a running sshd
    session is not subject to a config reloaded after it authenticated. That costs nothing, where
    a second root-only sshd would need its own port in the lab's hosts; the master is checked
    below, so a lab without it fails here and not in a confusing later step.
    """
    vm, lab = vm_dr_lab, vm_dr_lab.lab
    await vm.use_backend(BACKEND)
    await lab.exec(SUDO_HOST, ["sh", "-c", ADD_USER])
    vm.sudo_logins = {SUDO_HOST: USER}
    repo = vm.workdir / "sudoers-repo"
    vm.write_repo(repo, cluster_toml(BACKEND, {"http": vm.vip(100)}, WEIGHTS), settings_toml())
    printed = subprocess.run(
        [str(SHOAL), "sudoers", str(repo), "--host", SUDO_HOST],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    installed = await lab.exec(SUDO_HOST, ["sh", "-s"], input=printed)
    assert f"installed /usr/local/libexec/shoal-run and /etc/sudoers.d/shoal on {SUDO_HOST}" in (
        installed.stdout
    ), installed
    await _set_root_login(vm, "no")
    try:
        assert (await lab.exec(SUDO_HOST, ["id", "-un"])).stdout.strip() == "root"
        _ROOT_LOGINS_AT_SWITCH[SUDO_HOST] = await _accepted_root_logins(vm)
        root, why = await _logs_in(vm, "root")
        assert not root and "Permission denied" in why, why
        deploy, why = await _logs_in(vm, USER)
        assert deploy, why
        yield
    finally:
        vm.sudo_logins = {}
        await _set_root_login(vm, "prohibit-password")


async def test_plan_from_live_tables_apply_and_verify(vm_dr_lab: VmDrLab) -> None:
    await scenarios.apply_and_verify(vm_dr_lab, BACKEND)


async def test_join_then_drain_and_remove_under_load_lose_nothing(vm_dr_lab: VmDrLab) -> None:
    await scenarios.join_drain_and_remove_under_load(vm_dr_lab, BACKEND)


WEIGHTS = {"web1": 1, "web2": 2}
IP = "/usr/sbin/ip"  # `ip` on the guest (the shared root is merged-/usr Debian: /sbin -> usr/sbin)


def _desired(vm: VmDrLab, octets: list[int]) -> Desired:
    return vm.services_desired(BACKEND, octets, WEIGHTS)


async def test_failed_vip_add_after_ipvs_changes_is_rolled_back_byte_for_byte(
    vm_dr_lab: VmDrLab,
) -> None:
    vm, lab = vm_dr_lab, vm_dr_lab.lab
    await vm.use_backend(BACKEND)
    one = _desired(vm, [100])  # what the previous test left: nothing to do then
    assert one.inventory.hosts[SUDO_HOST].become == "sudo"
    assert one.inventory.hosts[SUDO_HOST].user == USER
    async with transport_for(lab, one) as t:
        plan, facts = await plan_and_facts(one, t)
        # Through sudo as without: the facts gather is one connection and one channel.
        assert t.channels_opened[SUDO_HOST] == t.channels_opened["lvs2"] == 1, t.channels_opened
        assert t.connections_opened[SUDO_HOST] == 1, t.connections_opened
        if not plan.empty:
            result = await apply_plan(plan, one, t, facts=facts)
            assert result.ok, explain(result)
        assert (await plan_for(one, t)).empty
    before = {h: (await vm.ipvs_save(h), await vm.addresses(h)) for h in ("lvs1", "lvs2")}
    new_vip = vm.vip(101)

    two = _desired(vm, [100, 101])
    async with transport_for(lab, two) as t:
        plan, facts = await plan_and_facts(two, t)
        await inject_failure_when(lab, "lvs1", IP, f" add {new_vip}/32 ")
        try:
            result = await apply_plan(plan, two, t, facts=facts)
        finally:
            await clear_failure(lab, "lvs1", IP)

    assert not result.ok, explain(result)
    failed = [s for s in result.steps() if s.result is False]
    assert [(s.host, s.function) for s in failed] == [("lvs1", "addr.present")], explain(result)
    assert "injected failure" in failed[0].output, explain(result)
    assert [(e.kind, e.host) for e in result.errors] == [("ApplyError", "lvs1")], explain(result)
    assert result.verification is None, explain(result)
    # lvs1 changed its IPVS table before the failure, and exactly that was undone and proven.
    lvs1_done = [s for s in result.steps() if s.host == "lvs1" and s.result]
    assert {s.function for s in lvs1_done} >= {
        "ipvs.service_present",
        "ipvs.real_server_present",
    }, explain(result)
    assert all(s.rolled_back for s in lvs1_done), explain(result)
    assert [(rb.host, rb.phase, rb.by, rb.proven) for rb in result.rollbacks] == [
        ("lvs1", "director_primary", "phase", True)
    ], explain(result)
    assert await vm.ipvs_save("lvs1") == before["lvs1"][0]
    assert await vm.addresses("lvs1") == before["lvs1"][1]
    # The phases that finished before stay applied (executor policy), and are reported so.
    others = [s for s in result.steps() if s.host != "lvs1" and s.result]
    assert {s.host for s in others} >= {"lvs2", "web1", "web2"}, explain(result)
    assert not any(s.rolled_back for s in others), explain(result)
    assert f"-A -t {new_vip}:80 -s wlc" in await vm.ipvs_save("lvs2")

    # A re-apply of the old config takes the rest back; lvs2's table is then as it was.
    async with transport_for(lab, one) as t:
        plan, facts = await plan_and_facts(one, t)
        result = await apply_plan(plan, one, t, facts=facts)
        assert result.ok, explain(result)
        after = await plan_for(one, t)
    assert after.empty, pending(after)
    assert await vm.ipvs_save("lvs2") == before["lvs2"][0]
    assert await vm.ipvs_save("lvs1") == before["lvs1"][0]
    # shoal's sessions on lvs1 were deploy's: sshd accepted no other login there but the lab's
    # master (root, opened at boot, before root logins were refused).
    assert await _accepted_root_logins(vm) == _ROOT_LOGINS_AT_SWITCH[SUDO_HOST]
    assert f"Accepted publickey for {USER} " in (await _sshd_log(vm))


# A reboot as far as the director's kernel state goes: no IPVS table, ip_vs unloaded (so its
# sysctls are back at their defaults), no VIP. Test-side, on the test's own VMs.
_REBOOT = """set -eu
ipvsadm -C
for m in $(awk '$1 ~ /^ip_vs_/ { print $1 }' /proc/modules); do modprobe -r "$m"; done
modprobe -r ip_vs
for a in $(ip -o -4 addr show dev eth0 | awk '{ print $4 }'); do
  case ${a%/*} in *.1[0-9][0-9]) ip addr del "$a" dev eth0 ;; esac
done
"""


async def test_boot_restore_brings_the_director_back(vm_dr_lab: VmDrLab) -> None:
    """shoal-restore (what shoal-restore.service runs at boot) on a director whose runtime state
    is gone: the IPVS table, the VIP and the IPVS sysctls come back, and the plan is empty."""
    vm, lab = vm_dr_lab, vm_dr_lab.lab
    await vm.use_backend(BACKEND)
    one = _desired(vm, [100])
    async with transport_for(lab, one) as t:
        plan, facts = await plan_and_facts(one, t)
        if not plan.empty:
            result = await apply_plan(plan, one, t, facts=facts)
            assert result.ok, explain(result)
    sysctls = ["sysctl", "-n", *IPVS_SYSCTLS]

    async def state(host: str) -> tuple[str, str, str]:
        values = (await lab.exec(host, sysctls)).stdout
        return await vm.ipvs_save(host), await vm.addresses(host), values

    before = {h: await state(h) for h in DIRECTORS}
    assert before["lvs1"][2].split() == ["1", "1"], before
    for host in DIRECTORS:
        await lab.exec(host, ["sh", "-c", _REBOOT])
        gone = await lab.exec(host, ["test", "-e", "/proc/sys/net/ipv4/vs"], check=False)
        assert gone.returncode != 0, f"{host}: ip_vs is still loaded"
        await lab.exec(host, [RESTORE_SCRIPT])
    assert {h: await state(h) for h in DIRECTORS} == before
    async with transport_for(lab, one) as t:
        after = await plan_for(one, t)
    assert after.empty, pending(after)


async def test_dual_stack_converges_rolls_out_and_rolls_back_one_director_heard(
    vm_dr_lab: VmDrLab,
) -> None:
    """Issue 16 on ipvsadm VM directors (tests/lab/ipvs_vm_dual_stack.py): six applies through
    the emulated VMs, about 3 minutes on a loaded machine (185 s measured on 2 shared cores)."""
    await ipvs_vm_dual_stack.dual_stack(vm_dr_lab, BACKEND)
