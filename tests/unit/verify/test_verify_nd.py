"""The Neighbour Discovery probe's packets, against frames the kernel built: a solicitation that
ndisc6 sent (its checksum computed by the kernel) and a kernel's advertisement, both captured in
the lab (fixtures/verify/nd-*.hex)."""

from __future__ import annotations

import ipaddress
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.verify.probe_nd import (
    ALL_NODES,
    advertiser,
    checksum,
    multicast_mac,
    nd_probe_source,
    solicitation,
    solicited_node,
)

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures" / "verify"
TARGET = ipaddress.IPv6Address("fd77:77:77:2::22").packed
CLIENT = ipaddress.IPv6Address("fd77:77:77:2::31").packed
CLIENT_MAC = bytes.fromhex("02736c02001f")
WEB2_MAC = "02:73:6c:02:00:16"


def captured(name: str) -> bytes:
    lines = (FIXTURES / name).read_text().splitlines()
    return bytes.fromhex("".join(line for line in lines if not line.startswith("#")))


def test_solicited_node_group_and_its_ethernet_address() -> None:
    group = solicited_node(ipaddress.IPv6Address("fd77:77:77::1:2:abcd:ef01").packed)
    assert ipaddress.IPv6Address(group) == ipaddress.IPv6Address("ff02::1:ffcd:ef01")
    assert multicast_mac(group).hex(":") == "33:33:ff:cd:ef:01"


def test_checksum_matches_the_kernels_on_captured_frames() -> None:
    for name in ("nd-solicitation-ndisc6.hex", "nd-advertisement-kernel.hex"):
        frame = captured(name)
        src, dst, icmp = frame[22:38], frame[38:54], frame[54:]
        zeroed = icmp[:2] + b"\x00\x00" + icmp[4:]
        assert checksum(src, dst, zeroed) == struct.unpack("!H", icmp[2:4])[0], name


def test_checksum_of_a_worked_example() -> None:
    # Summed by hand: the pseudo-header of :: to :: adds its length word 0x0004 and its
    # next-header word 0x003a; the message 0x8700 0x0000 adds 0x8700: sum 0x873e.
    assert checksum(bytes(16), bytes(16), b"\x87\x00\x00\x00") == 0xFFFF - 0x873E
    # A carry out of 16 bits folds back in: 0x0004 + 0x003a + 0xffff + 0x0002 = 0x1003f,
    # folded 0x0040, complemented 0xffbf.
    assert checksum(bytes(16), bytes(16), b"\xff\xff\x00\x02") == 0xFFBF


def test_our_solicitation_is_the_one_ndisc6_sends_but_for_the_flow_label() -> None:
    real = captured("nd-solicitation-ndisc6.hex")
    src_ip = real[22:38]  # ndisc6 asks from the link-local address
    ours = solicitation(CLIENT_MAC, src_ip, TARGET)
    # The flow label (ndisc6 picks a random one) is the low 20 bits of the IPv6 header's first word.
    assert ours[:15] == real[:15] and ours[15] & 0xF0 == real[15] & 0xF0
    assert ours[18:] == real[18:]
    assert ours[0:6].hex(":") == "33:33:ff:00:00:22"


def test_a_solicitation_from_the_global_address_checks_out() -> None:
    frame = solicitation(CLIENT_MAC, CLIENT, TARGET)
    assert frame[12:14] == b"\x86\xdd" and frame[20] == 58 and frame[21] == 255
    assert frame[22:38] == CLIENT and frame[38:54] == solicited_node(TARGET)
    icmp = frame[54:]
    assert (icmp[0], icmp[1], icmp[8:24]) == (135, 0, TARGET)
    assert icmp[24:32] == b"\x01\x01" + CLIENT_MAC
    # A correct checksum makes the sum over pseudo-header and message 0xffff (checksum 0).
    assert checksum(CLIENT, solicited_node(TARGET), icmp) == 0


def test_the_kernels_advertisement_names_its_sender() -> None:
    assert advertiser(captured("nd-advertisement-kernel.hex"), TARGET, CLIENT) == WEB2_MAC


def _advert(target: bytes, dst: bytes, *, option: bytes | None, hops: int = 255) -> bytes:
    body = struct.pack("!BBHI", 136, 0, 0, 0x60000000) + target + (option or b"")
    ip = struct.pack("!IHBB", 6 << 28, len(body), 58, hops) + TARGET + dst
    return CLIENT_MAC + bytes.fromhex("02736c020016") + b"\x86\xdd" + ip + body


def test_advertisements_that_do_not_claim_the_vip_to_us_are_ignored() -> None:
    mac_opt = b"\x02\x01" + bytes.fromhex("02736c0200aa")
    # Without a target link-layer option, the Ethernet source answers.
    assert advertiser(_advert(TARGET, CLIENT, option=None), TARGET, CLIENT) == WEB2_MAC
    assert advertiser(_advert(TARGET, CLIENT, option=mac_opt), TARGET, CLIENT) == (
        "02:73:6c:02:00:aa"
    )
    # An unsolicited announcement to all nodes claims the VIP too.
    assert advertiser(_advert(TARGET, ALL_NODES, option=None), TARGET, CLIENT) == WEB2_MAC
    other = ipaddress.IPv6Address("fd77:77:77:2::21").packed
    assert advertiser(_advert(other, CLIENT, option=None), TARGET, CLIENT) is None
    assert advertiser(_advert(TARGET, other, option=None), TARGET, CLIENT) is None
    assert advertiser(_advert(TARGET, CLIENT, option=None, hops=64), TARGET, CLIENT) is None
    zero_length = b"\x02\x00" + bytes(6)
    assert advertiser(_advert(TARGET, CLIENT, option=zero_length), TARGET, CLIENT) is None
    assert advertiser(_advert(TARGET, CLIENT, option=None)[:70], TARGET, CLIENT) is None
    # Our own solicitation is not an advertisement.
    assert advertiser(solicitation(CLIENT_MAC, CLIENT, TARGET), TARGET, CLIENT) is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--vip", "fd77:77:77::100", "--count", "0"], "count must be 1..100"),
        (["--vip", "10.77.0.100"], "--vip must be an IPv6 address"),
    ],
)
def test_source_rejects_bad_arguments_before_opening_a_socket(
    args: list[str], message: str
) -> None:
    res = subprocess.run(
        [sys.executable, "-", "--iface", "lo", *args],
        input=nd_probe_source(), text=True, capture_output=True, check=False,
    )  # fmt: skip
    assert res.returncode == 2 and message in res.stderr
