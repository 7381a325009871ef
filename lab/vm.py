"""A lab host that is a virtual machine: a real IPVS director, since this machine's kernel may
have no IPVS while Debian's kernel does.

qemu boots the kernel that scripts/setup.sh unpacked (see vm_image.py) with the machine's root
shared read-only over 9p under a tmpfs overlay (vm-initramfs.sh), then vm-guest-init.sh gives the
guest its hostname, lab addresses (IPv4 and the lab's ULA IPv6, lab/network.py) and sshd.
The guest's NIC is a tap device on the lab's bridge, named like a host's veth
(`sh-<id>-<octet>`), so the lab's `set_link` scheme and its teardown (which removes every
`sh-<id>-N` link) cover it too; qemu carries the lab's process marker, so `Lab.down` kills it
even when nobody called `stop`. The controller reaches the guest over SSH with the lab's client
key and this host's own host key, exactly like a namespace host.

qemu is called directly rather than through virtme-ng: the VM needs a handful of mounts and one
daemon, which two short scripts do, and this avoids a second virtual environment, virtme-ng's
udev dependency, its virtiofsd probing and its console plumbing.

Without KVM (SHOAL_VM_ACCEL=kvm opts in) qemu emulates the CPU: a boot takes seconds, and each
new SSH connection about one second of key exchange, so keep connections pooled (`SshMaster`).

Two ways in: a topology host of kind `vm`, which `Lab.up` boots with the other hosts (`boot_vm`),
or `start_vm`/`vm_host`, which add a VM next to a running lab's hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shlex
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from lab import network, proc, sshfiles, vm_image
from lab.naming import MARKER_ENV, mac_address, marker_value, veth_name
from lab.topology import HostSpec, Role, Topology

if TYPE_CHECKING:
    from lab.lab import Lab

DEFAULT_MEMORY_MIB = 512
DEFAULT_CPUS = 1
BOOT_TIMEOUT = 180.0
READY_LINE = "shoal-vm: ready "
QEMU_COMM = "qemu-system-x86"  # /proc/PID/comm is cut at 15 characters


class VmStartError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class VmSpec:
    """One VM host: its name, role and last address octet (as in a topology), and its size."""

    name: str
    octet: int
    role: Role = "director"
    memory_mib: int = DEFAULT_MEMORY_MIB
    cpus: int = DEFAULT_CPUS

    def __post_init__(self) -> None:
        if not 128 <= self.memory_mib <= 16384:
            raise ValueError(f"{self.name}: memory_mib {self.memory_mib} is outside 128..16384")
        if not 1 <= self.cpus <= 16:
            raise ValueError(f"{self.name}: cpus {self.cpus} is outside 1..16")


def prerequisites() -> list[str]:
    """What this machine lacks to boot a VM host (empty when it can)."""
    missing = []
    for check in (vm_image.qemu_binary, vm_image.kernel_release, vm_image.find_busybox):
        try:
            check()
        except vm_image.VmImageError as e:
            missing.append(str(e))
    if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        missing.append("/dev/net/tun")
    return missing


def guest_init_script() -> Path:
    return Path(str(resources.files("lab").joinpath("vm-guest-init.sh")))


def accelerator() -> list[str]:
    """qemu's accelerator options: TCG unless SHOAL_VM_ACCEL=kvm asks for hardware support.

    KVM is not the default because a /dev/kvm can exist yet be unusable for a stock kernel
    (nested or paravirtual backends): qemu then aborts or crawls.
    """
    if os.environ.get("SHOAL_VM_ACCEL", "tcg") == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    # A smaller translation cache keeps qemu's resident size near 300 MiB.
    return ["-accel", "tcg,tb-size=64", "-cpu", "max"]


@dataclass(frozen=True, slots=True)
class VmSite:
    """The lab a VM boots into, as plain values: `Lab.up` boots VMs before its `Lab` exists."""

    lab_id: str
    state_dir: Path
    subnet: str
    bridge: str

    @classmethod
    def of(cls, lab: Lab) -> VmSite:
        return cls(lab.lab_id, lab.state_dir, lab.subnet, lab.bridge)

    @property
    def client_key_path(self) -> Path:
        return self.state_dir / sshfiles.CLIENT_KEY

    @property
    def subnet_index(self) -> int:
        return int(str(ipaddress.IPv4Network(self.subnet).network_address).split(".")[2])


def ssh_argv(
    address: str,
    known_hosts: Path,
    client_key: Path,
    argv: Sequence[str],
    *,
    connect_timeout: int = 20,
    control_path: Path | None = None,
) -> list[str]:
    """OpenSSH client argv running `argv` as root on `address` (quoted for the remote shell).

    With `control_path`, the session rides on that master connection when it is up, and opens
    its own connection when it is not (ControlMaster=no falls back by itself).
    """
    mux = ["-o", "ControlMaster=no", "-o", f"ControlPath={control_path}"] if control_path else []
    return [
        "ssh",
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "IdentitiesOnly=yes",
        "-i",
        str(client_key),
        "-o",
        f"ConnectTimeout={connect_timeout}",
        *mux,
        "-l",
        "root",
        address,
        "--",
        shlex.join(argv),
    ]


class SshMaster:
    """One OpenSSH master connection to a VM host that later sessions share (ControlPath).

    Under CPU emulation each new connection costs about a second of key exchange; a session on
    the master costs a few milliseconds. The master is a plain child process (no ControlPersist
    fork, which would keep the caller's pipes open), carrying the lab's marker for teardown.
    """

    def __init__(
        self, lab_id: str, name: str, address: str, known_hosts: Path, client_key: Path, path: Path
    ) -> None:
        self.lab_id = lab_id
        self.name = name
        self.control_path = path
        self._argv = ssh_argv(address, known_hosts, client_key, [])
        # Options before the destination: a master, no command.
        at = self._argv.index("-l")
        self._argv[at:at] = [
            "-o", "ControlMaster=yes", "-o", f"ControlPath={path}", "-o", "ControlPersist=no",
            "-N",
        ]  # fmt: skip
        del self._argv[-2:]  # "--" and the (empty) remote command
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 30.0) -> bool:
        """Start the master; True once its socket accepts sessions (False: sessions connect on
        their own, which works too, only slower)."""
        self.control_path.unlink(missing_ok=True)
        self.process = await asyncio.create_subprocess_exec(
            *self._argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**proc.BASE_ENV, MARKER_ENV: marker_value(self.lab_id, self.name)},
            cwd="/",
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.returncode is None:
            if self.control_path.is_socket():
                return True
            await asyncio.sleep(0.05)
        return False

    async def stop(self) -> None:
        """Stop the master by its pid (it is our child: no reuse is possible before the wait)."""
        if self.process is None or self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


class VmHost:
    """A running VM host. Start one with `start_vm` or `vm_host` (context manager), or as a
    topology host of kind `vm` (`Lab.up` keeps those)."""

    def __init__(
        self,
        site: VmSite,
        spec: VmSpec,
        address: str,
        tap: str,
        host_dir: Path,
        process: asyncio.subprocess.Process,
    ) -> None:
        self.site = site
        # Set by start_vm: the lab this VM was added to (not one of its topology hosts).
        self.lab: Lab | None = None
        self.spec = spec
        self.name = spec.name
        self.role: Role = spec.role
        self.address = address
        self.address6 = str(network.address6_of(site.subnet_index, spec.octet))
        self.interface = "eth0"
        self.mac = mac_address(site.subnet_index, spec.octet)
        self.tap = tap
        self.host_dir = host_dir
        self.process = process
        self.pid = process.pid
        self.boot_seconds = 0.0
        self.console_path = host_dir / "console.log"
        # The lab's known_hosts plus this host: what a controller that manages it pins.
        self.known_hosts_path = host_dir / sshfiles.KNOWN_HOSTS
        self.client_key_path = site.client_key_path

    def known_hosts_line(self) -> str:
        key = sshfiles.public_key(self.host_dir / sshfiles.HOST_KEY)
        return sshfiles.known_hosts([(self.address, key, self.name)])

    def inventory_toml(self) -> str:
        """The lab's inventory.toml with this host added (a VM from `start_vm`)."""
        if self.lab is None:
            raise VmStartError(f"{self.name} is a topology host: use the lab's inventory_toml")
        return self.lab.inventory_toml() + "\n".join(
            [
                "",
                f"[hosts.{self.name}]  # {self.role.replace('_', ' ')} (virtual machine)",
                f'address = "{self.address}"',
                f'address6 = "{self.address6}"',
                f'interface = "{self.interface}"',
                "",
            ]
        )

    def console(self, tail: int = 4000) -> str:
        try:
            return self.console_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def ssh_argv(self, argv: Sequence[str], *, connect_timeout: int = 20) -> list[str]:
        """OpenSSH client argv running `argv` on the guest (quoted for the remote shell)."""
        return ssh_argv(
            self.address,
            self.known_hosts_path,
            self.client_key_path,
            argv,
            connect_timeout=connect_timeout,
        )

    async def exec(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float | None = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv on the guest over a new SSH connection (test setup and inspection)."""
        env = {
            **proc.BASE_ENV,
            "HOME": "/root",
            MARKER_ENV: marker_value(self.site.lab_id, self.name),
        }
        result = await proc.run(
            self.ssh_argv(argv), check=False, input=input, timeout=timeout, env=env
        )
        result.args = list(argv)
        if check and result.returncode != 0:
            raise proc.LabCommandError(result.returncode, list(argv), result.stdout, result.stderr)
        return result

    def running(self) -> bool:
        return self.process.returncode is None and proc.is_alive(self.pid)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop qemu (by its pid, after checking the pid is still this VM's) and remove the tap."""
        info = proc.proc_info(self.pid)
        ours = (
            info is not None
            and info.comm == QEMU_COMM
            and info.marker == marker_value(self.site.lab_id, self.name)
        )
        if ours and self.process.returncode is None:
            # qemu exits on SIGTERM at once; the guest keeps nothing worth a clean shutdown.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                assert info is not None
                proc.kill_verified([self.pid], {self.pid: info})
                await self.process.wait()
        elif self.process.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), timeout)
        await proc.run(["ip", "link", "del", self.tap], check=False)


