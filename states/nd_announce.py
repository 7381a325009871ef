"""The unsolicited Neighbour Advertisement a director sends when it takes an IPv6 VIP.

IPv4 has `arping -U`. IPv6 has nothing on Debian 12 that works for shoal's VIPs: its ndisc6
package has no `ndsend`, and the kernel's `ndisc_notify=1` announces only after duplicate
address detection, which a `nodad` VIP skips (tried on the lab: nothing is sent). ipv6toolkit's
`na6` would do, but it is one more package on every director for one frame; python3 is on every
host shoal verifies from already, so the sender is this short standard-library script, run as
`python3 -c NA_SCRIPT IFACE VIP` (argv only, nothing on stdin: phase commands run with
/dev/null there). It is text, not an import, because it runs on the director, not here.

The frame (RFC 4861 4.4 and 7.2.6): Ethernet to 33:33:00:00:00:01 from the interface's MAC,
IPv6 from the VIP to all nodes (ff02::1) with hop limit 255, ICMPv6 type 136 with the Override
flag (and not Solicited), target the VIP, a target link-layer option with the interface's MAC,
and the checksum over the pseudo-header. Linux takes it to replace the MAC of an existing
neighbour entry (it creates none from an unsolicited advertisement), which is exactly a
takeover's need. Sent `COUNT` times `INTERVAL` apart (RFC 4861 allows up to three), as
keepalived does for its VIPs. Best effort, like `arping -U`: a failure is printed on stderr
and the address stays; the clients then move when their entry expires.
"""

from __future__ import annotations

COUNT = 3
INTERVAL = 0.2

NA_SCRIPT = rf"""
import socket, struct, sys, time


def checksum(src, dst, message):
    data = src + dst + struct.pack("!I3xB", len(message), 58) + message
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def advertisement(mac, target):
    group = socket.inet_pton(socket.AF_INET6, "ff02::1")
    body = struct.pack("!BBHI", 136, 0, 0, 0x20000000) + target + bytes((2, 1)) + mac
    body = body[:2] + struct.pack("!H", checksum(target, group, body)) + body[4:]
    ip = struct.pack("!IHBB", 6 << 28, len(body), 58, 255) + target + group
    return bytes.fromhex("333300000001") + mac + b"\x86\xdd" + ip + body


def main(iface, vip):
    target = socket.inet_pton(socket.AF_INET6, vip)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x86DD)) as sock:
        sock.bind((iface, 0x86DD))
        frame = advertisement(sock.getsockname()[4], target)
        for n in range({COUNT}):
            if n:
                time.sleep({INTERVAL})
            sock.send(frame)


if __name__ == "__main__":
    try:
        main(sys.argv[1], sys.argv[2])
    except OSError as exc:
        print("no unsolicited neighbour advertisement for", sys.argv[2], "on", sys.argv[1],
              ":", exc, file=sys.stderr)
"""


def announce_argv(interface: str, address: str) -> tuple[str, ...]:
    """Run the sender on the host; without python3 the step says so and goes on."""
    script = (
        "command -v python3 >/dev/null 2>&1 || "
        '{ echo "python3 is not installed: no unsolicited neighbour advertisement for $3" >&2; '
        "exit 0; }; "
        'exec python3 -c "$1" "$2" "$3"'
    )
    return ("sh", "-c", script, "sh", NA_SCRIPT, interface, address)
