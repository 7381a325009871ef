"""The plan-scale generators: valid, deterministic repositories and facts of any size."""

from __future__ import annotations

import pytest

from bench.configrepo import cluster_toml, inventory_toml, known_hosts_for, settings_toml
from bench.synthetic import (
    assignment,
    fake_host_key,
    real_server_address,
    real_server_name,
    synthetic_facts,
    synthetic_repo,
    vip_address,
)
from reconciler.desired.known_hosts import parse_known_hosts
from reconciler.desired.loader import load_tree


def test_assignment_spreads_real_servers_evenly() -> None:
    per = assignment(10, 3)
    assert per == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert sorted(i for members in assignment(1000, 200) for i in members) == list(range(1000))
    assert {len(m) for m in assignment(10000, 200)} == {50}


def test_addresses_are_unique_and_skip_network_and_broadcast() -> None:
    addrs = [real_server_address(i) for i in range(10000)]
    assert len(set(addrs)) == 10000
    assert not any(a.endswith((".0", ".255")) for a in addrs)
    assert real_server_name(0) == "rs00001"
    assert vip_address(0) == "10.1.1.1"
    with pytest.raises(ValueError):
        vip_address(250)


def test_fake_host_keys_are_valid_known_hosts_entries() -> None:
    text = f"10.0.0.1 ssh-ed25519 {fake_host_key('a')}\n"
    entries, problems = parse_known_hosts(text)
    assert len(entries) == 1 and problems == []
    assert fake_host_key("a") == fake_host_key("a") != fake_host_key("b")


def test_synthetic_repo_loads_with_every_host_and_service() -> None:
    desired = load_tree(synthetic_repo(300, 20))
    cluster = desired.clusters["big"]
    assert len(cluster.services) == 20
    assert sum(len(s.real_servers) for s in cluster.services) == 300
    assert len(desired.inventory.hosts) == 302  # two directors
    assert synthetic_repo(5, 2) == synthetic_repo(5, 2)


def test_synthetic_facts_are_fresh_hosts_with_their_own_identity() -> None:
    facts = synthetic_facts(3)
    assert set(facts) == {"lvs1", "lvs2", "rs00001", "rs00002", "rs00003"}
    f = facts["rs00002"]
    assert f.host == "rs00002" and f.hostname.value == "rs00002"
    interfaces = {i.name: i for i in f.interfaces.value or ()}
    assert interfaces["eth0"].addresses[0].address == real_server_address(1)
    assert "lo" in interfaces
    macs = {i.mac for fs in facts.values() for i in fs.interfaces.value or () if i.name == "eth0"}
    assert len(macs) == 5
    assert f.ledger.known and f.ledger.value is not None and not f.ledger.value.entries


def test_bench_config_repo_texts() -> None:
    cluster = cluster_toml("10.77.5.100", ["web1", "web2"])
    assert 'directors = ["lvs1"]' in cluster and cluster.count("[[service.real_server]]") == 2
    assert "batch_size = 50" in settings_toml(50)
    assert 'address = "10.77.5.21"' in inventory_toml({"web1": "10.77.5.21"})
    kh = "10.77.5.21 ssh-ed25519 AAAA web1\n10.77.5.31 ssh-ed25519 BBBB client1\n"
    assert known_hosts_for(kh, {"10.77.5.21"}) == "10.77.5.21 ssh-ed25519 AAAA web1\n"


def test_the_sudo_variant_is_the_same_settings_plus_a_login_table() -> None:
    plain, sudo = settings_toml(5), settings_toml(5, login_user="deploy")
    assert sudo.startswith(plain) and "[login]" not in plain
    files = synthetic_repo(3, 1)
    files["shoal.toml"] = sudo.encode()
    hosts = load_tree(files).inventory.hosts
    assert {(h.user, h.become, h.become_user) for h in hosts.values()} == {
        ("deploy", "sudo", "root")
    }
    files["shoal.toml"] = plain.encode()
    assert {h.user for h in load_tree(files).inventory.hosts.values()} == {"root"}
