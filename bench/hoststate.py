"""What the bench checks and resets on a real server, through the lab (not through any tool).

`observe` reads the job's outcome straight from the host: the four ARP sysctls, lo's IPv4
addresses, the sysctl.d file's settings (as key = value pairs: Ansible and pyinfra write their
own line format), the restore script's and unit's digests and modes, and the enable link.
`reset` puts a host back to clean: no VIP, sysctls 0, no files, no shoal ledger or backups.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

SYSCTL_FILE = "/etc/sysctl.d/90-shoal-lvs-dr.conf"
RESTORE_SCRIPT = "/usr/local/sbin/shoal-restore"
RESTORE_UNIT = "/etc/systemd/system/shoal-restore.service"
WANTS_LINK = "/etc/systemd/system/multi-user.target.wants/shoal-restore.service"
ARP_KEYS = tuple(
    f"net.ipv4.conf.{scope}.{name}"
    for scope in ("all", "eth0")
    for name in ("arp_ignore", "arp_announce")
)


@dataclass(frozen=True, slots=True)
class Observed:
    sysctls: tuple[tuple[str, str], ...]
    lo_addresses: tuple[str, ...]
    persisted: tuple[tuple[str, str], ...]
    restore: str  # "mode sha256" or "missing"
    unit: str
    link: str  # link target or "missing"


def observe_script() -> str:
    reads = "".join(
        f"printf '%s=' {shlex.quote(k)}; cat /proc/sys/{k.replace('.', '/')}\n" for k in ARP_KEYS
    )
    files = " ".join(shlex.quote(p) for p in (RESTORE_SCRIPT, RESTORE_UNIT))
    return (
        "echo '#sysctl'\n"
        + reads
        + "echo '#lo'\nip -o -4 addr show dev lo | awk '{print $4}'\n"
        + f"echo '#persisted'\ncat {shlex.quote(SYSCTL_FILE)} 2>/dev/null\n"
        + f"echo '#files'\nfor f in {files}; do\n"
        + '  if [ -f "$f" ]; then echo "$f $(stat -c %a "$f") $(sha256sum < "$f" | cut -d" " -f1)";'
        + ' else echo "$f missing"; fi\ndone\n'
        + f"echo '#link'\nreadlink {shlex.quote(WANTS_LINK)} || echo missing\n"
    )


def parse_observed(text: str) -> Observed:
    """The observation script's output as an Observed (pure)."""
    parts: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("#") and line[1:] in ("sysctl", "lo", "persisted", "files", "link"):
            current = line[1:]
            parts[current] = []
        elif current:
            parts[current].append(line)
    sysctls = tuple(sorted(tuple(x.split("=", 1)) for x in parts.get("sysctl", []) if "=" in x))
    persisted: dict[str, str] = {}
    for line in parts.get("persisted", []):
        line = line.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        k, v = line.split("=", 1)
        persisted[k.strip()] = v.strip()
    files = {}
    for line in parts.get("files", []):
        path, _, rest = line.partition(" ")
        files[path] = rest
    link = (parts.get("link") or ["missing"])[0]
    return Observed(
        sysctls=tuple((k, v) for k, v in sysctls),
        lo_addresses=tuple(sorted(x.strip() for x in parts.get("lo", []) if x.strip())),
        persisted=tuple(sorted(persisted.items())),
        restore=files.get(RESTORE_SCRIPT, "missing"),
        unit=files.get(RESTORE_UNIT, "missing"),
        link=link,
    )


def reset_script(vip: str) -> str:
    sysctls = " ".join(f"{k}=0" for k in ARP_KEYS)
    paths = " ".join(
        shlex.quote(p) for p in (SYSCTL_FILE, RESTORE_SCRIPT, RESTORE_UNIT, WANTS_LINK)
    )
    return (
        f"ip addr del {shlex.quote(vip)}/32 dev lo 2>/dev/null || true\n"
        f"sysctl -q -w {sysctls}\n"
        f"rm -f {paths}\n"
        "rm -rf /var/lib/shoal\n"
    )


def differences(got: Observed, want: Observed) -> list[str]:
    """Field-by-field differences, for the report when a tool did not converge (pure)."""
    out = []
    for name in Observed.__dataclass_fields__:
        a, b = getattr(got, name), getattr(want, name)
        if a != b:
            out.append(f"{name}: got {a!r}, want {b!r}")
    return out