def _check_spec(lab: Lab, spec: VmSpec) -> None:
    # The topology's own rules (name syntax, free octet outside the VIP range, unique names).
    existing = [
        HostSpec(h.name, h.role, int(h.address.rsplit(".", 1)[1])) for h in lab.hosts.values()
    ]
    Topology((*existing, HostSpec(spec.name, spec.role, spec.octet)))


def _env_file(values: dict[str, str]) -> str:
    # Sourced by the guest's bash: every value quoted.
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())


def _no_blank(path: Path) -> str:
    # Paths reach the kernel command line, which splits on spaces.
    text = str(path)
    if any(c.isspace() for c in text):
        raise VmStartError(f"path {text!r} holds white space; the kernel command line cannot")
    return text


async def _create_tap(site: VmSite, tap: str, mac: str) -> None:
    await proc.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"])
    Path(f"/proc/sys/net/ipv6/conf/{tap}/disable_ipv6").write_text("1")
    await proc.run(["ip", "link", "set", tap, "address", mac, "master", site.bridge, "up"])


def _qemu_argv(
    site: VmSite, spec: VmSpec, image: vm_image.BootImage, host_dir: Path, tap: str, guest_mac: str
) -> list[str]:
    cmdline = " ".join(
        [
            "console=ttyS0",
            "loglevel=4",
            # Any panic (or init dying) reboots, and -no-reboot turns that into qemu exiting.
            "panic=-1",
            "rdinit=/init",
            f"SHOAL_VM_INIT={_no_blank(guest_init_script())}",
            f"SHOAL_VM_ENV={_no_blank(host_dir / 'vm.env')}",
        ]
    )
    return [
        str(vm_image.qemu_binary()),
        "-name",
        f"shoal-{site.lab_id}-{spec.name}",
        "-machine",
        "pc",
        *accelerator(),
        "-m",
        f"{spec.memory_mib}M",
        "-smp",
        str(spec.cpus),
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        f"file:{host_dir / 'console.log'}",
        "-kernel",
        str(image.kernel),
        "-initrd",
        str(image.initramfs),
        "-append",
        cmdline,
        # The machine's root, read-only: the guest writes only into its own tmpfs overlay.
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-netdev",
        f"tap,id=lan,ifname={tap},script=no,downscript=no",
        # romfile= : no iPXE option ROM to load and run.
        "-device",
        f"virtio-net-pci,netdev=lan,mac={guest_mac},romfile=",
        "-device",
        "virtio-rng-pci",
    ]


