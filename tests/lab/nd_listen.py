"""Neighbour Discovery about one IPv6 VIP, heard ON a lab client (`python3 - ARGS`).

Until the file `--until` exists (or `--duration` passes) every Neighbour Advertisement whose
target is the VIP and every IPv6 packet sent from the VIP is recorded with the sender's MAC,
the destination and time.time(): a real server announcing the VIP (an unsolicited
advertisement to all nodes) or speaking from it shows here. Frames the client sends itself are
left out. Standard library only; needs CAP_NET_RAW. Prints one JSON object:
{"adverts": [[time, mac, dst], ...], "from_vip": [[time, mac, dst], ...]}.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import select
import socket
import time
from pathlib import Path

ETH_P_IPV6 = 0x86DD
PACKET_OUTGOING = 4


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vip", required=True)
    parser.add_argument("--iface", default="eth0")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--until", type=Path, required=True)
    parser.add_argument("--ready", type=Path, required=True)
    args = parser.parse_args()
    vip = ipaddress.IPv6Address(args.vip).packed
    adverts: list[tuple[float, str, str]] = []
    from_vip: list[tuple[float, str, str]] = []
    end = time.monotonic() + args.duration
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IPV6)) as sock:
        sock.bind((args.iface, ETH_P_IPV6))
        args.ready.write_text("listening\n")
        while time.monotonic() < end and not args.until.exists():
            ready, _, _ = select.select([sock], [], [], 0.05)
            if not ready:
                continue
            frame, where = sock.recvfrom(4096)
            if where[2] == PACKET_OUTGOING or len(frame) < 54:
                continue
            mac = ":".join(f"{b:02x}" for b in frame[6:12])
            src, dst = frame[22:38], str(ipaddress.IPv6Address(frame[38:54]))
            if src == vip:
                from_vip.append((time.time(), mac, dst))
            if frame[20] == 58 and len(frame) >= 78 and frame[54] == 136 and frame[62:78] == vip:
                adverts.append((time.time(), mac, dst))
    print(json.dumps({"adverts": adverts, "from_vip": from_vip}))


if __name__ == "__main__":
    main()
