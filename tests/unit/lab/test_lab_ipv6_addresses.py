"""The lab's IPv6 plan: a ULA /64 per lab index beside its /24, host parts that read like the
IPv4 octet, and fixture repos moved into another lab's /64 as their 10.77.0.N addresses are."""

from __future__ import annotations

import ipaddress

import pytest

from lab.lab import _move_fixture_ipv6
from lab.network import address6_of, subnet6_of


def test_the_demo_lab_and_others_get_their_own_ula_64() -> None:
    assert str(subnet6_of(0)) == "fd77:77:77::/64"
    assert str(subnet6_of(10)) == "fd77:77:77:a::/64"
    assert str(subnet6_of(254)) == "fd77:77:77:fe::/64"
    assert all(subnet6_of(i).subnet_of(ipaddress.IPv6Network("fc00::/7")) for i in (0, 99))
    assert not subnet6_of(1).overlaps(subnet6_of(2))


@pytest.mark.parametrize(
    ("index", "octet", "expected"),
    [
        (0, 21, "fd77:77:77::21"),
        (0, 100, "fd77:77:77::100"),
        (3, 254, "fd77:77:77:3::254"),
        (16, 11, "fd77:77:77:10::11"),
        (0, 9, "fd77:77:77::9"),
    ],
)
def test_a_host_part_is_its_octet_in_decimal_digits(index: int, octet: int, expected: str) -> None:
    assert str(address6_of(index, octet)) == expected
    assert address6_of(index, octet) in subnet6_of(index)


def test_fixture_ipv6_addresses_move_to_the_labs_64_and_nothing_else_does() -> None:
    text = "\n".join(
        [
            'vip = "fd77:77:77::100"',
            'address6 = "fd77:77:77:0:0:0:0:21"',
            'other = "fd00::1"',  # not the fixture's /64: left alone
            'time = "12:30:00"',
            'ipv4 = "10.77.0.21"',
            'mapped = "fd77:77:77::0a4d:15"',
        ]
    )
    moved = _move_fixture_ipv6(text, "fd77:77:77:2a::/64")
    assert moved.splitlines() == [
        'vip = "fd77:77:77:2a::100"',
        'address6 = "fd77:77:77:2a::21"',
        'other = "fd00::1"',
        'time = "12:30:00"',
        'ipv4 = "10.77.0.21"',
        'mapped = "fd77:77:77:2a::a4d:15"',
    ]
    assert _move_fixture_ipv6(text, "fd77:77:77::/64").splitlines()[0] == 'vip = "fd77:77:77::100"'
