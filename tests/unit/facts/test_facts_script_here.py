"""The facts script under this machine's real /bin/sh, each section against what is really here.

The script runs as a host gets it (through `gather_host_facts` and a FakeTransport whose host is
the local shell), from a login whose own PATH lacks the sbin directories, and its parsed facts
are compared with what Python reads from the same places: /proc/sys, /sys/class/net, the tools
on the script's PATH, a tree of files, pid files. The assignments at the script's head say what
a host is asked (the managed files, the tools, the ledger's path); pointing one of them at a
fixture is the only change to the text the hosts get.
Other sessions create network devices on this machine, so what differs between Python's reads
before and after the run is not held against the script.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from reconciler.facts.gather import gather_host_facts
from reconciler.facts.hostfacts import FileInfo, HostFacts, Ledger
from reconciler.facts.parse import split_sections
from reconciler.facts.script import (
    IPVS_SYSCTLS,
    LEDGER_PATH,
    SYSCTL_CONF_KEYS,
    TOOLS,
    build_facts_script,
)
from reconciler.transport.fake import Call, FakeTransport, Reply
from tests.unit.facts.support import sh_responder

# A non-root login's PATH on Debian: no sbin directories.
LOGIN_ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
NO_SUCH_TOOL = "shoal-no-such-tool"
SCRIPT_PATH = re.findall(r"^PATH=(\S+)$", build_facts_script(), re.MULTILINE)
PROC = Path("/proc/sys")
NET = Path("/sys/class/net")
TREE = ("app.conf", "empty", "dir", "link", "dangling", "missing")
KEEPALIVED_PIDS = (
    "/run/keepalived.pid",
    "/var/run/keepalived.pid",
    "/var/lib/shoal/keepalived.pid",
)

T = TypeVar("T")


@dataclass(frozen=True)
class Machine:
    """What Python reads from this machine, the way the script is meant to read it."""

    sysctls: dict[str, str]
    devices: frozenset[str]
    links: dict[str, tuple[str, bool]]  # name -> (MAC, UP flag), Ethernet and loopback only
    ipvs_loaded: bool
    keepalived_running: bool


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    # An interface that went away while it was read (a lab beside this test, in make test,
    # creates and deletes veths and taps): ENOENT, or ENODEV from a half-removed device.
    except OSError:
        return None


def _sysctls() -> dict[str, str]:
    out: dict[str, str] = {}
    forward = _read(PROC / "net/ipv4/ip_forward")
    if forward is not None:
        out["net.ipv4.ip_forward"] = forward
    for conf in sorted((PROC / "net/ipv4/conf").iterdir()):
        for key in SYSCTL_CONF_KEYS:
            value = _read(conf / key)
            if value is not None:
                out[f"net.ipv4.conf.{conf.name}.{key}"] = value
    for key in IPVS_SYSCTLS:
        value = _read(PROC / "net/ipv4/vs" / key)
        if value is not None:
            out[f"net.ipv4.vs.{key}"] = value
    return out


def _links() -> dict[str, tuple[str, bool]]:
    out: dict[str, tuple[str, bool]] = {}
    for dev in sorted(NET.iterdir()):
        kind, mac, flags = (_read(dev / f) for f in ("type", "address", "flags"))
        # 1: Ethernet, 772: loopback; other link types print their address differently.
        if kind in ("1", "772") and mac is not None and flags is not None:
            out[dev.name] = (mac, bool(int(flags, 16) & 1))
    return out


def _keepalived_running() -> bool:
    here = os.stat("/proc/self/ns/net")
    for pidfile in KEEPALIVED_PIDS:
        pid = (_read(Path(pidfile)) or "").split("\n")[0]
        if not pid.isdigit() or _read(Path(f"/proc/{pid}/comm")) != "keepalived":
            continue
        try:
            ns = os.stat(f"/proc/{pid}/ns/net")
        except FileNotFoundError:
            continue
        if (ns.st_dev, ns.st_ino) == (here.st_dev, here.st_ino):
            return True
    return False


def _machine() -> Machine:
    devices = frozenset(d.name for d in NET.iterdir())
    ipvs = Path("/proc/net/ip_vs").exists()
    return Machine(_sysctls(), devices, _links(), ipvs, _keepalived_running())


@dataclass(frozen=True)
class Run:
    facts: HostFacts
    stdout: str
    before: Machine
    after: Machine
    tree: Path

    def stable(self, read: Callable[[Machine], dict[str, T]]) -> dict[str, T]:
        """What Python read the same before and after the run."""
        before, after = read(self.before), read(self.after)
        return {k: v for k, v in before.items() if after.get(k, object()) == v}

    def seen(self, read: Callable[[Machine], dict[str, T]]) -> set[str]:
        return set(read(self.before)) | set(read(self.after))


async def _gather(script_edit: Callable[[str], str] = lambda s: s, tree: Path | None = None) -> Run:
    sh = sh_responder(LOGIN_ENV)
    replies: list[Reply] = []

    async def host(call: Call) -> Reply:
        reply = await sh(Call(call.host, call.kind, call.argv, script_edit(call.script), None))
        replies.append(reply)
        return reply

    paths = [str(tree / n) for n in TREE] if tree is not None else []
    before = _machine()
    facts = await gather_host_facts(FakeTransport(default=host), "here", paths)
    after = _machine()
    return Run(facts, replies[0].stdout, before, after, tree or Path())


def _tree(root: Path) -> None:
    (root / "app.conf").write_text("a=1\n#shoal-facts# done\n")
    (root / "app.conf").chmod(0o640)
    (root / "empty").touch(mode=0o600)
    (root / "empty").chmod(0o600)
    (root / "dir").mkdir(mode=0o750)
    (root / "dir").chmod(0o750)
    (root / "link").symlink_to(root / "app.conf")
    (root / "dangling").symlink_to(root / "nowhere")


@pytest.fixture(scope="module")
def here(tmp_path_factory: pytest.TempPathFactory) -> Run:
    tree = tmp_path_factory.mktemp("tree")
    _tree(tree)

    def more_tools(script: str) -> str:
        # One more tool asked for than any host is: it must read as not installed.
        tools = "TOOLS=" + "'" + " ".join(TOOLS) + "'\n"
        assert script.count(tools) == 1
        return script.replace(tools, "TOOLS='" + " ".join((*TOOLS, NO_SUCH_TOOL)) + "'\n")

    return asyncio.run(_gather(more_tools, tree))


def test_hostname_and_kernel_release_are_the_kernels(here: Run) -> None:
    assert here.facts.hostname.value == (PROC / "kernel/hostname").read_text().strip()
    assert here.facts.kernel_release.value == os.uname().release


def test_sysctls_are_the_values_in_proc_sys(here: Run) -> None:
    got = here.facts.sysctls.value
    assert got is not None, here.facts.sysctls.unknown_reason
    stable = here.stable(lambda m: m.sysctls)
    assert {k: got.get(k) for k in stable} == stable
    assert set(got) <= here.seen(lambda m: m.sysctls)
    # Every interface's three keys, lo's among them, and the forwarding switch.
    assert {f"net.ipv4.conf.lo.{k}" for k in SYSCTL_CONF_KEYS} | {"net.ipv4.ip_forward"} <= set(got)


def test_interfaces_are_the_kernels_with_mac_and_up_flag(here: Run) -> None:
    assert here.facts.interfaces.value is not None
    got = {i.name: (i.mac, i.up) for i in here.facts.interfaces.value}
    stable = here.stable(lambda m: m.links)
    assert {k: got.get(k) for k in stable} == stable
    assert "lo" in stable
    assert set(got) <= here.before.devices | here.after.devices


def test_tools_are_those_on_the_scripts_path_whatever_the_logins(here: Run) -> None:
    assert len(SCRIPT_PATH) == 1
    assert here.facts.tools.value == {
        t: shutil.which(t, path=SCRIPT_PATH[0]) is not None for t in (*TOOLS, NO_SUCH_TOOL)
    }
    # The login's own PATH would have missed these: the script's PATH is what found them.
    assert here.facts.tools.value["nft"] and shutil.which("nft", path=LOGIN_ENV["PATH"]) is None


def _expected_file(path: Path) -> FileInfo:
    if not os.path.lexists(path):
        return FileInfo(path=str(path), exists=False)
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        kind = "symbolic link"
    elif stat.S_ISDIR(st.st_mode):
        kind = "directory"
    else:
        kind = "regular file" if st.st_size else "regular empty file"
    # sha256sum follows a link to a regular file; content is sent for regular files only.
    sha = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    content = path.read_text() if kind.startswith("regular") else None
    why = {
        "symbolic link": "a symbolic link",
        "directory": "not a regular file (directory)",
    }.get(kind)
    return FileInfo(
        path=str(path),
        exists=True,
        sha256=sha,
        mode=f"{stat.S_IMODE(st.st_mode):04o}",
        kind=kind,
        content=content,
        content_unknown_reason=why,
    )


def test_files_are_what_stat_and_the_bytes_say(here: Run) -> None:
    got = here.facts.files.value
    assert got is not None, here.facts.files.unknown_reason
    assert set(got) >= {str(here.tree / n) for n in TREE}
    for name in TREE:
        assert got[str(here.tree / name)] == _expected_file(here.tree / name), name


def test_ipvs_and_keepalived_are_what_proc_shows(here: Run) -> None:
    ipvs = here.facts.ipvs.value
    assert ipvs is not None, here.facts.ipvs.unknown_reason
    assert ipvs.loaded in {here.before.ipvs_loaded, here.after.ipvs_loaded}
    # ipvsadm runs only where the table exists: listing it would load the module.
    sections = split_sections(here.stdout)
    assert ("ipvs-save" in sections) == ("ipvs-list" in sections) == ipvs.loaded
    keepalived = here.facts.keepalived.value
    assert keepalived is not None, here.facts.keepalived.unknown_reason
    assert keepalived.installed == (shutil.which("keepalived", path=SCRIPT_PATH[0]) is not None)
    running = {here.before.keepalived_running, here.after.keepalived_running}
    assert keepalived.running in running


def test_services_are_unknown_exactly_when_systemd_is_not_running(here: Run) -> None:
    systemd = Path("/run/systemd/system").is_dir()
    assert here.facts.services.known == systemd
    if not systemd:
        assert "systemd is not running" in str(here.facts.services.unknown_reason)


def _at(ledger: Path) -> Callable[[str], str]:
    def edit(script: str) -> str:
        line = f"LEDGER={LEDGER_PATH}\n"
        assert script.count(line) == 1
        return script.replace(line, f"LEDGER={ledger}\n")

    return edit


async def test_ledger_is_the_file_the_script_is_pointed_at(tmp_path: Path) -> None:
    ledger = Ledger(
        entries={"addr.present": ("lo 10.77.0.100/32",)},
        sysctl_originals={"net.ipv4.conf.all.arp_ignore": "0"},
    )
    path = tmp_path / "ledger.json"
    # Several lines, the last without a newline: every byte of it must come through.
    path.write_text(json.dumps(ledger.model_dump(mode="json"), indent=2))
    assert (await _gather(_at(path))).facts.ledger.value == ledger
    absent = await _gather(_at(tmp_path / "none.json"))
    assert absent.facts.ledger.value == Ledger()


async def test_ledger_at_its_real_path_on_this_machine() -> None:
    facts = (await _gather()).facts
    if Path(LEDGER_PATH).exists():
        assert facts.ledger.value == Ledger.model_validate_json(Path(LEDGER_PATH).read_text())
    else:
        assert facts.ledger.value == Ledger()
