"""Broadcast ARP requests for a VIP at a steady rate, run ON a lab client (`python3 - ARGS`).

Every `--interval` seconds for `--duration` seconds (or until the file `--until` exists) one ARP
request for the VIP goes out as an Ethernet broadcast, so every host on the segment is asked
each time (iputils arping switches to unicast after the first reply and takes whole seconds
only). Every ARP reply for the VIP is recorded with its sender MAC and time.time(), and so is
every ARP request another host sends with the VIP as its sender address (it announces the VIP:
the seed HOWTO's `-d` mangle rule lets a real server do that). Standard library only; needs
CAP_NET_RAW in the host's network namespace. Prints one JSON object:
{"sent": N, "replies": [[time, mac], ...], "announcers": [[time, mac], ...]}.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import time
from pathlib import Path

ETH_P_ARP = 0x0806


def _request(src_mac: bytes, src_ip: bytes, vip: bytes) -> bytes:
    eth = b"\xff" * 6 + src_mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + src_mac + src_ip + b"\x00" * 6 + vip
    return eth + arp


def _reply_sender(frame: bytes, vip: bytes) -> str | None:
    """The sender MAC of an ARP reply for `vip`, else None."""
    if len(frame) < 42 or struct.unpack("!H", frame[12:14])[0] != ETH_P_ARP:
        return None
    op = struct.unpack("!H", frame[20:22])[0]
    if op != 2 or frame[28:32] != vip:
        return None
    return ":".join(f"{b:02x}" for b in frame[22:28])


def _announcer(frame: bytes, vip: bytes) -> str | None:
    """The sender MAC of an ARP request sent with `vip` as sender address, else None."""
    if len(frame) < 42 or struct.unpack("!H", frame[12:14])[0] != ETH_P_ARP:
        return None
    if struct.unpack("!H", frame[20:22])[0] != 1 or frame[28:32] != vip:
        return None
    return ":".join(f"{b:02x}" for b in frame[22:28])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vip", required=True)
    parser.add_argument("--iface", default="eth0")
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--until", type=Path, default=None)
    args = parser.parse_args()
    mac_text = Path(f"/sys/class/net/{args.iface}/address").read_text().strip()
    src_mac = bytes(int(x, 16) for x in mac_text.split(":"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.connect((args.vip, 9))  # no packet: only picks the source address
        src_ip = socket.inet_aton(u.getsockname()[0])
    vip = socket.inet_aton(args.vip)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    sock.bind((args.iface, 0))
    frame = _request(src_mac, src_ip, vip)
    replies: list[tuple[float, str]] = []
    announcers: list[tuple[float, str]] = []

    def record(frame: bytes) -> None:
        sender = _reply_sender(frame, vip)
        if sender is not None:
            replies.append((time.time(), sender))
        announcer = _announcer(frame, vip)
        if announcer is not None:
            announcers.append((time.time(), announcer))

    sent = 0
    end = time.monotonic() + args.duration
    next_send = time.monotonic()
    while time.monotonic() < end and not (args.until and args.until.exists()):
        now = time.monotonic()
        if now >= next_send:
            sock.send(frame)
            sent += 1
            next_send = now + args.interval
        ready, _, _ = select.select([sock], [], [], max(0.0, next_send - time.monotonic()))
        if ready:
            record(sock.recv(2048))
    # Replies to the last request.
    drain_end = time.monotonic() + 0.2
    while (left := drain_end - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if ready:
            record(sock.recv(2048))
    print(json.dumps({"sent": sent, "replies": replies, "announcers": announcers}))


if __name__ == "__main__":
    main()
