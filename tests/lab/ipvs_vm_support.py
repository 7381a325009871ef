"""Shared by the IPVS VM director tests: a lab whose two directors are VMs with real IPVS.

`vm_dr_lab` (tests/lab/conftest.py) boots it once per test session: lvs1 and lvs2 are qemu VMs
running Debian's kernel (lab/vm.py), web1-web3 and client1 are namespace hosts running the lab
HTTP service. Each backend's module starts from `reset_directors`, so the modules do not depend
on each other's order; within a module a test starts from what the one before left
(`use_backend`), which saves a full apply through the emulated VMs per test. Everything else
goes through shoal's real path (rollout_support).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lab import Lab
from lab.vm import prerequisites as vm_prerequisites
from reconciler.apply.executor import apply_plan
from reconciler.apply.runresult import RunResult
from reconciler.desired.models import Desired
from reconciler.plan.steps import Plan
from reconciler.transport.ssh import SSHTransport
from states.keepalived import CONF_PATH, PID_DIR
from tests.conftest import in_ci, require_lab
from tests.lab.rollout_support import plan_and_facts, plan_for, settings_toml, write_repo

DIRECTORS = ("lvs1", "lvs2")
PORT = 80
DRAIN_TIMEOUT = 30  # seconds; a drain that waits for it is reported as timed out
# A new SSH connection to a VM costs a key exchange under CPU emulation: about a second on an
# idle machine, many on a busy one.
CONNECT_TIMEOUT = 60
SETTINGS = f"""\
approval = "auto"

[apply]
batch_size = 3
lockout_timeout = 20
drain_timeout = {DRAIN_TIMEOUT}

[verify]
clients = ["client1"]
requests_per_server = 5
timeout = 2.0
"""

# Test-side reset of a VM director (never shoal's way: the VMs are the tests' own): stop the
# keepalived shoal started (by its pid file), empty IPVS, drop the VIPs (.100-.199 and
# ::100-::199) and shoal's files, so the next module plans from a clean director.
_RESET = f"""set -u
p=$(cat {PID_DIR}/keepalived.pid 2>/dev/null) && kill "$p" 2>/dev/null
i=0; while [ -n "${{p:-}}" ] && kill -0 "$p" 2>/dev/null && [ $i -lt 100 ]; do
  sleep 0.1; i=$((i + 1)); done
