"""`Lab`: real Linux hosts on this machine, joined by a bridge, each running OpenSSH's sshd.

Each host has its own network, UTS, mount and pid namespaces; /etc, /var/lib, /run, /var/log,
/root and /usr/local are overlays private to it and /tmp is its own tmpfs, so a file, sysctl,
address, firewall rule or process on one host is not on another. The controller (this process,
tests, `shoal serve`) reaches hosts over SSH from .254 on the bridge; `exec` runs a command
inside a host directly, for test setup and inspection only.

A topology host of kind `vm` is a virtual machine instead (lab/vm.py: its own kernel, e.g. one
with IPVS), booted with the other hosts, its tap on the bridge in place of a veth. `exec` reaches
it over SSH (strict host key, one shared master connection per VM), since it has no namespaces
here to enter.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Coroutine, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from lab import holder as holders
from lab import inject, network, proc, sshfiles
from lab import vm as vms
from lab.naming import (
    MARKER_ENV,
    bridge_name,
    check_lab_id,
    lab_dir,
    mac_address,
    marker_value,
    netns_name,
    veth_name,
)
from lab.state import (
    HostRecord,
    LabState,
    all_lab_ids,
    load_state,
    machine_lock,
    process_start_time,
    save_state,
)
from lab.teardown import TeardownReport, destroy_lab
from lab.topology import CONTROLLER_OCTET, HostKind, Role, Topology

# Hosts started at once: enough to overlap process start-up, few enough for 2 cores.
START_CONCURRENCY = 16
FIXTURE_SUBNET = "10.77.0."


class LabError(RuntimeError):
    pass


class LabHost(BaseModel):
    """One lab host as tests and the inventory see it."""

    model_config = ConfigDict(frozen=True)

    name: str
    address: str
    role: Role
    address6: str = ""  # the host's address in the lab's ULA /64, beside `address`
    interface: str = "eth0"
    mac: str
    veth: str  # bridge-side end of the host's link (set_link switches it); a VM's tap
    netns: str  # `ip netns exec <netns> ...` works for debugging ("" for a VM)
    init_pid: int  # the host's PID 1 as the machine sees it (0 for a VM)
    holder_pid: int  # `unshare`, the init's parent in the machine's pid namespace
    sshd_pid: int
    kind: HostKind = "netns"
    qemu_pid: int = 0  # a VM's qemu process


def prerequisites() -> list[str]:
    """What this machine lacks to run a lab (empty when it can)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    for tool in ("ip", "unshare", "nsenter", "ssh-keygen", "mountpoint"):
        if shutil.which(tool, path=proc.BASE_ENV["PATH"]) is None:
            missing.append(tool)
    if not os.access("/usr/sbin/sshd", os.X_OK):
        missing.append("/usr/sbin/sshd")
    return missing


