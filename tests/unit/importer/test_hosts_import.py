"""`shoal import --from-hosts`: a hand-built cluster's facts into a repository whose first plan
is exactly the correction of the known-bad patterns found, and nothing else on the runtime side.

Facts are built the way the facts script reads a hand-built host (tests/unit/importer/
live_hosts.py); the lab test (tests/lab/test_import_lab.py) does the same on real hosts.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from reconciler.cli.import_cmd import run_import_cmd
from reconciler.desired.loader import load_inventory_file
from reconciler.facts.hostfacts import (
    ArptablesRules,
    Fact,
    FileInfo,
    HostFacts,
    NftRuleset,
    NftTable,
)
from reconciler.facts.script import KEEPALIVED_CONF
from reconciler.importer.hosts_site import site_from_hosts
from reconciler.importer.run import ImportRefused, ImportRequest, run_import
from reconciler.importer.sites import ImportSourceInvalid
from reconciler.plan.compile import managed_paths
from reconciler.plan.planner import plan_desired
from reconciler.plan.steps import Plan
from tests.statecases import add_addresses, fresh_facts, gathered, set_sysctls
from tests.unit.importer.live_hosts import (
    IPVS_SAVE,
    VIP1,
    VIP2,
    director,
    method1,
    method2,
    seed_site,
    sysctl_method,
    with_boot_file,
)

ROOT = Path(__file__).resolve().parents[3]
REPO = ROOT / "fixtures" / "config-repo"
KEEPALIVED = ROOT / "fixtures" / "import" / "keepalived" / "persistence-udp"
INVENTORY = load_inventory_file(REPO / "inventory.toml")
RUNTIME = {"arp", "addr", "sysctl", "iptables", "nft", "ipvs", "keepalived"}


def imported(tmp_path: Path, facts: dict[str, HostFacts], **extra: object) -> ImportRequest:
    return ImportRequest(target=tmp_path / "repo", known_hosts=REPO / "known_hosts",
                         from_hosts=REPO / "inventory.toml", host_facts=facts,
                         **extra)  # type: ignore[arg-type]  # fmt: skip


def first_plan(tmp_path: Path, facts: dict[str, HostFacts]) -> Plan:
    result = run_import(imported(tmp_path, facts))
    assert result.written and result.desired is not None
    paths = managed_paths(result.desired)
    gathers = {h: gathered(f, paths.get(h, ())) for h, f in facts.items()}
    return plan_desired(result.desired, gathers)


def runtime(plan: Plan) -> dict[str, list[str]]:
    """Per host, the steps that change the running system (not the boot form, not the ledger)."""
    out = {h: [s.description for s in hp.steps if s.subsystem in RUNTIME]
           for h, hp in plan.hosts.items()}  # fmt: skip
    return {h: steps for h, steps in out.items() if steps}


def issues_of(facts: dict[str, HostFacts]) -> list[str]:
    with pytest.raises(ImportSourceInvalid) as exc:
        site_from_hosts(INVENTORY, facts)
    return [str(i) for i in exc.value.issues]


def test_directors_services_and_arp_methods_are_read_from_the_hosts() -> None:
    site = site_from_hosts(INVENTORY, seed_site())
    by_name = {c.name: c for c in site.clusters}
    assert sorted(by_name) == ["lvs-arptables", "lvs-redirect"]
    one, two = by_name["lvs-arptables"], by_name["lvs-redirect"]
    for c in (one, two):
        assert c.backend == "ipvsadm"
        assert [(d.role, d.name) for d in c.directors] == [("primary", "lvs1"), ("backup", "lvs2")]
    assert (one.arp_method, two.arp_method) == ("arptables", "redirect")
    (http,), (other,) = one.services, two.services
    assert (http.vip, http.port, http.scheduler, http.persistence) == (VIP1, 80, "wlc", 0)
    assert [(r.name, r.weight, str(r.origin)) for r in http.real_servers] == [
        ("web1", 1, "lvs1: ipvsadm -Sn:2"), ("web3", 2, "lvs1: ipvsadm -Sn:3")]  # fmt: skip
    assert (other.vip, other.scheduler, other.persistence) == (VIP2, "rr", 600)
    patterns = sorted((f.host, f.pattern, f.adopt) for f in site.findings)
    assert patterns == [
        ("lvs1", "missing persistence across reboot", False),
        ("lvs2", "missing persistence across reboot", False),
        ("web1", "missing persistence across reboot", False),
        ("web1", "the seed HOWTO's OUTPUT -d mangle rule", True),
        ("web2", "missing persistence across reboot", False),
        ("web3", "missing persistence across reboot", False),
        ("web3", "the seed HOWTO's OUTPUT -d mangle rule", True),
    ]


def test_the_first_plan_of_the_seed_cluster_is_the_d_to_s_correction_only(tmp_path: Path) -> None:
    plan = first_plan(tmp_path, seed_site())
    assert runtime(plan) == {
        h: [f"add arptables rule OUTPUT -s {VIP1} -j mangle --mangle-ip-s {rip}",
            f"remove arptables rule OUTPUT -d {VIP1} -j mangle --mangle-ip-s {rip}"]
        for h, rip in (("web1", "10.77.0.21"), ("web3", "10.77.0.23"))
    }  # fmt: skip
    # The comment naming the pattern is in the plan, and method 2 (web2) changes nothing.
    assert any("seed HOWTO's -d form" in n for n in plan.hosts["web1"].notes)
    assert not any(hp.violations or hp.blocked for hp in plan.hosts.values())
    inventory = (tmp_path / "repo" / "inventory.toml").read_text()
    assert "# adopt: the seed HOWTO's OUTPUT -d mangle rule\nadopt = true" in inventory
    assert inventory.count("adopt = true") == 2  # web1 and web3; web2 needs no correction
    cluster = (tmp_path / "repo" / "clusters" / "lvs-arptables.toml").read_text()
    assert "#   web1: the seed HOWTO's OUTPUT -d mangle rule" in cluster


def test_a_method_1_host_with_the_corrected_rule_and_boot_file_is_in_sync(tmp_path: Path) -> None:
    boot = {"/etc/rc.local": f"arptables -A OUTPUT -s {VIP1} ...\nip addr add {VIP1} dev eth0\n"}
    fixed = {h: with_boot_file(method1(h, output="-s"), boot) for h in ("web1", "web3")}
    web2 = with_boot_file(method2("web2"), {"/etc/iptables/rules.v4": f"-A PREROUTING -d {VIP2}"})
    rules = {"/etc/ipvsadm.rules": IPVS_SAVE}
    lvs = {"lvs1": with_boot_file(director("lvs1", holds=(VIP1, VIP2)), rules),
           "lvs2": with_boot_file(director("lvs2"), rules)}  # fmt: skip
    plan = first_plan(tmp_path, seed_site(**fixed, web2=web2, **lvs))
    assert runtime(plan) == {}
    found = run_import(imported(tmp_path / "again", seed_site(**fixed, web2=web2, **lvs))).findings
    assert found == []


def test_old_chain_names_are_named_and_the_rules_put_in_input_and_output(tmp_path: Path) -> None:
    facts = seed_site(web1=method1("web1", chains=("IN", "OUT")))
    facts["web1"] = facts["web1"].model_copy(update={"arptables": Fact.of(ArptablesRules(
        backend="nft", chains=("INPUT", "OUTPUT", "IN", "OUT"),
        rules=facts["web1"].arptables.value.rules))})  # type: ignore[union-attr]  # fmt: skip
    plan = first_plan(tmp_path, facts)
    found = run_import(imported(tmp_path / "again", facts)).findings
    assert "arptables_jf's chain names IN/OUT" in {f.pattern for f in found if f.host == "web1"}
    assert runtime(plan)["web1"] == [
        f"add arptables rule INPUT -d {VIP1} -j DROP",
        f"add arptables rule OUTPUT -s {VIP1} -j mangle --mangle-ip-s 10.77.0.21",
    ]
    # The plan's comment names the pattern (reconciler.plan.invariants).
    assert any(f"`-A IN -d {VIP1} -j DROP` in arptables_jf's chain names" in n
               for n in plan.hosts["web1"].notes), plan.hosts["web1"].notes  # fmt: skip


def test_a_vip_on_eth0_under_the_sysctl_method_moves_to_lo(tmp_path: Path) -> None:
    facts = seed_site(web1=sysctl_method("web1", (VIP1,), dev="eth0"),
                      web3=sysctl_method("web3", (VIP1,)))  # fmt: skip
    site = site_from_hosts(INVENTORY, facts)
    assert {c.name: c.arp_method for c in site.clusters}["lvs-sysctl"] == "sysctl"
    assert ("web1", "a VIP on the interface under the sysctl method", True) in {
        (f.host, f.pattern, f.adopt) for f in site.findings}  # fmt: skip
    plan = first_plan(tmp_path, facts)
    steps = runtime(plan)
    assert steps == {"web1": [f"add {VIP1}/32 to lo", f"remove {VIP1}/32 from eth0"]}, steps
    (note,) = plan.hosts["web1"].notes
    assert note.startswith(f"fixed by this plan: web1 holds {VIP1}/32 on eth0") and \
        "(a VIP on the interface under the sysctl method: arp_ignore=1 does not hide" in note


def test_a_fact_that_cannot_be_read_fails_the_import_naming_host_and_fact() -> None:
    unread: Fact[ArptablesRules] = Fact.unknown("arptables: Permission denied")
    facts = seed_site(web3=method1("web3").model_copy(update={"arptables": unread}))
    assert issues_of(facts) == [
        "web3: arptables unknown (arptables: Permission denied): its ARP method cannot be read"]
    facts = seed_site(lvs2=director("lvs2").model_copy(update={"ipvs": Fact.unknown("timeout")}))
    assert issues_of(facts) == ["lvs2: ipvs unknown (timeout): whether it is a director cannot "
                                "be told, so nothing is imported"]  # fmt: skip
    facts = seed_site(client1=HostFacts.all_unknown("client1", "host unreachable: refused"))
    assert issues_of(facts)[0].startswith("client1: facts unreadable (host unreachable: refused)")


def test_no_arp_suppression_and_no_clear_primary_are_refused_not_guessed() -> None:
    facts = seed_site(web3=add_addresses(fresh_facts("web3"), [("eth0", VIP1, 32)]))
    assert any("web3 holds 10.77.0.100 on eth0 with no ARP suppression" in i
               for i in issues_of(facts))  # fmt: skip
    facts = seed_site(lvs1=director("lvs1"))
    assert any("none of them holds a VIP" in i for i in issues_of(facts))
    facts = seed_site(lvs2=director("lvs2", IPVS_SAVE.replace("-w 2", "-w 5")))
    assert any(i.startswith("lvs2: ipvsadm -Sn:1: tcp 10.77.0.100:80 differs from lvs1: "
                            "ipvsadm -Sn:1") for i in issues_of(facts))  # fmt: skip


def test_nat_tunnel_and_fwmark_entries_are_dropped_with_host_and_entry(tmp_path: Path) -> None:
    save = IPVS_SAVE + "-a -t 10.77.0.100:80 -r 10.77.0.31:80 -m -w 1\n-A -f 7 -s wlc\n"
    facts = seed_site(lvs1=director("lvs1", save, holds=(VIP1, VIP2)), lvs2=director("lvs2", save))
    with pytest.raises(ImportRefused) as exc:
        run_import(imported(tmp_path, facts))
    lines = [str(i) for i in exc.value.issues]
    assert "lvs1: ipvsadm -Sn:4: real server 10.77.0.31:80 of tcp 10.77.0.100:80: masq " \
           "forwarding (shoal does Direct Routing, -g, only)" in lines  # fmt: skip
    assert any(ln.startswith("lvs1: ipvsadm -Sn:7: virtual service fwmark 7") for ln in lines)
    result = run_import(imported(tmp_path, facts, allow_partial=True))
    assert result.written and len(result.dropped) == 4  # both directors' two entries


def test_an_nftables_director_is_read_from_its_dsr_table() -> None:
    captured = (ROOT / "tests" / "unit" / "states" / "director_data" / "nft-dsr-list.json")
    table = NftTable(family="netdev", name="shoal_dsr", canonical_json=captured.read_text())

    def with_mac(hf: HostFacts, mac: str) -> HostFacts:
        ifaces = tuple(i.model_copy(update={"mac": mac}) if i.name == "eth0" else i
                       for i in hf.interfaces.value or ())  # fmt: skip
        return hf.model_copy(update={"interfaces": Fact.of(ifaces)})

    lvs1 = fresh_facts("lvs1").model_copy(update={"nft": Fact.of(NftRuleset(tables=(table,)))})
    lvs1 = add_addresses(with_mac(lvs1, "02:00:00:00:00:0b"), [("eth0", VIP1, 32),
                                                                 ("eth0", VIP2, 32)])  # fmt: skip
    facts = {h: fresh_facts(h) for h in INVENTORY.hosts}
    facts.update(lvs1=lvs1,
                 web1=with_mac(sysctl_method("web1", (VIP1,)), "02:00:00:00:00:15"),
                 web2=with_mac(sysctl_method("web2", (VIP1,)), "02:00:00:00:00:16"))  # fmt: skip
    (cluster,) = site_from_hosts(INVENTORY, facts).clusters
    assert (cluster.backend, cluster.arp_method, [d.name for d in cluster.directors]) == (
        "nftables", "sysctl", ["lvs1"])  # fmt: skip
    http, dns = sorted(cluster.services, key=lambda s: s.port, reverse=True)
    assert [(r.name, r.weight) for r in http.real_servers] == [("web1", 1), ("web2", 2)]
    assert (dns.protocol, dns.port, dns.real_servers) == ("udp", 53, [])


def test_keepalived_files_give_vrrp_and_checks_and_must_agree_with_the_hosts(
    tmp_path: Path,
) -> None:
    save = ("-A -t 10.77.0.100:443 -s wlc -p 300\n-a -t 10.77.0.100:443 -r 10.77.0.21:443 -g -w 1\n"
            "-a -t 10.77.0.100:443 -r 10.77.0.22:443 -g -w 1\n-A -u 10.77.0.101:53 -s rr\n"
            "-a -u 10.77.0.101:53 -r 10.77.0.22:53 -g -w 3\n"
            "-a -u 10.77.0.101:53 -r 10.77.0.23:53 -g -w 1\n")  # fmt: skip
    facts = {h: fresh_facts(h) for h in INVENTORY.hosts}
    facts.update(
        lvs1=director("lvs1", save, holds=("10.77.0.100", "10.77.0.101"), keepalived=True),
        lvs2=director("lvs2", save, keepalived=True),
        web1=sysctl_method("web1", ("10.77.0.100",)),
        web2=sysctl_method("web2", ("10.77.0.100", "10.77.0.101")),
        web3=sysctl_method("web3", ("10.77.0.101",)),
    )  # fmt: skip
    confs = (("lvs1", KEEPALIVED / "lvs1.conf"), ("lvs2", KEEPALIVED / "lvs2.conf"))
    result = run_import(imported(tmp_path, facts, keepalived_confs=confs))
    assert result.desired is not None
    (cluster,) = result.desired.clusters.values()
    assert (cluster.cluster.director, cluster.cluster.arp_method) == ("keepalived", "sysctl")
    assert cluster.cluster.vrrp.virtual_router_id == 60
    assert {s.port: s.persistence for s in cluster.services} == {443: 300, 53: 0}
    # Without the files the VRRP settings are unknown: refused, saying which file to give.
    with pytest.raises(ImportRefused) as exc:
        run_import(imported(tmp_path / "b", facts))
    assert "give each director's file with --keepalived-conf lvs1=FILE" in str(exc.value)
    # A weight that keepalived's checker (or a stale file) changed: host entry and file:line.
    skewed = {**facts, "lvs1": director("lvs1", save.replace("-w 3", "-w 0"),
                                        holds=("10.77.0.100", "10.77.0.101"), keepalived=True),
              "lvs2": director("lvs2", save.replace("-w 3", "-w 0"), keepalived=True)}  # fmt: skip
    with pytest.raises(ImportRefused) as exc:
        run_import(imported(tmp_path / "c", skewed, keepalived_confs=confs))
    text = str(exc.value)
    assert f"{KEEPALIVED / 'lvs1.conf'}:" in text and "differs from lvs1: ipvsadm -Sn:4: real " \
           "server 10.77.0.22 has weight 0 on the host, 3 in the file" in text  # fmt: skip


def test_the_command_prints_every_pattern_found(tmp_path: Path) -> None:
    out: list[str] = []
    assert run_import_cmd(imported(tmp_path, seed_site()), as_json=False, echo=out.append) == 0
    patterns = [ln for ln in out if ln.startswith("known-bad pattern: ")]
    assert len(patterns) == 7 and any("web1: the seed HOWTO's OUTPUT -d" in p for p in patterns)


def test_interfaces_without_the_vip_everywhere_read_redirect_only_with_the_rule() -> None:
    no_rule = fresh_facts("web2")
    issues = issues_of(seed_site(web2=no_rule))
    assert any("web2 serves 10.77.0.101:80/tcp but neither holds 10.77.0.101 nor redirects" in i
               for i in issues)  # fmt: skip


def test_ipv6_services_are_dropped_not_guessed(tmp_path: Path) -> None:
    save = IPVS_SAVE + ("-A -t [2001:db8::100]:80 -s rr\n"
                        "-a -t [2001:db8::100]:80 -r [2001:db8::21]:80 -g -w 1\n")
    facts = seed_site(lvs1=director("lvs1", save, holds=(VIP1, VIP2)), lvs2=director("lvs2", save))
    site = site_from_hosts(INVENTORY, facts)
    assert [(str(d.origin), d.why) for d in site.dropped][:1] == [
        ("lvs1: ipvsadm -Sn:6", "IPv6 virtual service (--from-hosts reads IPv4 ARP methods only)")]


def test_the_command_refuses_a_bad_inventory_known_hosts_or_key(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from reconciler.cli.main import app

    bad = tmp_path / "inventory.toml"
    bad.write_text('[hosts.web1]\naddress = "not an address"\n')
    runner = CliRunner()
    base = ["import", str(tmp_path / "out"), "--known-hosts", str(REPO / "known_hosts")]
    result = runner.invoke(app, [*base, "--from-hosts", str(bad)])
    assert result.exit_code == 1 and f"{bad}:2" in result.output, result.output
    result = runner.invoke(app, ["import", str(tmp_path / "out"), "--known-hosts",
                                 str(tmp_path / "nope"), "--from-hosts",
                                 str(REPO / "inventory.toml")])  # fmt: skip
    assert result.exit_code == 1 and "nope: cannot read" in result.output, result.output
    result = runner.invoke(app, [*base, "--from-hosts", str(REPO / "inventory.toml"),
                                 "--key", str(tmp_path / "no-key")])  # fmt: skip
    assert result.exit_code == 1 and "no-key: cannot connect" in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_ipvs_drain_sysctls_left_off_by_hand_are_named_and_are_the_directors_whole_plan(
    tmp_path: Path,
) -> None:
    """A hand-built IPVS director without shoal's drain sysctls: the import names them, and the
    directors' runtime steps in the first plan are exactly those two keys."""
    off = {"net.ipv4.vs.expire_nodest_conn": "0", "net.ipv4.vs.expire_quiescent_template": "0"}
    lvs = {h: set_sysctls(director(h, holds=(VIP1, VIP2) if h == "lvs1" else ()), off)
           for h in ("lvs1", "lvs2")}  # fmt: skip
    facts = seed_site(**lvs)
    found = run_import(imported(tmp_path / "found", facts)).findings
    drain = [f for f in found if f.pattern == "IPVS drain sysctls off"]
    assert [f.host for f in drain] == ["lvs1", "lvs2"] and not any(f.adopt for f in drain)
    assert "net.ipv4.vs.expire_nodest_conn = 0" in drain[0].detail
    steps = runtime(first_plan(tmp_path, facts))
    for h in ("lvs1", "lvs2"):
        assert steps[h] == ["set net.ipv4.vs.expire_nodest_conn = 1",
                            "set net.ipv4.vs.expire_quiescent_template = 1"], steps  # fmt: skip
    # Set by hand already: nothing named, nothing planned on the directors.
    on = {k: "1" for k in off}
    facts = seed_site(**{h: set_sysctls(f, on) for h, f in lvs.items()})
    assert not [f for f in run_import(imported(tmp_path / "on", facts)).findings
                if f.pattern == "IPVS drain sysctls off"]  # fmt: skip
    assert not {"lvs1", "lvs2"} & set(runtime(first_plan(tmp_path / "on-plan", facts)))


