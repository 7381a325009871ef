"""Only what a director backend creates, or what an adopting host hands over, enters the ledger.

A hand-made IPVS service, a DSR table or keepalived real servers that already match the
repository are in sync: without `adopt` the plan changes nothing and records none of them, so a
later removal from the repository leaves them alone. One test per backend, planned by the
planner on director facts (the other facts a fresh host's).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reconciler.desired.models import Desired
from reconciler.facts.hostfacts import (
    Fact,
    FileInfo,
    HostFacts,
    IpvsTable,
    KeepalivedInfo,
    NftRuleset,
    NftTable,
)
from reconciler.plan.planner import plan_desired
from reconciler.plan.steps import Plan
from states.keepalived import CONF_PATH, sha256_text
from states.keepalived_conf import render_keepalived_conf
from tests.statecases import fresh_facts
from tests.unit.states import director_fixtures as df

DATA = Path(__file__).resolve().parents[1] / "states" / "director_data"
HAND_IPVS = IpvsTable(available=True, loaded=True, services=(df.svc(),),
                      destinations=(df.dest("web1", 1), df.dest("web2", 2)))  # fmt: skip
IPVS_KEYS = {"ipvs.service_present", "ipvs.real_server_present"}


def adopt(d: Desired, *hosts: str) -> Desired:
    inv = {n: h.model_copy(update={"adopt": n in hosts}) for n, h in d.inventory.hosts.items()}
    return d.model_copy(update={"inventory": d.inventory.model_copy(update={"hosts": inv})})


def known_rest(hf: HostFacts) -> HostFacts:
    fresh = fresh_facts(hf.host, df.ADDRESSES[hf.host])
    names = ("sysctls", "arptables", "iptables_nat", "files", "tools", "services", "login")
    return hf.model_copy(update={n: getattr(fresh, n) for n in names})


def director_facts(**lvs1: Any) -> dict[str, HostFacts]:
    f = {h: known_rest(df.facts(h)) for h in df.ADDRESSES}
    f["lvs1"] = known_rest(df.facts("lvs1", **lvs1))
    return f


def owned(p: Plan, host: str) -> dict[str, list[str]]:
    """What the plan's ledger step writes on `host` ({} when it writes none)."""
    hp = p.hosts.get(host)
    step = next((s for s in hp.steps if s.state_id == "shoal-ledger"), None) if hp else None
    if step is None or step.change is None or step.change.after is None:
        return {}
    entries: dict[str, list[str]] = json.loads(step.change.after)["entries"]
    return entries


def subsystem_steps(p: Plan, host: str, subsystem: str) -> list[str]:
    hp = p.hosts.get(host)
    return [s.description for s in hp.steps if s.subsystem == subsystem] if hp else []


# --- ipvsadm --------------------------------------------------------------------------------------


def test_ipvsadm_hand_made_service_in_sync_is_not_owned_without_adopt() -> None:
    d = df.desired("ipvsadm")
    p = plan_desired(d, director_facts(ipvs=HAND_IPVS))
    assert subsystem_steps(p, "lvs1", "ipvs") == []
    assert not IPVS_KEYS & set(owned(p, "lvs1")), owned(p, "lvs1")


def test_ipvsadm_claims_what_it_adds_and_an_adopting_host_hands_over_the_rest() -> None:
    d = df.desired("ipvsadm")
    partial = HAND_IPVS.model_copy(update={"destinations": (df.dest("web1", 1),)})
    p = plan_desired(d, director_facts(ipvs=partial))
    assert owned(p, "lvs1").get("ipvs.real_server_present") == ["tcp 10.77.0.100:80 10.77.0.22:80"]
    assert "ipvs.service_present" not in owned(p, "lvs1")
    adopted = plan_desired(adopt(d, "lvs1"), director_facts(ipvs=HAND_IPVS))
    assert owned(adopted, "lvs1")["ipvs.service_present"] == ["tcp 10.77.0.100:80"]
    assert owned(adopted, "lvs1")["ipvs.real_server_present"] == [
        "tcp 10.77.0.100:80 10.77.0.21:80", "tcp 10.77.0.100:80 10.77.0.22:80"]


# --- keepalived -----------------------------------------------------------------------------------


def hand_written(text: str) -> str:
    """shoal's file as a person writes it: comments, other indents, old keyword names, defaults
    left out, blocks in another order."""
    out = text.replace("# Managed by shoal; changes here are overwritten.", "! lvs1, by hand")
    out = out.replace("lb_algo", "lvs_sched").replace("lb_kind DR", "lvs_method DR  # direct")
    out = out.replace("        weight 1\n", "").replace("    ", "\t")
    head, _, servers = out.partition("\nvirtual_server")
    return "virtual_server" + servers + "\n" + head + "\n"