class Lab:
    """A running lab. Get one from `Lab.up(...)` (async context manager), `await Lab.create(...)`
    or `Lab.attach(lab_id)`."""

    def __init__(self, state: LabState) -> None:
        self._state = state
        self._holders: list[asyncio.subprocess.Process] = []
        self.lab_id = state.lab_id
        self.subnet = state.subnet
        self.subnet6 = state.subnet6
        net = ipaddress.IPv4Network(state.subnet)
        self.controller_address = str(net[CONTROLLER_OCTET])
        self.bridge = state.bridge
        self.state_dir = lab_dir(state.lab_id)
        self.known_hosts_path = self.state_dir / sshfiles.KNOWN_HOSTS
        self.client_key_path = self.state_dir / sshfiles.CLIENT_KEY
        self.hosts: dict[str, LabHost] = {
            h.name: LabHost(
                name=h.name,
                address=h.address,
                address6=h.address6,
                role=h.role,
                mac=h.mac,
                veth=h.veth,
                netns=h.netns,
                init_pid=h.init_pid,
                holder_pid=h.holder_pid,
                sshd_pid=h.sshd_pid,
                kind=h.kind,
                qemu_pid=h.qemu_pid,
            )
            for h in state.hosts
        }
        # VMs this process booted, and their shared SSH connections (Lab.create fills these).
        self._vms: dict[str, vms.VmHost] = {}
        self._ssh_masters: dict[str, vms.SshMaster] = {}

    # --- life cycle -------------------------------------------------------------------------

    @classmethod
    @contextlib.asynccontextmanager
    async def up(
        cls,
        lab_id: str,
        topology: Topology | None = None,
        *,
        sshd_debug: bool = False,
        ephemeral: bool = False,
    ) -> AsyncIterator[Lab]:
        """Bring a lab up for the `async with` block and remove it afterwards."""
        lab = await cls.create(lab_id, topology, sshd_debug=sshd_debug, ephemeral=ephemeral)
        try:
            yield lab
        finally:
            await lab.down()

    @classmethod
    async def create(
        cls,
        lab_id: str,
        topology: Topology | None = None,
        *,
        sshd_debug: bool = False,
        ephemeral: bool = False,
    ) -> Lab:
        """Bring a lab up (first removing what a crashed run of the same id left behind)."""
        check_lab_id(lab_id)
        missing = prerequisites()
        if missing:
            raise LabError(f"cannot run a lab here, missing: {', '.join(missing)}")
        topology = topology or Topology.default()
        await destroy_lab(lab_id)
        try:
            return await cls._create(lab_id, topology, sshd_debug, ephemeral)
        except BaseException:
            await destroy_lab(lab_id)
            raise

    @classmethod
    async def _create(
        cls, lab_id: str, topology: Topology, sshd_debug: bool, ephemeral: bool
    ) -> Lab:
        directory = lab_dir(lab_id)
        async with _locked():
            taken = []
            for other in all_lab_ids():
                with contextlib.suppress(ValueError):
                    if (s := load_state(other)) is not None and other != lab_id:
                        taken.append(s.subnet)
            index = await network.allocate_subnet(lab_id, taken)
            net = network.subnet_of(index)
            directory.mkdir(mode=0o700, parents=True)
            records = [
                HostRecord(
                    name=h.name,
                    role=h.role,
                    octet=h.octet,
                    address=str(net[h.octet]),
                    address6=str(network.address6_of(index, h.octet)),
                    mac=mac_address(index, h.octet),
                    veth=veth_name(lab_id, h.octet),
                    netns=netns_name(lab_id, h.name) if h.kind == "netns" else "",
                    kind=h.kind,
                )
                for h in topology.hosts
            ]
            state = LabState(
                lab_id=lab_id,
                subnet=str(net),
                subnet6=str(network.subnet6_of(index)),
                bridge=bridge_name(lab_id),
                ephemeral=ephemeral,
                owner_pid=os.getpid(),
                owner_start=process_start_time(os.getpid()),
                sshd_debug=sshd_debug,
                hosts=records,
            )
            save_state(state)  # the subnet is taken from here on
            await network.create_bridge(lab_id, index)

        host_dirs = {h.name: directory / "hosts" / h.name for h in records}
        for h in records:
            host_dirs[h.name].mkdir(parents=True)
            if h.kind == "netns":
                holders.prepare_host_dir(host_dirs[h.name])
        netns_records = [h for h in records if h.kind == "netns"]
        vm_records = [h for h in records if h.kind == "vm"]
        await sshfiles.generate_keys(directory, host_dirs, lab_id)
        for name, d in host_dirs.items():
            (d / "sshd_config").write_text(sshfiles.sshd_config(name, lab_id, d, debug=sshd_debug))
        (directory / "etc-hosts").write_text(
            sshfiles.etc_hosts([(h.address, h.name) for h in records])
        )

        limit = asyncio.Semaphore(START_CONCURRENCY)

        async def start(h: HostRecord) -> holders.Holder:
            async with limit:
                return await holders.start_holder(
                    lab_id,
                    h.name,
                    host_dirs[h.name],
                    directory,
                    f"{h.address}/24",
                    f"{h.address6}/{network.subnet6_of(index).prefixlen}",
                )

        # VMs boot (seconds) while the namespace hosts start and settle (a fraction of that).
        site = vms.VmSite(lab_id, directory, state.subnet, state.bridge)
        booting = [
            asyncio.ensure_future(vms.boot_vm(site, _vm_spec(topology, h), host_dirs[h.name]))
            for h in vm_records
        ]
        try:
            netns_hosts = await cls._start_netns_hosts(
                lab_id, index, netns_records, [start(h) for h in netns_records]
            )
        except BaseException:
            await _stop_vms(booting)
            raise
        booted = await asyncio.gather(*booting, return_exceptions=True)
        lab_vms = {r.name: r for r in booted if isinstance(r, vms.VmHost)}
        failures = [r for r in booted if isinstance(r, BaseException)]
        if failures:
            for one in lab_vms.values():
                await one.stop()
            raise failures[0]
        lab_holders = [one for one, _ in netns_hosts.values()]
        by_vm = {h.name: h.model_copy(update={"qemu_pid": lab_vms[h.name].pid}) for h in vm_records}
        by_name = {**{n: rec for n, (_, rec) in netns_hosts.items()}, **by_vm}
        state.hosts = [by_name[h.name] for h in records]
        entries = [
            (h.address, sshfiles.public_key(host_dirs[h.name] / sshfiles.HOST_KEY), h.name)
            for h in state.hosts
        ]
        (directory / sshfiles.KNOWN_HOSTS).write_text(sshfiles.known_hosts(entries))
        state.status = "up"
        save_state(state)
        lab = cls(state)
        lab._holders = [r.process for r in lab_holders]
        lab._vms = lab_vms
        await lab._start_ssh_masters()
        return lab

    @classmethod
    async def _start_netns_hosts(
        cls,
        lab_id: str,
        index: int,
        records: list[HostRecord],
        starts: list[Coroutine[Any, Any, holders.Holder]],
    ) -> dict[str, tuple[holders.Holder, HostRecord]]:
        """Start the namespace hosts, link them to the bridge, wait for their sshd."""
        started = await asyncio.gather(*starts, return_exceptions=True)
        lab_holders = [r for r in started if isinstance(r, holders.Holder)]
        failures = [r for r in started if isinstance(r, BaseException)]
        if failures:
            raise failures[0]  # create() removes the hosts that did start
        by_name = {r.name: r for r in lab_holders}
        if not records:
            return {}

        await network.add_veths(
            lab_id,
            index,
            [(h.veth, h.octet, by_name[h.name].init_pid, h.netns) for h in records],
        )

        async def finish(h: HostRecord) -> HostRecord:
            one = by_name[h.name]
            await one.send("go")
            await one.expect("started", 30)
            sshd_pid = await holders.wait_sshd(one, 30)
            namespaces = {
                k: ino for k in proc.NS_KINDS if (ino := proc.ns_inode(one.init_pid, k)) is not None
            }
            return h.model_copy(
                update={
                    "holder_pid": one.process.pid,
                    "init_pid": one.init_pid,
                    "sshd_pid": sshd_pid,
                    "namespaces": namespaces,
                }
            )

        done = await asyncio.gather(*(finish(h) for h in records))
        return {h.name: (by_name[h.name], h) for h in done}

    async def _start_ssh_masters(self) -> None:
        for name in self._vms:
            master = vms.SshMaster(
                self.lab_id,
                name,
                self.hosts[name].address,
                self.known_hosts_path,
                self.client_key_path,
                self.host_dir(name) / "ssh-master",
            )
            self._ssh_masters[name] = master
            await master.start()

    @classmethod
    def attach(cls, lab_id: str) -> Lab:
        """The running lab `lab_id` (started by this or another process)."""
        state = load_state(check_lab_id(lab_id))
        if state is None or state.status != "up":
            raise LabError(f"lab {lab_id!r} is not up")
        for h in state.hosts:
            if proc.read_marker(h.main_pid()) != marker_value(lab_id, h.name):
                raise LabError(f"lab {lab_id!r}: host {h.name} is not running (try `up` again)")
        return cls(state)

    async def down(self) -> TeardownReport:
        """Remove the lab: kill its processes (verified by pid), namespaces, links, state."""
        # Our own VMs and SSH masters first, by pid and reaped (teardown finds any others).
        for master in self._ssh_masters.values():
            await master.stop()
        for one in self._vms.values():
            await one.stop()
        report = await destroy_lab(self.lab_id)
        for p in self._holders:
            # Reap our own children, so no zombie is left behind.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(p.wait(), 5)
        return report

    # --- using the hosts ----------------------------------------------------------------------

    def host(self, name: str) -> LabHost:
        try:
            return self.hosts[name]
        except KeyError:
            raise LabError(f"lab {self.lab_id!r} has no host {name!r}") from None

    def nsenter_argv(self, host: str) -> list[str]:
        one = self.host(host)
        if one.kind != "netns":
            raise LabError(f"{host} is a {one.kind} host: it has no namespaces here to enter")
        return ["nsenter", f"--target={one.init_pid}", "--mount", "--uts", "--net", "--pid", "--"]

    def ssh_argv(self, host: str, argv: Sequence[str]) -> list[str]:
        """ssh argv running argv on a VM host (over its master connection when that is up)."""
        one = self.host(host)
        master = self._ssh_masters.get(host)
        return vms.ssh_argv(
            one.address,
            self.known_hosts_path,
            self.client_key_path,
            argv,
            control_path=master.control_path if master is not None else None,
        )

    async def exec(
        self,
        host: str,
        argv: Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float | None = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the host's namespaces (test setup and inspection, not the product);
        on a VM host, over SSH as root."""
        env = {**proc.BASE_ENV, "HOME": "/root", MARKER_ENV: marker_value(self.lab_id, host)}
        if self.host(host).kind == "vm":
            full = self.ssh_argv(host, argv)
        else:
            full = [*self.nsenter_argv(host), *argv]
        result = await proc.run(full, check=False, input=input, timeout=timeout, env=env)
        result.args = list(argv)
        if check and result.returncode != 0:
            raise proc.LabCommandError(result.returncode, list(argv), result.stdout, result.stderr)
        return result

    async def set_link(self, host: str, up: bool) -> None:
        """Make a host unreachable (its bridge port down) or reachable again."""
        await network.set_port(self.host(host).veth, up)

    async def inject_failing_command(
        self, host: str, path: str, exit_code: int = 1, hang: bool = False
    ) -> None:
        """Make `path` fail (or hang) on this host only, by a bind mount in its mount namespace."""
        await inject.inject_failing_command(self, host, path, exit_code=exit_code, hang=hang)

    async def clear_injections(self, host: str) -> None:
        await inject.clear_injections(self, host)

    def host_dir(self, host: str) -> Path:
        return self.state_dir / "hosts" / self.host(host).name

    def sshd_log_path(self, host: str) -> Path:
        """sshd's own log (VERBOSE): one `Connection from` line per connection."""
        return self.host_dir(host) / "sshd.log"

    # --- config for the controller ------------------------------------------------------------

    def inventory_toml(self) -> str:
        lines = [
            f"# Hosts of lab {self.lab_id!r} ({self.subnet}); written by the lab.",
            "# Host keys are pinned in known_hosts (by address).",
        ]
        for h in self.hosts.values():
            what = h.role.replace("_", " ") + (" (virtual machine)" if h.kind == "vm" else "")
            lines += [
                "",
                f"[hosts.{h.name}]  # {what}",
                f'address = "{h.address}"',
                f'address6 = "{h.address6}"',
                f'interface = "{h.interface}"',
            ]
        return "\n".join(lines) + "\n"

    def known_hosts_text(self) -> str:
        return self.known_hosts_path.read_text()

    def write_config_repo(self, src: Path, dest: Path) -> None:
        """Copy a config repo (without .git), with this lab's inventory.toml and known_hosts.

        Fixture repos are written for the demo lab's 10.77.0.0/24 and fd77:77:77::/64; in other
        labs every 10.77.0.N address and every address of that /64 in their .toml files is moved
        to this lab's subnets (same host part).
        """
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".git"), dirs_exist_ok=True)
        prefix = str(ipaddress.IPv4Network(self.subnet).network_address).rsplit(".", 1)[0] + "."
        if prefix != FIXTURE_SUBNET:
            pattern = re.compile(r"(?<![\d.])" + re.escape(FIXTURE_SUBNET) + r"(?=\d)")
            for toml in dest.rglob("*.toml"):
                text = _move_fixture_ipv6(toml.read_text(), self.subnet6)
                toml.write_text(pattern.sub(prefix, text))
        (dest / "inventory.toml").write_text(self.inventory_toml())
        (dest / "known_hosts").write_text(self.known_hosts_text())