ipvsadm -C
for a in $(ip -o -4 addr show dev eth0 | awk '{{ print $4 }}'); do
  case ${{a%/*}} in *.1[0-9][0-9]) ip addr del "$a" dev eth0 ;; esac
done
for a in $(ip -o -6 addr show dev eth0 | awk '{{ print $4 }}'); do
  case $a in *::1[0-9][0-9]/128) ip addr del "$a" dev eth0 ;; esac
done
rm -rf /var/lib/shoal {CONF_PATH} /usr/local/sbin/shoal-restore
exit 0
"""


# The marks of every module testing the VM directors.
VM_TEST_MARKS = [
    pytest.mark.lab,
    pytest.mark.asyncio(loop_scope="session"),
    # The VMs run under CPU emulation on a shared machine: generous, but bounded.
    pytest.mark.timeout(600),
]


def skip_module_unless_wanted() -> None:
    """Called at a VM test module's top: SHOAL_VM_TESTS=0 leaves it out at collection (never a
    skipped lab test under CI=true)."""
    if not vm_tests_wanted():
        pytest.skip("SHOAL_VM_TESTS=0: VM director tests left out", allow_module_level=True)


def vm_tests_wanted() -> bool:
    """SHOAL_VM_TESTS=0 leaves the VM modules out (a collection-time skip, as test_vm_director)."""
    return os.environ.get("SHOAL_VM_TESTS", "1") != "0"


def require_vm() -> None:
    """Skip (locally) or fail (CI) when this machine cannot boot the VM directors."""
    require_lab()
    missing = vm_prerequisites()
    if not missing:
        return
    message = f"VM director prerequisites missing: {'; '.join(missing)}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: VM tests must run; scripts/setup.sh installs them)")
    pytest.skip(message)


@contextlib.asynccontextmanager
async def transport_for(lab: Lab, desired: Desired) -> AsyncIterator[SSHTransport]:
    """rollout_support's transport, with a connect timeout for emulated VMs."""
    async with SSHTransport(
        desired.inventory, desired.known_hosts, lab.client_key_path, connect_timeout=CONNECT_TIMEOUT
    ) as t:
        yield t


async def converge(lab: Lab, desired: Desired) -> tuple[RunResult | None, Plan]:
    """rollout_support.converge over `transport_for` above."""
    async with transport_for(lab, desired) as t:
        plan, facts = await plan_and_facts(desired, t)
        if plan.empty:
            return None, plan
        result = await apply_plan(plan, desired, t, facts=facts)
        return result, await plan_for(desired, t)


def cluster_toml(backend: str, vips: dict[str, str], weights: dict[str, int]) -> str:
    """One cluster `web`: lvs1 primary, lvs2 backup; each service (name -> VIP) on PORT."""
    head = f"""\
[cluster]
name = "web"
directors = ["lvs1", "lvs2"]
director = "{backend}"
arp_method = "sysctl"
"""
    servers = "".join(
        f'\n  [[service.real_server]]\n  host = "{h}"\n  weight = {w}\n' for h, w in weights.items()
    )
    services = "".join(
        f"""
[[service]]
name = "{name}"
vip = "{vip}"
port = {PORT}
protocol = "tcp"
scheduler = "wlc"
check = {{ type = "tcp", interval = 2 }}
{servers}"""
        for name, vip in vips.items()
    )
    return head + services


@dataclass
class VmDrLab:
    lab: Lab
    workdir: Path
    boot_seconds: float
    # The backend the directors were last converged to by a test; None after a reset.
    backend: str | None = None
    # Host -> login user for hosts shoal reaches through sudo (become = "sudo"), not as root.
    sudo_logins: dict[str, str] = field(default_factory=dict)

    def write_repo(self, dest: Path, cluster: str, settings: str) -> Desired:
        """rollout_support.write_repo, with `sudo_logins` in the inventory."""
        logins = {h: f'user = "{u}"\nbecome = "sudo"' for h, u in self.sudo_logins.items()}
        return write_repo(self.lab, dest, cluster, settings, logins)

    def vip(self, octet: int) -> str:
        return str(ipaddress.IPv4Network(self.lab.subnet)[octet])

    def vip6(self, n: int) -> str:
        """The lab ULA's `::n` (hex digits as written: 100 is `::100`)."""
        return str(ipaddress.IPv6Network(self.lab.subnet6).network_address + int(str(n), 16))

    def desired(
        self, backend: str, weights: dict[str, int], extra_vip: bool = False, verify: bool = True
    ) -> Desired:
        """The cluster repo; `verify=False` when the test measures the traffic itself."""
        vips = {"http": self.vip(100)}
        if extra_vip:
            vips["http2"] = self.vip(101)
        dest = self.workdir / f"repo-{secrets.token_hex(4)}"
        settings = SETTINGS if verify else SETTINGS.replace("[verify]", "[verify]\nenabled = false")
        return self.write_repo(dest, cluster_toml(backend, vips, weights), settings)

    def services_desired(self, backend: str, octets: list[int], weights: dict[str, int]) -> Desired:
        """One service per VIP octet (http, http2, ...), without the verification phase: the
        tests using it check the tables and traffic themselves."""
        names = ["http", *(f"http{n}" for n in range(2, len(octets) + 1))]
        vips = {name: self.vip(o) for name, o in zip(names, octets, strict=True)}
        dest = self.workdir / f"{backend}-{'-'.join(map(str, octets))}-{secrets.token_hex(3)}"
        return self.write_repo(dest, cluster_toml(backend, vips, weights), settings_toml())

    async def ipvs_save(self, host: str) -> str:
        return str((await self.lab.exec(host, ["ipvsadm", "-Sn"])).stdout)

    async def addresses(self, host: str) -> str:
        return str((await self.lab.exec(host, ["ip", "-o", "-4", "addr", "show"])).stdout)

    async def reset_directors(self) -> None:
        await asyncio.gather(*(self.lab.exec(h, ["sh", "-c", _RESET]) for h in DIRECTORS))
        self.backend = None

    async def use_backend(self, backend: str) -> None:
        """Start from what the previous test of the same backend left (the tests of a module
        run in order and each converges to its own start); clean directors otherwise."""
        if self.backend != backend:
            await self.reset_directors()
            self.backend = backend

    async def holders(self, vip: str) -> list[str]:
        """The directors holding `vip` on an interface (IPv4 /32 or IPv6 /128)."""
        family, held = ("-6", f" {vip}/128 ") if ":" in vip else ("-4", f" {vip}/32 ")
        out = []
        for h in DIRECTORS:
            if held in (await self.lab.exec(h, ["ip", "-o", family, "addr", "show"])).stdout:
                out.append(h)
        return out

    async def wait_holders(self, vip: str, want: list[str], seconds: float = 20.0) -> None:
        give_up = time.monotonic() + seconds
        while (now := await self.holders(vip)) != want:
            if time.monotonic() > give_up:
                pytest.fail(f"VIP {vip} held by {now}, expected {want}")
            await asyncio.sleep(0.2)
