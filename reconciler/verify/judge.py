"""The verification's judgement (pure): from what was seen to failures that name the host at fault.

The phase's steps (`reconciler.verify.run`, `.traffic`, `.arp`) gather what the hosts show
(their interfaces, the probe counters, the probes' reports) and ask here what it means: which
director is active for a VIP, whether a service's traffic went the Direct Routing way, whether
the right MAC answers ARP (or Neighbour Solicitations, for an IPv6 VIP). Each judgement returns
its failures in the order they are reported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from reconciler.desired.endpoint import service_endpoint
from reconciler.desired.models import ClusterHeader
from reconciler.facts.hostfacts import HostFacts, Interface
from reconciler.verify.result import ArpCheck, CheckKind, ServiceTraffic, VerificationFailure

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def link_mac(link: Interface) -> str | None:
    """The link's MAC in lower case, or None unless it is a well-formed Ethernet address.

    Only a well-formed MAC is kept: it goes into nft rules on other hosts.
    """
    mac = str(link.mac or "").lower()
    return mac if _MAC_RE.match(mac) else None


def ipv4_addresses(link: Interface) -> tuple[str, ...]:
    return tuple(a.address for a in link.addresses if a.family == "inet")


def ip_addresses(link: Interface) -> tuple[str, ...]:
    """The link's IPv4 and IPv6 addresses (`ip -j` prints both in the canonical form a
    validated VIP has)."""
    return tuple(a.address for a in link.addresses if a.family in ("inet", "inet6"))


@dataclass(frozen=True)
class Inspection:
    """Every inspected host's links (`ip -j addr show`), and the facts for MACs beyond them."""

    links: Mapping[str, Sequence[Interface]]
    interface: Mapping[str, str]  # host -> its inventory (client-facing) interface
    facts: Mapping[str, HostFacts]

    def mac_owner(self, mac: str) -> str | None:
        for host, links in self.links.items():
            if any(link_mac(link) == mac for link in links):
                return host
        for host, hf in self.facts.items():
            if hf.interfaces.known and any(
                (i.mac or "").lower() == mac for i in hf.interfaces.value or ()
            ):
                return host
        return None

    def host_mac(self, host: str) -> str | None:
        for link in self.links.get(host, []):
            if link.name == self.interface[host]:
                return link_mac(link)
        return None

    def holds(self, host: str, vip: str) -> bool:
        return any(
            link.name == self.interface[host] and vip in ip_addresses(link)
            for link in self.links.get(host, [])
        )


def active_director(
    cluster: str, header: ClusterHeader, vip: str, seen: Inspection
) -> tuple[str | None, list[VerificationFailure]]:
    """The one director of `cluster` that holds `vip`, or None and why.

    No failure when no director holds it but one of them could not be inspected: that host's
    own failure says more.
    """
    holders = [d for d in header.directors if seen.holds(d, vip)]
    if len(holders) == 1:
        return holders[0], []
    if not holders:
        if any(d not in seen.links for d in header.directors):
            return None, []
        message = (
            f"no director of cluster {cluster} holds {vip} (checked {', '.join(header.directors)})"
        )
        return None, [VerificationFailure(check="director", host=header.primary, message=message)]
    message = (
        f"{' and '.join(holders)} {'both' if len(holders) == 2 else 'all'} hold {vip}: "
        "only the active director may"
    )
    return None, [VerificationFailure(check="director", host=holders[-1], message=message)]


def judge_traffic(t: ServiceTraffic) -> list[VerificationFailure]:
    """What one service's traffic from one client says about its real servers and director."""
    failures: list[VerificationFailure] = []

    def fail(host: str | None, message: str) -> None:
        failures.append(VerificationFailure(check="traffic", host=host, message=message))

    where = f"{t.service} {service_endpoint(t.vip, t.port, t.protocol)}"
    if t.failed:
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(t.errors.items()))
        fail(None, f"{t.client}: {t.failed} of {t.requests} requests to {where} failed ({detail})")
    # Replies name their server (HTTP bodies): a host that received requests and answered
    # none is the one the failed requests went to (its service is down, or, with the
    # redirect method, its REDIRECT rule is gone and the VIP's packets die there).
    # With no request answered at all, every host that received one answered none too.
    identified = any(rs.answered for rs in t.real_servers) or t.ok == 0
    for rs in t.real_servers:
        got = rs.received if rs.received is not None else rs.answered
        if t.failed and identified and rs.received and not rs.answered:
            fail(
                rs.host,
                f"{rs.host} received {rs.received} requests to {where} from {t.client} "
                "and answered none",
            )
        if rs.weight > 0 and got == 0 and t.ok:
            fail(
                rs.host,
                f"{rs.host} (weight {rs.weight}) received none of {t.requests} requests to "
                f"{where} from {t.client}",
            )
        if rs.weight == 0 and got:
            fail(rs.host, f"{rs.host} has weight 0 but received {got} requests to {where}")
    named = 0
    for rs in t.real_servers:
        if rs.via_director:
            named += rs.via_director
            fail(
                rs.host,
                f"{rs.host} sends its replies for {where} through the director {t.director} "
                f"({rs.via_director} packets) instead of straight to {t.client}",
            )
    if t.director is not None and t.return_packets and t.return_packets > named:
        fail(
            t.director,
            f"replies from {where} to {t.client} passed through the director {t.director} "
            f"({t.return_packets} packets): the real servers do not answer directly",
        )
    if t.director is not None and t.forward_packets == 0 and t.ok:
        fail(
            None,
            f"requests from {t.client} to {where} did not pass through the active director "
            f"{t.director}",
        )
    return failures


def judge_arp(check: ArpCheck, *, asked: bool) -> list[VerificationFailure]:
    """Who answers ARP (or, for an IPv6 VIP, Neighbour Solicitations) for the VIP (only the
    active director may) and where the client's neighbour entry points; `asked`: the probe
    ran, so no responder means the VIP is down."""
    failures: list[VerificationFailure] = []
    vip, director, expected = check.vip, check.director, check.expected_mac
    kind: CheckKind = "nd" if check.probe == "nd" else "arp"
    asked_for = "Neighbour Solicitations" if check.probe == "nd" else "ARP"
    if asked and not check.responders:
        failures.append(
            VerificationFailure(
                check=kind,
                host=director,
                message=f"nobody answers {asked_for} for {vip} (asked from {check.client}): "
                "VIP is down",
            )
        )
    for r in check.responders:
        if expected is None or r.mac != expected:
            who = r.host or f"an unknown host ({r.mac})"
            if r.host is not None and r.host == director:
                continue
            failures.append(
                VerificationFailure(
                    check=kind, host=r.host, message=f"{who} answers {asked_for} for {vip}"
                )
            )
    if expected is not None and check.neighbour_mac not in (None, expected):
        who = check.neighbour_host or "an unknown host"
        failures.append(
            VerificationFailure(
                check="neighbour",
                host=check.neighbour_host,
                message=f"{check.client}'s neighbour entry for {vip} points at {who} "
                f"({check.neighbour_mac}), not at the active director {director}",
            )
        )
    return failures
