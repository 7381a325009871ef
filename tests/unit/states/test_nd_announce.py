"""The unsolicited Neighbour Advertisement a director sends for an IPv6 VIP: the frame it
builds is one the verification's own parser (and RFC 4861) accepts, checksum included."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

from reconciler.verify.probe_nd import ALL_NODES, advertiser, checksum
from states import addr
from states.nd_announce import NA_SCRIPT, announce_argv

MAC = bytes.fromhex("020000000b01")
VIP = "fd77:77:77:1::100"


def _script() -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "not_main"}  # defines, sends nothing
    exec(compile(NA_SCRIPT, "na", "exec"), namespace)
    return namespace


def test_the_frame_is_an_override_advertisement_of_the_vip_to_all_nodes() -> None:
    target = ipaddress.IPv6Address(VIP).packed
    frame = _script()["advertisement"](MAC, target)
    assert frame[:6] == bytes.fromhex("333300000001") and frame[6:12] == MAC
    assert frame[12:14] == b"\x86\xdd"
    first, length, nxt, hops = struct.unpack("!IHBB", frame[14:22])
    assert (first >> 28, length, nxt, hops) == (6, 32, 58, 255)
    assert frame[22:38] == target and frame[38:54] == ALL_NODES
    icmp = frame[54:]
    assert icmp[0] == 136 and icmp[1] == 0
    assert struct.unpack("!I", icmp[4:8])[0] == 0x20000000  # Override, not Solicited/Router
    assert icmp[8:24] == target and icmp[24:26] == b"\x02\x01" and icmp[26:32] == MAC
    zeroed = icmp[:2] + b"\x00\x00" + icmp[4:]
    assert struct.unpack("!H", icmp[2:4])[0] == checksum(target, ALL_NODES, zeroed)
    # The verification's probe reads it as the VIP's owner answering all nodes.
    assert advertiser(frame, target, b"\x00" * 16) == "02:00:00:00:0b:01"


def test_a_director_adding_an_ipv6_vip_announces_it_with_the_sender() -> None:
    args = addr.AddrArgs(address=VIP, prefix=128, interface="eth0", announce=True)
    argv = addr._announce_argv(args)
    assert argv == announce_argv("eth0", VIP)
    assert argv[:2] == ("sh", "-c") and argv[4:] == (NA_SCRIPT, "eth0", VIP)
    four = addr.AddrArgs(address="10.77.0.100", prefix=32, interface="eth0", announce=True)
    assert addr._announce_argv(four)[-2:] == ("eth0", "10.77.0.100")
