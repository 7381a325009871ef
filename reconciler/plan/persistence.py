"""The boot-time form of a host's runtime low states, as files shoal manages.

Runtime changes (`sysctl -w`, `ip addr add`, firewall rules, nft tables) are gone after a reboot.
This module renders what brings them back, from the same low states, so the persisted form is
part of every plan's diff:

- /etc/sysctl.d/90-shoal-lvs-dr.conf: the sysctls (applied early by systemd-sysctl);
- /usr/local/sbin/shoal-restore: an idempotent script touching only shoal's objects, in the
  order the safety rules want: ARP suppression, then firewall/IPVS, then the VIPs last;
- /etc/systemd/system/shoal-restore.service: runs it at boot, after sysctl.d and after
  nftables.service (whose `flush ruleset` would otherwise wipe our tables), enabled.

Every value written into the script is quoted with shlex (it is a shell script); nft table text
goes through a quoted here-document.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from reconciler.desired.models import Desired
from reconciler.plan.steps import LowState, Phase
from states import addr, arptables, iptables, ipvs, nft, nft_dsr, sysctl
from states.common import parse_args

SYSCTL_CONF = "/etc/sysctl.d/90-shoal-lvs-dr.conf"
RESTORE_SCRIPT = "/usr/local/sbin/shoal-restore"
RESTORE_UNIT = "shoal-restore.service"
RESTORE_UNIT_PATH = f"/etc/systemd/system/{RESTORE_UNIT}"
PERSISTENCE_ORIGIN = "persistence"
_NFT_EOF = "SHOAL_NFT_EOF"

# The functions whose objects the restore script brings back, in the order it does so.
RESTORED = (
    "sysctl.present",
    "arptables.rule_present",
    "nft.table_present",
    nft_dsr.FUNCTION,
    "iptables.rule_present",
    "ipvs.service_present",
    "addr.present",
)

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


def sysctl_conf(states: Sequence[LowState]) -> str | None:
    """The sysctl.d file for the host's sysctl.present states, or None if it has none."""
    lines = []
    for low in states:
        if low.function == "sysctl.present":
            args = parse_args(sysctl.SysctlArgs, low)
            # A module's key does not exist before the module loads, which may be after
            # systemd-sysctl: "-" lets that pass quietly (shoal-restore sets it after loading).
            dash = "-" if args.module else ""
            lines.append(f"{dash}{args.key} = {args.value}")
    if not lines:
        return None
    what = (
        "kernel settings (ARP, IPVS)"
        if any(ln.startswith("-") for ln in lines)
        else "ARP suppression"
    )
    head = f"# Managed by shoal: {what} for LVS Direct Routing.\n"
    return head + "\n".join(sorted(set(lines))) + "\n"


def _nft_heredoc(text: str) -> list[str]:
    if any(line.strip() == _NFT_EOF for line in text.splitlines()):
        raise ValueError("nft text contains the here-document delimiter")
    return [f"nft -f - <<'{_NFT_EOF}'", text.rstrip("\n"), _NFT_EOF]


def _restore_lines(low: LowState, desired: Desired) -> list[str]:
    q = shlex.join
    if low.function == "sysctl.present":
        sa = parse_args(sysctl.SysctlArgs, low)
        assign = q(("sysctl", "-q", "-w", f"{sa.key}={sa.value}"))
        return [f"{q(('modprobe', sa.module))} && {assign}" if sa.module else assign]
    if low.function == "arptables.rule_present":
        return [q(("arp_rule", *arptables.spec(parse_args(arptables.ArpRuleArgs, low))))]
    if low.function == "nft.table_present":
        return _nft_heredoc(nft.render(parse_args(nft.NftTableArgs, low)))
    if low.function == nft_dsr.FUNCTION:
        return _nft_heredoc(nft_dsr.restore_text(low.args))
    if low.function == "iptables.rule_present":
        r = parse_args(iptables.RedirectArgs, low)
        return [q(("nat_rule", r.chain, *iptables.spec(r)))]
    if low.function == "ipvs.service_present":
        # The whole IPVS table of this director, once; an existing entry fails harmlessly.
        lines = ipvs.ipvs_restore_lines(desired, low.host)
        return [f"{line} 2>/dev/null || true" for line in lines]
    if low.function == "addr.present":
        a = parse_args(addr.AddrArgs, low)
        return [q(("ip", "addr", "replace", f"{a.address}/{a.prefix}", "dev", a.interface))]
    return []


def restore_script(states: Sequence[LowState], desired: Desired) -> str:
    lines = [_PRELUDE]
    for function in RESTORED:
        matching = [s for s in states if s.function == function]
        if function == "ipvs.service_present":
            matching = matching[:1]  # renders the director's whole IPVS table
        for low in matching:
            lines += _restore_lines(low, desired)
    return "\n".join(lines).rstrip("\n") + "\n"


def restore_unit() -> str:
    return _UNIT


def persistence_states(host: str, states: Sequence[LowState], desired: Desired) -> list[LowState]:
    """file.managed/service.enabled low states persisting `states` (one host's) across a reboot.

    They require every state they persist (and the removals), so the planner puts them after
    those that change something, in the latest phase among them.
    """
    restored = [s for s in states if s.function in RESTORED]
    if not restored:
        return []
    phase = min((s.phase for s in restored), default=Phase.REAL_SERVERS_PREPARE)
    after = tuple(s.id for s in states)
    conf = sysctl_conf(states)
    script = restore_script(states, desired)

    def low(sid: str, function: str, args: dict[str, object], require: tuple[str, ...]) -> LowState:
        return LowState(
            id=sid, function=function, host=host, args=args, require=require,
            phase=phase, origin=PERSISTENCE_ORIGIN,
        )  # fmt: skip

    out = []
    if conf is not None:
        out.append(low("persist-sysctl-conf", "file.managed",
                       {"path": SYSCTL_CONF, "content": conf, "mode": "0644"}, after))  # fmt: skip
    out.append(low("persist-restore-script", "file.managed",
                   {"path": RESTORE_SCRIPT, "content": script, "mode": "0755"}, after))  # fmt: skip
    out.append(low("persist-restore-unit", "file.managed",
                   {"path": RESTORE_UNIT_PATH, "content": restore_unit(), "mode": "0644"},
                   ("persist-restore-script",)))  # fmt: skip
    out.append(low("persist-restore-enabled", "service.enabled", {"name": RESTORE_UNIT},
                   ("persist-restore-unit",)))  # fmt: skip
    return out