def keepalived_facts(conf: str) -> dict[str, HostFacts]:
    info = KeepalivedInfo(installed=True, running=True, config_sha256=sha256_text(conf))
    f = director_facts(keepalived=info)
    files = dict(f["lvs1"].files.value or {})
    files[CONF_PATH] = FileInfo(path=CONF_PATH, exists=True, mode="0644", kind="regular file",
                                sha256=sha256_text(conf), content=conf)  # fmt: skip
    f["lvs1"] = f["lvs1"].model_copy(update={"files": Fact.of(files)})
    return f


def test_keepalived_hand_written_equivalent_file_is_in_sync_and_not_owned() -> None:
    d = df.desired("keepalived")
    conf = hand_written(render_keepalived_conf(d, "lvs1"))
    assert conf != render_keepalived_conf(d, "lvs1")
    p = plan_desired(d, keepalived_facts(conf))
    assert subsystem_steps(p, "lvs1", "keepalived") == []
    assert "keepalived.real_server" not in owned(p, "lvs1"), owned(p, "lvs1")
    adopted = plan_desired(adopt(d, "lvs1"), keepalived_facts(conf))
    assert subsystem_steps(adopted, "lvs1", "keepalived") == []
    assert owned(adopted, "lvs1")["keepalived.real_server"] == [
        "tcp 10.77.0.100:80 10.77.0.21:80", "tcp 10.77.0.100:80 10.77.0.22:80"]


def test_keepalived_rewrite_claims_only_the_real_servers_it_brings() -> None:
    d = df.desired("keepalived")
    # The hand-written file serves web1 only: shoal's file adds web2, which alone is shoal's.
    one = df.desired("keepalived", [{
        "name": "http", "vip": "10.77.0.100", "port": 80,
        "check": {"type": "http", "path": "/healthz", "expect": 200},
        "real_server": [{"host": "web1", "weight": 1}]}])  # fmt: skip
    p = plan_desired(d, keepalived_facts(hand_written(render_keepalived_conf(one, "lvs1"))))
    assert subsystem_steps(p, "lvs1", "keepalived")
    assert owned(p, "lvs1")["keepalived.real_server"] == ["tcp 10.77.0.100:80 10.77.0.22:80"]



def test_keepalived_drains_a_hand_made_real_server_the_new_file_leaves_out() -> None:
    """shoal writes the whole file: a real server served by hand that the repository does not
    want leaves with it, so it is drained first (weight 0, wait) like one of shoal's, not cut
    off; it is not claimed."""
    both = df.desired("keepalived")
    only_web1 = df.desired("keepalived", [{
        "name": "http", "vip": "10.77.0.100", "port": 80,
        "check": {"type": "http", "path": "/healthz", "expect": 200},
        "real_server": [{"host": "web1", "weight": 1}]}])  # fmt: skip
    by_hand = hand_written(render_keepalived_conf(both, "lvs1"))
    p = plan_desired(only_web1, keepalived_facts(by_hand))
    steps = subsystem_steps(p, "lvs1", "keepalived")
    assert steps[:4] == [
        "validate drain keepalived.conf with keepalived -t",
        "install drain /etc/keepalived/keepalived.conf",
        "reload keepalived (SIGHUP, or start it)",
        "drain 10.77.0.22:80 of tcp 10.77.0.100:80",
    ], steps
    assert "keepalived.real_server" not in owned(p, "lvs1"), owned(p, "lvs1")


# --- nftables -------------------------------------------------------------------------------------


NFT_SERVICES = [
    {"name": "http", "vip": "10.77.0.100", "port": 80,
     "real_server": [{"host": "web1", "weight": 1}, {"host": "web2", "weight": 2}]},
    {"name": "dns", "vip": "10.77.0.101", "port": 53, "protocol": "udp", "persistence": 600,
     "real_server": [{"host": "web3", "weight": 0}]},
]  # fmt: skip


def test_nftables_table_in_place_is_not_owned_without_adopt() -> None:
    d = df.desired("nftables", NFT_SERVICES)
    captured = (DATA / "nft-dsr-list.json").read_text()
    table = NftTable(family="netdev", name="shoal_dsr", canonical_json=captured)
    f = director_facts(nft=NftRuleset(tables=(table,)))
    p = plan_desired(d, f)
    assert subsystem_steps(p, "lvs1", "nft") == []
    assert "nft.dsr_table" not in owned(p, "lvs1"), owned(p, "lvs1")
    adopted = plan_desired(adopt(d, "lvs1"), f)
    assert owned(adopted, "lvs1")["nft.dsr_table"] == ["netdev shoal_dsr"]
    # On a host without the table, the one shoal makes is shoal's.
    fresh = plan_desired(d, director_facts())
    assert subsystem_steps(fresh, "lvs1", "nft")
    assert owned(fresh, "lvs1")["nft.dsr_table"] == ["netdev shoal_dsr"]