async def start_vm(lab: Lab, spec: VmSpec, *, boot_timeout: float = BOOT_TIMEOUT) -> VmHost:
    """Boot a VM host on the lab's bridge; returns once it answers SSH with its pinned key."""
    _check_spec(lab, spec)
    host_dir = lab.state_dir / "hosts" / spec.name
    # Exists again when a VM of this name is started anew in the same lab.
    host_dir.mkdir(parents=True, exist_ok=True)
    await sshfiles.generate_key(host_dir / sshfiles.HOST_KEY, f"shoal-lab-{lab.lab_id}-{spec.name}")
    (host_dir / "sshd_config").write_text(
        sshfiles.sshd_config(spec.name, lab.lab_id, host_dir, debug=False)
    )
    vm = await boot_vm(
        VmSite.of(lab), spec, host_dir, lab.known_hosts_text(), boot_timeout=boot_timeout
    )
    vm.lab = lab
    return vm


async def boot_vm(
    site: VmSite,
    spec: VmSpec,
    host_dir: Path,
    known_hosts_text: str = "",
    *,
    boot_timeout: float = BOOT_TIMEOUT,
) -> VmHost:
    """Boot a VM whose host dir already holds its host key and sshd_config; returns once it
    answers SSH with that key (pinned in its own known_hosts: `known_hosts_text` plus itself)."""
    missing = prerequisites()
    if missing:
        raise VmStartError(f"cannot boot a VM host here: {'; '.join(missing)}")
    image = await asyncio.to_thread(vm_image.boot_image)
    net = ipaddress.IPv4Network(site.subnet)
    address = str(net[spec.octet])
    index = site.subnet_index
    env_path = host_dir / "vm.env"
    env_path.write_text(
        _env_file(
            {
                "VM_HOSTNAME": spec.name,
                "VM_ADDRESS": f"{address}/{net.prefixlen}",
                "VM_ADDRESS6": f"{network.address6_of(index, spec.octet)}/"
                f"{network.subnet6_of(index).prefixlen}",
                "VM_HOST_DIR": str(host_dir),
                "VM_SHARED_DIR": str(site.state_dir),
                "VM_MODULES_DIR": str(image.modules_dir),
            }
        )
    )
    tap = veth_name(site.lab_id, spec.octet)
    argv = _qemu_argv(site, spec, image, host_dir, tap, mac_address(index, spec.octet))
    (host_dir / "console.log").unlink(missing_ok=True)
    started = time.monotonic()
    try:
        await _create_tap(site, tap, mac_address(index, spec.octet, bridge_side=True))
        with (host_dir / "qemu.log").open("wb") as qemu_log:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=qemu_log,
                stderr=qemu_log,
                env={**proc.BASE_ENV, MARKER_ENV: marker_value(site.lab_id, spec.name)},
                cwd="/",
                start_new_session=True,
            )
    except BaseException:
        await proc.run(["ip", "link", "del", tap], check=False)
        raise
    vm = VmHost(site, spec, address, tap, host_dir, process)
    vm.known_hosts_path.write_text(known_hosts_text + vm.known_hosts_line())
    try:
        await _wait_ready(vm, started + boot_timeout)
    except BaseException:
        await vm.stop()
        raise
    vm.boot_seconds = time.monotonic() - started
    return vm


