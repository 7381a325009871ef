"""The Neighbour Discovery probe that runs ON a client host: which MACs answer a Neighbour
Solicitation for an IPv6 VIP. The IPv6 counterpart of `reconciler.verify.probe_arp`.

Shipped verbatim to the client like the ARP probe (`python3 - <args>` with this source on
stdin), so it uses the standard library only and imports nothing from shoal.
`reconciler.verify.nd` reads it with `nd_probe_source()`.

IPv6 has no broadcast: a host resolving the VIP asks the VIP's solicited-node multicast group
(ff02::1:ffXX:XXXX from the address's last 24 bits, Ethernet 33:33:ff:XX:XX:XX), which reaches
every host on a segment whose switch floods multicast, and a holder of the VIP answers with a
Neighbour Advertisement. The probe sends that same solicitation from an AF_PACKET socket (the
kernel's own would stop at the first answer and cache it): `--count` of them `--interval` apart,
and listens until `--window` seconds after the first. The source address is the one the kernel
would use towards the VIP, the hop limit 255 (RFC 4861 drops anything else), and the sender's
MAC rides in a source link-layer option so an answerer need not solicit back.

An advertisement counts when its target is the VIP, its hop limit 255 and it is addressed to
the probe's source address (an answer) or to all nodes (an unsolicited announcement, which
claims the VIP just as well). The responder is the MAC in its target link-layer option, or the
frame's Ethernet source when it carries none. Answers to the kernel's own solicitations (the
traffic probe runs at the same time) count too: they are answers for the VIP as well.

Output, the ARP probe's shape: one JSON object, {"source": ADDR, "sent": N, "responders":
[[mac, advertisements], ...]} with the responders in first-seen order. Exit status 77 (and a
message on stderr) when the packet socket is not permitted: the caller falls back to `ndisc6`.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import select
import socket
import struct
import sys
import time
from pathlib import Path

ETH_P_IPV6 = 0x86DD
IPPROTO_ICMPV6 = 58
ND_SOLICIT = 135
ND_ADVERT = 136
OPT_SOURCE_LL = 1
OPT_TARGET_LL = 2
HOP_LIMIT = 255
ALL_NODES = ipaddress.IPv6Address("ff02::1").packed
NOT_PERMITTED = 77
PACKET_OUTGOING = 4  # sll_pkttype of a frame this host sent
_IPV6_HEADER = struct.Struct("!IHBB16s16s")  # version/class/flow, payload length, next, hops


def solicited_node(target: bytes) -> bytes:
    """ff02::1:ffXX:XXXX, the group a solicitation for `target` (16 bytes) is sent to."""
    return bytes.fromhex("ff0200000000000000000001ff") + target[13:]


def multicast_mac(group: bytes) -> bytes:
    """The Ethernet address of an IPv6 multicast group: 33:33 and its last 32 bits."""
    return b"\x33\x33" + group[12:]


def checksum(src: bytes, dst: bytes, message: bytes) -> int:
    """The ICMPv6 checksum of `message` (its checksum field zero) between src and dst: the
    ones' complement sum over the IPv6 pseudo-header and the message (RFC 4443, 8200)."""
    data = src + dst + struct.pack("!I3xB", len(message), IPPROTO_ICMPV6) + message
    if len(data) % 2:
        data += b"\x00"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def solicitation(src_mac: bytes, src_ip: bytes, target: bytes) -> bytes:
    """An Ethernet frame soliciting `target` from `src_ip` (every argument in network form)."""
    group = solicited_node(target)
    option = struct.pack("!BB", OPT_SOURCE_LL, 1) + src_mac
    body = struct.pack("!BBH4x", ND_SOLICIT, 0, 0) + target + option
    body = body[:2] + struct.pack("!H", checksum(src_ip, group, body)) + body[4:]
    ip = _IPV6_HEADER.pack(6 << 28, len(body), IPPROTO_ICMPV6, HOP_LIMIT, src_ip, group)
    eth = multicast_mac(group) + src_mac + struct.pack("!H", ETH_P_IPV6)
    return eth + ip + body


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def advertiser(frame: bytes, vip: bytes, client_ip: bytes) -> str | None:
    """The MAC an Ethernet/IPv6 Neighbour Advertisement gives for `vip`, to `client_ip` or to
    all nodes, else None. Only an advertisement without extension headers is read: Linux and
    every router send them so, and RFC 4861 has a receiver drop what it cannot validate."""
    if len(frame) < 14 + 40 + 24 or frame[12:14] != struct.pack("!H", ETH_P_IPV6):
        return None
    first, length, nxt, hops, _src, dst = _IPV6_HEADER.unpack(frame[14:54])
    if first >> 28 != 6 or nxt != IPPROTO_ICMPV6 or hops != HOP_LIMIT:
        return None
    if dst not in (client_ip, ALL_NODES):
        return None
    icmp = frame[54 : 54 + length]
    if len(icmp) < 24 or icmp[0] != ND_ADVERT or icmp[1] != 0 or icmp[8:24] != vip:
        return None
    options = icmp[24:]
    while len(options) >= 8:
        kind, units = options[0], options[1]
        if units == 0:
            return None  # RFC 4861 4.6: a zero-length option makes the packet invalid
        if kind == OPT_TARGET_LL and units == 1:
            return _mac(options[2:8])
        options = options[units * 8 :]
    return _mac(frame[6:12])


