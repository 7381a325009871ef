"""The Neighbour Discovery step of a verification: who answers a Neighbour Solicitation for
each IPv6 VIP, asked from each client. The IPv6 side of `reconciler.verify.arp`.

The client sends solicitations to the VIP's solicited-node group (`reconciler.verify.probe_nd`,
or `ndisc6 -m` where the login has no packet socket). The result is judged, and the client's
neighbour entry read, exactly as for ARP (`reconciler.verify.arp.arp_check`, probe "nd").
"""

from __future__ import annotations

import json

from reconciler.facts.parsers.ndisc6 import parse_ndisc6
from reconciler.verify.arp import ARP_COUNT, ARP_INTERVAL, ARP_WINDOW, ArpNotAsked
from reconciler.verify.probe_nd import NOT_PERMITTED, nd_probe_source
from reconciler.verify.session import Session

# ndisc6 -m waits the whole -w (milliseconds) after each of its -r solicitations.
NDISC6_TRIES = 3
NDISC6_WAIT_MS = 300


async def nd_responders(s: Session, client: str, vip: str) -> list[str]:
    """The MACs answering a Neighbour Solicitation for `vip` asked from `client`, first seen
    first. Like `arp_responders`: raises `ArpNotAsked` or `TransportError`, records nothing."""
    iface = s.iface(client)
    rc, out, err = await s.run(
        client,
        ("python3", "-", "--iface", iface, "--vip", vip, "--count", str(ARP_COUNT),
         "--interval", str(ARP_INTERVAL), "--window", str(ARP_WINDOW)),
        input=nd_probe_source(),
        timeout=ARP_WINDOW + 20,
    )  # fmt: skip
    if rc == 0:
        return [str(mac).lower() for mac, _ in json.loads(out)["responders"]]
    if rc != NOT_PERMITTED:
        raise ArpNotAsked(
            f"{client}: the Neighbour Discovery probe for {vip} failed: {err.strip()}"
        )
    # This login has no packet socket; Debian installs ndisc6 set-uid root. -m: every answer,
    # not only the first; -n: no name lookups.
    rc, out, err = await s.run(
        client,
        ("ndisc6", "-m", "-n", "-r", str(NDISC6_TRIES), "-w", str(NDISC6_WAIT_MS), vip, iface),
        timeout=NDISC6_TRIES * NDISC6_WAIT_MS / 1000 + 20,
    )
    # 2: no response (the judge says the VIP is down); anything else is a failed probe.
    if rc not in (0, 2) or (rc == 2 and "No response" not in out):
        raise ArpNotAsked(f"{client}: ndisc6 {vip} failed: {err.strip() or out.strip()}")
    return parse_ndisc6(out)
