"""The `keepalived` director backend's low states: one `keepalived.config` per director host.

keepalived's VRRP owns the VIPs, so there is no addr state. ip_vs and the IPVS sysctls are set
as for ipvsadm, but the module is optional: keepalived without IPVS still runs VRRP. A real
server that left (in the ledger, not in the desired state) is kept at weight 0 in an
intermediate config (`drain_content`) while it drains; without the ledger nothing is planned,
since the real servers that would leave undrained are unknown.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.desired.endpoint import endpoint
from reconciler.desired.models import Desired
from reconciler.facts.hostfacts import HostFacts
from reconciler.plan.compile_director import (
    IPVS_SYSCTL_IDS,
    LEDGER_KEEPALIVED_RS,
    clusters,
    host_phase,
    ipvs_sysctl_states,
    known_ledger,
    ledger,
    low_state,
)
from reconciler.plan.steps import LowState
from states import keepalived
from states.ipvs_argv import service_key
from states.keepalived import DrainArgs, KeepalivedArgs
from states.keepalived_conf import desired_rs_keys, parse_rs_key, render_keepalived_conf
from states.keepalived_meaning import installed_text, served_real_servers

CONF = "keepalived.conf"


def compile_keepalived(desired: Desired, facts: Mapping[str, HostFacts]) -> list[LowState]:
    out: list[LowState] = []
    hosts = sorted({h for _, cl in clusters(desired, "keepalived") for h in cl.cluster.directors})
    for host in hosts:
        phase = host_phase(desired, host)
        out += ipvs_sysctl_states(desired, host, phase, required=False)
        wanted = desired_rs_keys(desired, host)
        owned = known_ledger(facts, host)
        if isinstance(owned, str):
            # Without the ledger we cannot tell which real servers would leave undrained.
            args = _config(desired, host, wanted, skip_reason=f"{owned}: {CONF} not planned")
        elif leaving := sorted((_owned_or_served(owned.entries, facts.get(host))) - wanted):
            args = _config(
                desired, host, wanted, leaving,
                drain_content=render_keepalived_conf(desired, host, leaving),
                drains=tuple(_drains(leaving)),
            )  # fmt: skip
        else:
            args = _config(desired, host, wanted)
        out.append(low_state("keepalived-conf", keepalived.FUNCTION, host, args, phase,
                             require=IPVS_SYSCTL_IDS))  # fmt: skip
    return out


def _owned_or_served(entries: Mapping[str, Any], hf: HostFacts | None) -> set[str]:
    """The real servers that leave the host when the new file is written: shoal's (ledger) and
    those it serves now by hand. shoal writes the whole file, so a hand-made real server the
    repository does not want leaves with it; drained first, like one of shoal's, rather than cut
    off (it is not claimed: the ledger's remove of a key it lacks changes nothing)."""
    out = set(entries.get(LEDGER_KEEPALIVED_RS, ()))
    if hf is not None and hf.keepalived.known and hf.keepalived.value is not None:
        sha = hf.keepalived.value.config_sha256
        out |= served_real_servers(hf, installed_text(hf, keepalived.CONF_PATH, sha)) or set()
    return out


def _config(
    desired: Desired, host: str, wanted: set[str], leaving: list[str] | None = None, **extra: Any
) -> KeepalivedArgs:
    """The host's `keepalived.config` args; `extra`: a skip reason, or the drain config.

    Ledger: the leaving real servers go; the wanted ones are what the file would own, which the
    state claims only for those it brings (or an adopting host hands over)."""
    ops = ledger(LEDGER_KEEPALIVED_RS, "remove", leaving) if leaving else ()
    return KeepalivedArgs(
        path=keepalived.CONF_PATH,
        content=render_keepalived_conf(desired, host),
        drain_timeout=desired.settings.apply.drain_timeout,
        ledger=ops + ledger(LEDGER_KEEPALIVED_RS, "add", sorted(wanted)),
        **extra,
    )


def _drains(leaving: list[str]) -> list[DrainArgs]:
    """What the drain steps wait for: each leaving real server of its virtual service."""
    out = []
    for key in leaving:
        parsed = parse_rs_key(key)
        if parsed is not None:
            protocol, vip, port, address = parsed
            out.append(DrainArgs(service=service_key(protocol, vip, port),
                                 real_server=endpoint(address, port)))  # fmt: skip
    return out