def source_address(vip: str) -> str:
    """The address this host sends from towards `vip` (a UDP connect sends no packet)."""
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp:
        udp.connect((vip, 9))
        return str(udp.getsockname()[0])


def run_nd_probe(
    iface: str, vip: str, *, count: int = 5, interval: float = 0.1, window: float = 1.0
) -> dict[str, object]:
    """Send `count` solicitations for `vip` and collect every advertisement until `window`."""
    source = source_address(vip)
    vip_b = ipaddress.IPv6Address(vip).packed
    src_b = ipaddress.IPv6Address(source).packed
    replies: dict[str, int] = {}  # insertion order = first seen
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IPV6)) as sock:
        sock.bind((iface, ETH_P_IPV6))
        src_mac = sock.getsockname()[4]
        frame = solicitation(src_mac, src_b, vip_b)
        start = time.monotonic()
        sent = 0
        while (now := time.monotonic()) < start + window:
            if sent < count and now >= start + sent * interval:
                sock.send(frame)
                sent += 1
            wake = start + (sent * interval if sent < count else window)
            ready, _, _ = select.select([sock], [], [], max(0.0, wake - time.monotonic()))
            if ready:
                data, where = sock.recvfrom(2048)
                if where[2] == PACKET_OUTGOING:
                    continue
                mac = advertiser(data, vip_b, src_b)
                if mac is not None:
                    replies[mac] = replies.get(mac, 0) + 1
    return {
        "source": source,
        "sent": sent,
        "responders": [[mac, n] for mac, n in replies.items()],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="shoal verification Neighbour Discovery probe")
    parser.add_argument("--iface", required=True)
    parser.add_argument("--vip", required=True)
    parser.add_argument("--count", type=int, default=5)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--window", type=float, default=1.0)
    args = parser.parse_args(argv)
    if not 1 <= args.count <= 100 or not 0 < args.interval <= 10 or not 0 < args.window <= 60:
        parser.error("count must be 1..100, interval 0..10 and window 0..60 seconds")
    if ipaddress.ip_address(args.vip).version != 6:
        parser.error("--vip must be an IPv6 address")
    try:
        result = run_nd_probe(
            args.iface, args.vip, count=args.count, interval=args.interval, window=args.window
        )
    except PermissionError as exc:
        print(f"no packet socket here: {exc}", file=sys.stderr)
        return NOT_PERMITTED
    print(json.dumps(result))
    return 0


def nd_probe_source() -> str:
    """This file's source text, to send to a client's `python3 -`."""
    return Path(__file__).read_text(encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
