"""Lab topologies and names: the contract's addresses, and names that fit the kernel's limits."""

from __future__ import annotations

import pytest

from lab import Topology
from lab.naming import bridge_name, check_lab_id, netns_name, veth_name
from lab.topology import VIP_OCTETS, HostSpec


def test_default_topology_has_the_contract_addresses() -> None:
    octets = {h.name: (h.role, h.octet) for h in Topology.default().hosts}
    assert octets == {
        "lvs1": ("director", 11),
        "lvs2": ("director", 12),
        "web1": ("real_server", 21),
        "web2": ("real_server", 22),
        "web3": ("real_server", 23),
        "client1": ("client", 31),
    }


@pytest.mark.parametrize("n", [4, 9, 10, 50, 123])
def test_many_real_servers_keep_clear_of_vips_and_other_roles(n: int) -> None:
    topology = Topology.with_real_servers(n)
    web = [h for h in topology.hosts if h.role == "real_server"]
    assert [h.name for h in web] == [f"web{i}" for i in range(1, n + 1)]
    assert web[3].octet == 24
    octets = [h.octet for h in topology.hosts]
    assert len(set(octets)) == len(octets)
    assert not set(octets) & set(VIP_OCTETS)
    assert all(1 <= o <= 253 for o in octets)


def test_too_many_real_servers_is_an_error() -> None:
    with pytest.raises(ValueError):
        Topology.with_real_servers(124)


def test_bad_topologies_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        Topology((HostSpec("a", "client", 31), HostSpec("a", "client", 32)))
    with pytest.raises(ValueError, match="octet"):
        Topology((HostSpec("a", "client", 150),))
    with pytest.raises(ValueError, match="host name"):
        Topology((HostSpec("A;rm", "client", 31),))


@pytest.mark.parametrize("lab_id", ["", "Demo", "a-b", "123456789", "x y"])
def test_lab_ids_are_short_and_plain(lab_id: str) -> None:
    with pytest.raises(ValueError):
        check_lab_id(lab_id)


def test_interface_names_fit_fifteen_characters() -> None:
    longest = check_lab_id("abcdefgh")
    assert len(bridge_name(longest)) <= 15
    assert len(veth_name(longest, 253)) <= 15
    assert netns_name(longest, "web1") == "shoal-abcdefgh-web1"