async def _wait_ready(vm: VmHost, deadline: float) -> None:
    """Wait for the guest init's ready line, then for a strict-host-key SSH login to work."""

    def failed(why: str) -> VmStartError:
        qemu_log = ""
        with contextlib.suppress(OSError):
            qemu_log = (vm.host_dir / "qemu.log").read_text(errors="replace")[-2000:]
        # The scripts' own lines first: a kernel's last words can be long.
        ours = [line for line in vm.console(tail=1 << 20).splitlines() if "shoal-vm" in line]
        return VmStartError(
            f"{vm.name}: {why}\n"
            + "\n".join(ours[-10:])
            + f"\n--- qemu:\n{qemu_log}\n--- console:\n{vm.console()}"
        )

    while READY_LINE not in vm.console(tail=1 << 20):
        if vm.process.returncode is not None:
            raise failed(f"qemu exited with status {vm.process.returncode} during boot")
        if time.monotonic() > deadline:
            raise failed("no ready line on the console in time")
        await asyncio.sleep(0.1)
    last = ""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise failed(f"SSH did not answer in time: {last}")
        try:
            result = await vm.exec(["hostname"], check=False, timeout=max(remaining, 1.0))
        except TimeoutError:
            continue
        if result.returncode == 0 and result.stdout.strip() == vm.name:
            return
        last = result.stderr.strip() or result.stdout.strip()
        if vm.process.returncode is not None:
            raise failed(f"qemu exited with status {vm.process.returncode}")
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def vm_host(
    lab: Lab, spec: VmSpec, *, boot_timeout: float = BOOT_TIMEOUT
) -> AsyncIterator[VmHost]:
    """A VM host for the `async with` block, stopped afterwards."""
    vm = await start_vm(lab, spec, boot_timeout=boot_timeout)
    try:
        yield vm
    finally:
        await vm.stop()
