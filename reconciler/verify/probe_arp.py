"""The ARP probe that runs ON a client host: which MACs answer ARP for a VIP, asked by broadcast.

Shipped verbatim to the client like `reconciler.verify.probe_traffic` (`python3 - <args>` with this
source on stdin), so it uses the standard library only and imports nothing from shoal.
`reconciler.verify.arp` reads it with `arp_probe_source()`.

Why not `arping`: iputils arping takes whole seconds between requests (`-i 0.2` is refused), so
three requests cost three seconds, and without `-b` it unicasts after the first reply, so a
second responder is asked only once. Here every request is an Ethernet broadcast (every host on
the segment is asked every time), requests go out every `--interval` seconds, and the probe keeps
listening until `--window` seconds after the first request, which also covers a proxy-ARP
responder (Linux delays those by up to 0.8 s by default).

The requests' sender address is the one the kernel would use towards the VIP (as arping picks
it). A reply counts when it says "VIP is at MAC" to that address (sender IP = VIP, target IP =
ours), the same test arping applies; a reply whose sender IP was rewritten to another
address (arptables' mangle) does not claim the VIP and is not counted. Replies to the kernel's own
ARP requests (from the traffic probe running at the same time) count too: they are answers for
the VIP as well.

Output: one JSON object, {"source": ADDR, "sent": N, "responders": [[mac, replies], ...]} with
the responders in first-seen order.
Exit status 77 (and a message on stderr) when the packet socket is not permitted (no
CAP_NET_RAW): the caller then falls back to arping, which usually carries that capability itself.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import sys
import time
from pathlib import Path

ETH_P_ARP = 0x0806
NOT_PERMITTED = 77
_ARP_HEADER = struct.Struct("!HHBBH")  # hardware type, protocol type, their lengths, operation


def arp_request(src_mac: bytes, src_ip: bytes, target_ip: bytes) -> bytes:
    """A broadcast Ethernet frame asking who has `target_ip` (all arguments in network form)."""
    eth = b"\xff" * 6 + src_mac + struct.pack("!H", ETH_P_ARP)
    arp = _ARP_HEADER.pack(1, 0x0800, 6, 4, 1) + src_mac + src_ip + b"\x00" * 6 + target_ip
    return eth + arp


def reply_sender(frame: bytes, vip: bytes, client_ip: bytes) -> str | None:
    """The MAC an Ethernet/IPv4 ARP reply gives for `vip` to `client_ip`, else None."""
    if len(frame) < 42 or frame[12:14] != struct.pack("!H", ETH_P_ARP):
        return None
    if _ARP_HEADER.unpack(frame[14:22]) != (1, 0x0800, 6, 4, 2):
        return None
    sender_mac, sender_ip, target_ip = frame[22:28], frame[28:32], frame[38:42]
    if sender_ip != vip or target_ip != client_ip:
        return None
    return ":".join(f"{b:02x}" for b in sender_mac)


def source_address(vip: str) -> str:
    """The address this host sends from towards `vip` (a UDP connect sends no packet)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.connect((vip, 9))
        return str(udp.getsockname()[0])


def run_arp_probe(
    iface: str, vip: str, *, count: int = 5, interval: float = 0.1, window: float = 1.0
) -> dict[str, object]:
    """Broadcast `count` requests for `vip` and collect every reply until `window` has passed."""
    source = source_address(vip)
    vip_b, src_b = socket.inet_aton(vip), socket.inet_aton(source)
    replies: dict[str, int] = {}  # insertion order = first seen
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as sock:
        sock.bind((iface, ETH_P_ARP))
        src_mac = sock.getsockname()[4]
        frame = arp_request(src_mac, src_b, vip_b)
        start = time.monotonic()
        sent = 0
        while (now := time.monotonic()) < start + window:
            if sent < count and now >= start + sent * interval:
                sock.send(frame)
                sent += 1
            wake = start + (sent * interval if sent < count else window)
            ready, _, _ = select.select([sock], [], [], max(0.0, wake - time.monotonic()))
            if ready:
                mac = reply_sender(sock.recv(2048), vip_b, src_b)
                if mac is not None:
                    replies[mac] = replies.get(mac, 0) + 1
    return {
        "source": source,
        "sent": sent,
        "responders": [[mac, n] for mac, n in replies.items()],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="shoal verification ARP probe")
    parser.add_argument("--iface", required=True)
    parser.add_argument("--vip", required=True)
    parser.add_argument("--count", type=int, default=5)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--window", type=float, default=1.0)
    args = parser.parse_args(argv)
    if not 1 <= args.count <= 100 or not 0 < args.interval <= 10 or not 0 < args.window <= 60:
        parser.error("count must be 1..100, interval 0..10 and window 0..60 seconds")
    try:
        result = run_arp_probe(
            args.iface, args.vip, count=args.count, interval=args.interval, window=args.window
        )
    except PermissionError as exc:
        print(f"no packet socket here: {exc}", file=sys.stderr)
        return NOT_PERMITTED
    print(json.dumps(result))
    return 0


def arp_probe_source() -> str:
    """This file's source text, to send to a client's `python3 -`."""
    return Path(__file__).read_text(encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