def with_conf(hf: HostFacts, text: str) -> HostFacts:
    """`hf` with /etc/keepalived/keepalived.conf gathered, its content included."""
    files = dict(hf.files.value or {})
    files[KEEPALIVED_CONF] = FileInfo(path=KEEPALIVED_CONF, exists=True, mode="0644",
                                      kind="regular file", content=text,
                                      sha256=hashlib.sha256(text.encode()).hexdigest())  # fmt: skip
    return hf.model_copy(update={"files": Fact.of(files)})


def test_from_hosts_reads_the_vrrp_settings_from_the_gathered_keepalived_conf(
    tmp_path: Path,
) -> None:
    """No --keepalived-conf: each keepalived director's gathered file gives VRRP and checks; a
    gathered file with includes is refused naming the host's file and line."""
    save = ("-A -t 10.77.0.100:443 -s wlc -p 300\n-a -t 10.77.0.100:443 -r 10.77.0.21:443 -g -w 1\n"
            "-a -t 10.77.0.100:443 -r 10.77.0.22:443 -g -w 1\n-A -u 10.77.0.101:53 -s rr\n"
            "-a -u 10.77.0.101:53 -r 10.77.0.22:53 -g -w 3\n"
            "-a -u 10.77.0.101:53 -r 10.77.0.23:53 -g -w 1\n")  # fmt: skip
    texts = {d: (KEEPALIVED / f"{d}.conf").read_text() for d in ("lvs1", "lvs2")}
    facts = {h: fresh_facts(h) for h in INVENTORY.hosts}
    facts.update(
        lvs1=with_conf(director("lvs1", save, holds=("10.77.0.100", "10.77.0.101"),
                                keepalived=True), texts["lvs1"]),
        lvs2=with_conf(director("lvs2", save, keepalived=True), texts["lvs2"]),
        web1=sysctl_method("web1", ("10.77.0.100",)),
        web2=sysctl_method("web2", ("10.77.0.100", "10.77.0.101")),
        web3=sysctl_method("web3", ("10.77.0.101",)),
    )  # fmt: skip
    result = run_import(imported(tmp_path, facts))
    assert result.desired is not None
    (cluster,) = result.desired.clusters.values()
    assert cluster.cluster.director == "keepalived"
    assert (cluster.cluster.vrrp.virtual_router_id, cluster.cluster.vrrp.advert_interval) == (60, 2)
    assert {s.port: (s.check.type, s.check.timeout) for s in cluster.services} == {
        443: ("tcp", 4), 53: ("tcp", 2)}
    written = "".join(p.read_text() for p in (tmp_path / "repo" / "clusters").glob("*.toml"))
    assert f"lvs1:{KEEPALIVED_CONF}:" in written, written
    included = {**facts, "lvs2": with_conf(facts["lvs2"], texts["lvs2"] + "include extra.conf\n")}
    with pytest.raises(ImportRefused) as exc:
        run_import(imported(tmp_path / "inc", included))
    lines = len(texts["lvs2"].splitlines()) + 1
    assert f"lvs2:{KEEPALIVED_CONF}:{lines}" in str(exc.value)
    assert "--keepalived-conf lvs2=FILE" in str(exc.value)
