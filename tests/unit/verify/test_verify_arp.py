"""The ARP probe's frame handling (pure); tests/lab/test_verify_lab.py runs it on real hosts."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys

from reconciler.verify.probe_arp import ETH_P_ARP, arp_probe_source, arp_request, reply_sender

CLIENT_MAC = bytes.fromhex("02736c04001f")
WEB2_MAC = bytes.fromhex("02736c040016")
CLIENT = socket.inet_aton("10.77.4.31")
VIP = socket.inet_aton("10.77.4.100")


def _reply(sender_mac: bytes, sender_ip: bytes, target_ip: bytes, *, op: int = 2) -> bytes:
    eth = CLIENT_MAC + sender_mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op)
    return eth + arp + sender_mac + sender_ip + CLIENT_MAC + target_ip + b"\x00" * 18


def test_request_is_a_broadcast_who_has_vip_from_the_client() -> None:
    frame = arp_request(CLIENT_MAC, CLIENT, VIP)
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == CLIENT_MAC
    assert frame[12:14] == b"\x08\x06" and frame[20:22] == b"\x00\x01"
    assert frame[22:28] == CLIENT_MAC and frame[28:32] == CLIENT and frame[38:42] == VIP


def test_a_reply_claiming_the_vip_names_its_sender() -> None:
    assert reply_sender(_reply(WEB2_MAC, VIP, CLIENT), VIP, CLIENT) == "02:73:6c:04:00:16"


def test_frames_that_do_not_claim_the_vip_for_us_are_ignored() -> None:
    web2 = socket.inet_aton("10.77.4.22")
    # arptables' mangle rewrote the sender address: no claim on the VIP.
    assert reply_sender(_reply(WEB2_MAC, web2, CLIENT), VIP, CLIENT) is None
    # A request (our own broadcast seen going out, or anyone's).
    assert reply_sender(_reply(WEB2_MAC, VIP, CLIENT, op=1), VIP, CLIENT) is None
    # A reply to somebody else, and a truncated frame.
    assert reply_sender(_reply(WEB2_MAC, VIP, web2), VIP, CLIENT) is None
    assert reply_sender(_reply(WEB2_MAC, VIP, CLIENT)[:40], VIP, CLIENT) is None


def test_source_rejects_bad_arguments_before_opening_a_socket() -> None:
    res = subprocess.run(
        [sys.executable, "-", "--iface", "lo", "--vip", "127.0.0.1", "--count", "0"],
        input=arp_probe_source(), text=True, capture_output=True, check=False,
    )  # fmt: skip
    assert res.returncode == 2 and "count must be 1..100" in res.stderr
