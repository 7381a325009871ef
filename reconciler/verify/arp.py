"""The ARP step of a verification: who answers ARP for each VIP, asked from each client.

The client sends broadcast ARP requests (`reconciler.verify.probe_arp`, or `arping -b` where the
login has no packet socket); once the traffic is over its neighbour entry for the VIP is read
too. Whether the right MAC answered is `reconciler.verify.judge`'s to say.
"""

from __future__ import annotations

import asyncio
import json
from typing import Literal

from reconciler.errors import TransportError
from reconciler.facts.parsers.arping import parse_arping
from reconciler.facts.parsers.ip_neigh import parse_ip_neigh
from reconciler.verify.judge import judge_arp
from reconciler.verify.probe_arp import NOT_PERMITTED, arp_probe_source
from reconciler.verify.result import ArpCheck, ArpResponder, CheckKind
from reconciler.verify.session import Session

# The ARP probe: ARP_COUNT broadcast requests ARP_INTERVAL apart, replies collected until
# ARP_WINDOW seconds after the first (longer than Linux's default proxy-ARP delay of 0.8 s).
ARP_COUNT = 5
ARP_INTERVAL = 0.1
ARP_WINDOW = 1.0
# The arping fallback: iputils takes whole seconds between requests.
ARPING_COUNT = 3


class ArpNotAsked(Exception):
    """The client could not send its ARP probe (the message says why)."""


async def arp_responders(s: Session, client: str, vip: str) -> list[str]:
    """The MACs answering ARP for `vip` asked from `client`, first seen first.

    Records nothing itself, so it can start before the client is known to be reachable:
    raises `ArpNotAsked` (the probe could not run) or `TransportError`.
    """
    iface = s.iface(client)
    rc, out, err = await s.run(
        client,
        ("python3", "-", "--iface", iface, "--vip", vip, "--count", str(ARP_COUNT),
         "--interval", str(ARP_INTERVAL), "--window", str(ARP_WINDOW)),
        input=arp_probe_source(),
        timeout=ARP_WINDOW + 20,
    )  # fmt: skip
    if rc == 0:
        return [str(mac).lower() for mac, _ in json.loads(out)["responders"]]
    if rc != NOT_PERMITTED:
        raise ArpNotAsked(f"{client}: the ARP probe for {vip} failed: {err.strip()}")
    # This login has no packet socket; arping usually carries its own capability.
    rc, out, err = await s.run(
        client,
        # -b: iputils switches to unicast after the first reply, so a second responder
        # would be asked only once; broadcasting every request asks every host each time.
        ("arping", "-b", "-c", str(ARPING_COUNT), "-I", iface, vip),
        timeout=ARPING_COUNT + 20,
    )
    if rc not in (0, 1) or (rc == 1 and "reply from" not in out and err.strip()):
        raise ArpNotAsked(f"{client}: arping {vip} failed: {err.strip()}")
    return parse_arping(out)


async def arp_check(
    s: Session,
    client: str,
    vip: str,
    director: str | None,
    asking: asyncio.Task[list[str]],
    traffic_done: asyncio.Event,
    probe: Literal["arp", "nd"] = "arp",
) -> ArpCheck:
    """Judge the ARP probe `asking` (started with the phase, it runs while the traffic
    flows) and the client's neighbour entry, read once the traffic is over. `probe` "nd":
    `asking` is the Neighbour Discovery probe of an IPv6 VIP."""
    iface = s.iface(client)
    kind: CheckKind = probe
    asked_by = "Neighbour Discovery" if probe == "nd" else "ARP"

    async def neighbour() -> str | None:
        await traffic_done.wait()
        rc, out, _ = await s.run(client, ("ip", "-j", "neigh", "show", "to", vip, "dev", iface))
        return parse_ip_neigh(out) if rc == 0 else None

    macs, neigh = await asyncio.gather(asking, neighbour(), return_exceptions=True)
    responders: list[ArpResponder] = []
    asked = False
    if isinstance(macs, list):
        asked = True
        responders = [ArpResponder(mac=mac, host=s.seen.mac_owner(mac)) for mac in macs]
    elif isinstance(macs, ArpNotAsked):
        s.fail(kind, client, str(macs))
    elif isinstance(macs, TransportError):
        s.fail(kind, client, f"{client} cannot probe {asked_by}: {macs}")
    else:
        raise macs
    neighbour_mac: str | None = None
    if isinstance(neigh, TransportError):
        if asked:
            s.fail(kind, client, f"{client} cannot probe {asked_by}: {neigh}")
    elif isinstance(neigh, BaseException):
        raise neigh
    else:
        neighbour_mac = neigh
    expected = s.seen.host_mac(director) if director else None
    check = ArpCheck(
        client=client,
        vip=vip,
        probe=probe,
        director=director,
        expected_mac=expected,
        responders=tuple(responders),
        neighbour_mac=neighbour_mac,
        neighbour_host=s.seen.mac_owner(neighbour_mac) if neighbour_mac else None,
    )
    s.failures.extend(judge_arp(check, asked=asked))
    return check