def _move_fixture_ipv6(text: str, subnet6: str) -> str:
    """Every address of the fixture's /64 in `text` moved into `subnet6`, host part kept."""
    fixture, target = network.subnet6_of(0), ipaddress.IPv6Network(subnet6)

    def move(m: re.Match[str]) -> str:
        try:
            addr = ipaddress.IPv6Address(m.group(0))
        except ValueError:
            return m.group(0)
        if addr not in fixture:
            return m.group(0)
        host_part = int(addr) - int(fixture.network_address)
        return str(target.network_address + host_part)

    return _IPV6_LITERAL_RE.sub(move, text)


# Candidates only: runs of hex digits holding at least two colons. The move parses each and
# leaves whatever is not an address of the fixture's /64 alone.
_IPV6_LITERAL_RE = re.compile(
    r"(?<![0-9A-Fa-f:.])[0-9A-Fa-f]*(?::[0-9A-Fa-f]*){2,7}(?![0-9A-Fa-f:.])"
)


def _vm_spec(topology: Topology, h: HostRecord) -> vms.VmSpec:
    spec = next(s for s in topology.hosts if s.name == h.name)
    return vms.VmSpec(h.name, h.octet, h.role, spec.memory_mib, spec.cpus)


async def _stop_vms(booting: Sequence[asyncio.Future[vms.VmHost]]) -> None:
    """Stop VMs still booting or booted when the rest of the lab failed to start."""
    for task in booting:
        task.cancel()
    for one in await asyncio.gather(*booting, return_exceptions=True):
        if isinstance(one, vms.VmHost):
            await one.stop()


@contextlib.asynccontextmanager
async def _locked() -> AsyncIterator[None]:
    # flock blocks: take it in a thread so other labs' event loops keep going meanwhile.
    cm = machine_lock()
    await asyncio.to_thread(cm.__enter__)
    try:
        yield
    finally:
        cm.__exit__(None, None, None)


def owner_gone(state: LabState) -> bool:
    """Whether the process that made an ephemeral lab has exited (pid reuse checked)."""
    return process_start_time(state.owner_pid) != state.owner_start or not state.owner_start


async def reap_abandoned_labs() -> list[str]:
    """Remove ephemeral (test) labs whose owner process is gone, e.g. a killed pytest run."""
    removed = []
    for lab_id in all_lab_ids():
        try:
            state = load_state(lab_id)
        except ValueError:
            continue
        if state is not None and state.ephemeral and owner_gone(state):
            await destroy_lab(lab_id)
            removed.append(lab_id)
    return removed
