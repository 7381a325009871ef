"""The boot-time form of a host's runtime low states, as files shoal manages.

Runtime changes (`sysctl -w`, `ip addr add`, firewall rules, nft tables) are gone after a reboot.
This module renders what brings them back, from the same low states, so the persisted form is
part of every plan's diff. Each state kind says what its boot form is (`states.kind.Persistence`);
this module puts the pieces together:

- the kinds' boot files (/etc/sysctl.d/90-shoal-lvs-dr.conf: the sysctls, applied early by
  systemd-sysctl);
- /usr/local/sbin/shoal-restore: an idempotent script touching only shoal's objects, the kinds'
  lines in the order the safety rules want: ARP suppression, then firewall/IPVS, then the VIPs;
- /etc/systemd/system/shoal-restore.service: runs it at boot, after sysctl.d and after
  nftables.service (whose `flush ruleset` would otherwise wipe our tables), enabled.

Every value a kind writes into the script is quoted with shlex (it is a shell script); nft table
text goes through a quoted here-document (`states.nft_scripts.heredoc`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reconciler.desired.models import Desired
from reconciler.plan.steps import LowState, Phase
from states.args import ArgsCache
from states.kind import HOST_FREE_LINES, AnyKind, BootFile
from states.registry import RESTORED

RESTORE_SCRIPT = "/usr/local/sbin/shoal-restore"
RESTORE_UNIT = "shoal-restore.service"
RESTORE_UNIT_PATH = f"/etc/systemd/system/{RESTORE_UNIT}"
PERSISTENCE_ORIGIN = "persistence"

_PRELUDE = """\
#!/bin/sh
# Managed by shoal: restores this host's LVS-DR runtime state at boot (shoal-restore.service).
# ARP suppression comes first and the VIPs last, so the host never answers ARP for a VIP.
# Idempotent, and it touches only what shoal manages, never a whole table.
set -eu
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# arptables-nft has -C; legacy arptables 0.0.5 does not, so there -D (all copies) then -A.
arp_rule() {
\tif arptables -C "$@" 2>/dev/null; then return 0; fi
\twhile arptables -D "$@" 2>/dev/null; do :; done
\tarptables -A "$@"
}
nat_rule() {
\tiptables -t nat -C "$@" 2>/dev/null || iptables -t nat -A "$@"
}
"""

_UNIT = f"""\
# Managed by shoal.
[Unit]
Description=shoal: restore LVS-DR ARP suppression, then the VIPs
After=network.target systemd-sysctl.service nftables.service
Wants=network.target
Before=keepalived.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={RESTORE_SCRIPT}

[Install]
WantedBy=multi-user.target
"""


def _args_by_kind(states: Sequence[LowState], cache: ArgsCache) -> list[tuple[AnyKind, list[Any]]]:
    """Every kind with a boot form, in restore order, with the args of its low states."""
    return [
        (kind, [kind.parse(s, cache) for s in states if s.function == kind.function])
        for kind in RESTORED
    ]


def boot_files(states: Sequence[LowState], cache: ArgsCache | None = None) -> list[BootFile]:
    """The files the host's kinds are read from at boot (the sysctl.d file), if any."""
    out = []
    for kind, args in _args_by_kind(states, cache or ArgsCache()):
        if kind.persist is not None and kind.persist.boot_file is not None and args:
            found = kind.persist.boot_file(args)
            if found is not None:
                out.append(found)
    return out


def restore_script(
    host: str, states: Sequence[LowState], desired: Desired, cache: ArgsCache | None = None
) -> str:
    """The restore script for one host's low states: the prelude, then each kind's lines."""
    lines = [_PRELUDE]
    for kind, args in _args_by_kind(states, cache or ArgsCache()):
        if kind.persist is not None and args:
            lines += kind.persist.lines(host, args, desired)
    return "\n".join(lines).rstrip("\n") + "\n"


def restore_unit() -> str:
    return _UNIT


def persistence_key(host: str, states: Sequence[LowState]) -> tuple[object, ...]:
    """Equal for two hosts whose `persistence_states` differ only in the host, within one
    compile: the same low state ids and functions, with the very same args objects (low states
    copied from one template, `compile.compile_real_servers`), and no kind whose lines read the
    host. The args are compared by identity: the caller keeps `states` alive meanwhile."""
    restored = {k.function: k for k in RESTORED}
    host_free = all(
        kind.persist is None or kind.persist.lines in HOST_FREE_LINES
        for kind in (restored.get(s.function) for s in states)
        if kind is not None
    )
    return (
        None if host_free else host,
        tuple((s.id, s.function, s.phase, id(s.args)) for s in states),
    )


def persistence_states(
    host: str, states: Sequence[LowState], desired: Desired, cache: ArgsCache | None = None
) -> list[LowState]:
    """file.managed/service.enabled low states persisting `states` (one host's) across a reboot.

    They require every state they persist (and the removals), so the planner puts them after
    those that change something, in the latest phase among them.
    """
    restored_functions = {k.function for k in RESTORED}
    restored = [s for s in states if s.function in restored_functions]
    if not restored:
        return []
    cache = cache or ArgsCache()
    phase = min((s.phase for s in restored), default=Phase.REAL_SERVERS_PREPARE)
    after = tuple(s.id for s in states)

    def low(sid: str, function: str, args: dict[str, object], require: tuple[str, ...]) -> LowState:
        return LowState(
            id=sid, function=function, host=host, args=args, require=require,
            phase=phase, origin=PERSISTENCE_ORIGIN,
        )  # fmt: skip

    out = [
        low(f.state_id, "file.managed", {"path": f.path, "content": f.content, "mode": f.mode},
            after)
        for f in boot_files(states, cache)
    ]  # fmt: skip
    script = restore_script(host, states, desired, cache)
    out.append(low("persist-restore-script", "file.managed",
                   {"path": RESTORE_SCRIPT, "content": script, "mode": "0755"}, after))  # fmt: skip
    out.append(low("persist-restore-unit", "file.managed",
                   {"path": RESTORE_UNIT_PATH, "content": restore_unit(), "mode": "0644"},
                   ("persist-restore-script",)))  # fmt: skip
    out.append(low("persist-restore-enabled", "service.enabled", {"name": RESTORE_UNIT},
                   ("persist-restore-unit",)))  # fmt: skip
    return out
