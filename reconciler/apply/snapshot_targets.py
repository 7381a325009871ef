"""What a phase snapshots: every subsystem, interface, sysctl and file its steps can change.

The snapshot is taken raw on the host before the phase (and again after a rollback, for the
proof), so it must cover everything a step's commands, undo commands and file writes touch,
including paths a command creates or deletes outside the step's FileWrites (`rm`,
`systemctl enable`). Which subsystems can cut the controller off, and so arm the lock-out
timer, is decided here too.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.plan.steps import Argv, Step

# Changes that can cut the controller off from the host; a phase touching one arms the timer.
LOCKOUT_SUBSYSTEMS = frozenset({"arp", "addr", "nft", "iptables", "sysctl"})

_SYSCTL_KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$")
_SYSCTL_CONF_RE = re.compile(r"^\s*-?\s*([A-Za-z0-9_][A-Za-z0-9_./-]*)\s*=")
_ABS_PATH_RE = re.compile(r"^(/[A-Za-z0-9_.@+-]+)+$")
_UNIT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,250}$")
# `systemctl enable` links a unit into the target its [Install] names; shoal's units (and the
# service states) use multi-user.target, whose link is what the facts read too.
WANTS_DIR = "/etc/systemd/system/multi-user.target.wants"
_UNIT_LINK_VERBS = frozenset({"enable", "disable", "reenable"})


@dataclass(frozen=True, slots=True)
class SnapshotTargets:
    """The raw outputs a phase's snapshot holds. `interfaces` None: no addresses; () : all."""

    arptables: bool = False
    iptables_tables: tuple[str, ...] = ()  # e.g. ("nat",): one `iptables-save -t T` each
    ip6tables_tables: tuple[str, ...] = ()  # the same with ip6tables-save (IPv6 redirects)
    nft: bool = False
    ipvs: bool = False
    interfaces: tuple[str, ...] | None = None
    sysctls: tuple[str, ...] = ()
    files: tuple[str, ...] = ()

    def section_names(self) -> tuple[str, ...]:
        """Section names of one snapshot (without the pre./post. prefix)."""
        names: list[str] = []
        if self.arptables:
            names.append("arptables")
        names.extend(f"iptables_{t}" for t in self.iptables_tables)
        names.extend(f"ip6tables_{t}" for t in self.ip6tables_tables)
        if self.nft:
            names.append("nft")
        if self.nft or self.arptables or self.iptables_tables or self.ip6tables_tables:
            names.append("nft_tables")
        if self.ipvs:
            names.append("ipvs")
        if self.interfaces is not None:
            names.extend(
                [f"addr.{i}" for i in range(len(self.interfaces))] if self.interfaces else ["addr"]
            )
        if self.sysctls:
            names.append("sysctl")
        names.extend(f"file.{k}" for k in range(len(self.files)))
        return tuple(names)


def _basename(arg: str) -> str:
    return posixpath.basename(arg)


def _sysctl_keys(argv: Argv) -> list[str]:
    keys: list[str] = []
    args = list(argv[1:])
    for i, arg in enumerate(args):
        if arg.startswith("-"):
            continue
        key = arg.split("=", 1)[0]
        prev = args[i - 1] if i else ""
        # `sysctl -p FILE` names a file, not a key.
        if prev in ("-p", "--load") or key.startswith("/"):
            continue
        if _SYSCTL_KEY_RE.match(key):
            keys.append(key.replace("/", "."))
    return keys


def _interfaces(argv: Argv) -> list[str]:
    out: list[str] = []
    for i, arg in enumerate(argv[:-1]):
        if arg == "dev" and _IFNAME_RE.match(argv[i + 1]):
            out.append(argv[i + 1])
    return out


def _iptables_table(argv: Argv) -> str:
    for i, arg in enumerate(argv[:-1]):
        if arg in ("-t", "--table") and _IFNAME_RE.match(argv[i + 1]):
            return argv[i + 1]
    return "filter"


def _removed_paths(argv: Argv) -> list[str]:
    """The files `rm` would remove (absolute paths only, as every state writes them)."""
    args = argv[1:]
    if "--" in args:
        args = args[args.index("--") + 1 :]
    else:
        args = tuple(a for a in args if not a.startswith("-"))
    return [a for a in args if _ABS_PATH_RE.match(a)]


def _unit_links(argv: Argv) -> list[str]:
    """The `multi-user.target.wants` links `systemctl enable|disable UNIT...` adds or removes."""
    words = [a for a in argv[1:] if not a.startswith("-")]
    if not words or words[0] not in _UNIT_LINK_VERBS:
        return []
    return [f"{WANTS_DIR}/{u}" for u in words[1:] if _UNIT_RE.match(u)]


def command_files(argv: Argv) -> list[str]:
    """Paths a command creates or deletes outside the step's FileWrites (snapshotted too)."""
    if not argv:
        return []
    tool = _basename(argv[0])
    if tool == "rm":
        return _removed_paths(argv)
    if tool == "systemctl":
        return _unit_links(argv)
    return []


def snapshot_targets(steps: Iterable[Step]) -> SnapshotTargets:
    """Every subsystem, interface, sysctl and file the steps can change."""
    subsystems: set[str] = set()
    interfaces: list[str] = []
    sysctls: list[str] = []
    files: list[str] = []
    ipt_tables: list[str] = []
    ip6t_tables: list[str] = []
    for step in steps:
        subsystems.add(step.subsystem)
        for argv in (*step.commands, *step.undo):
            if not argv:
                continue
            files.extend(command_files(argv))
            tool = _basename(argv[0])
            if tool == "sysctl":
                sysctls.extend(_sysctl_keys(argv))
                subsystems.add("sysctl")
            elif tool == "ip":
                interfaces.extend(_interfaces(argv))
            elif tool.startswith("arptables"):
                subsystems.add("arp")
            elif tool.startswith("iptables"):
                subsystems.add("iptables")
                ipt_tables.append(_iptables_table(argv))
            elif tool.startswith("ip6tables"):
                subsystems.add("iptables")
                ip6t_tables.append(_iptables_table(argv))
            elif tool == "nft":
                subsystems.add("nft")
            elif tool == "ipvsadm":
                subsystems.add("ipvs")
        for write in step.writes:
            files.append(write.path)
            if write.path.startswith("/etc/sysctl.d/") or write.path == "/etc/sysctl.conf":
                for line in write.content.splitlines():
                    m = _SYSCTL_CONF_RE.match(line)
                    if m:
                        sysctls.append(m.group(1).replace("/", "."))
        if step.drain is not None:
            subsystems.add("ipvs")
    wants_addr = "addr" in subsystems or bool(interfaces)
    return SnapshotTargets(
        arptables="arp" in subsystems,
        iptables_tables=tuple(sorted(set(ipt_tables)))
        or (("nat",) if "iptables" in subsystems and not ip6t_tables else ()),
        ip6tables_tables=tuple(sorted(set(ip6t_tables))),
        nft=bool(subsystems & {"nft", "arp"}),
        ipvs="ipvs" in subsystems,
        interfaces=tuple(dict.fromkeys(interfaces)) if wants_addr else None,
        sysctls=tuple(sorted(set(sysctls))),
        files=tuple(dict.fromkeys(files)),
    )


def needs_lockout(steps: Iterable[Step]) -> bool:
    """A phase that can cut the controller off: ARP, addresses, firewall rules, sysctls."""
    return any(s.subsystem in LOCKOUT_SUBSYSTEMS for s in steps)
