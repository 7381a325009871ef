"""The planner's output is byte-for-byte what it was before the plan-scale speed-ups.

`tests/unit/plan/golden/plans.json` was written by the planner as it was before the speed-ups (plan
ids, the planned steps and the whole plan). Each scenario here is planned again and compared
byte for byte: the sha256 of `Plan.model_dump_json()` for the whole plan and for every host, and
the plan id. The scenarios cover every ARP method and director backend, fresh, hand-configured,
applied (files and ledger written) and leaving hosts, unknown and unreachable hosts, requisites,
the fixture repository with the captured facts, and a synthetic repository.

To rewrite the file after an intended change in what the planner plans:
`PYTHONPATH=. .venv/bin/python tests/unit/plan/test_plan_golden.py` (from the project root).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench.synthetic import host_facts_like, synthetic_facts, synthetic_repo
from reconciler.desired.loader import load_tree
from reconciler.desired.models import Desired, ExtraState
from reconciler.facts.hostfacts import (
    Fact,
    HostFacts,
    IpvsTable,
    KeepalivedInfo,
    Ledger,
)
from reconciler.plan.compile import managed_paths
from reconciler.plan.planner import plan_desired
from reconciler.plan.steps import Plan
from tests.statecases import (
    HOSTS,
    VIP_DNS,
    VIP_HTTP,
    after_files,
    cluster_desired,
    fresh_facts,
    gathered,
    hand_configured,
    with_files,
)
from tests.unit.states import director_fixtures as df

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = Path(__file__).resolve().parent / "golden" / "plans.json"
FACT_SAMPLES = ROOT / "fixtures" / "facts" / "facts_script"
METHODS = ("sysctl", "arptables", "nft-arp", "redirect")
BACKENDS = ("keepalived", "ipvsadm", "nftables")

Scenario = tuple[Desired, dict[str, HostFacts]]


def facts_for(desired: Desired, **overrides: HostFacts) -> dict[str, HostFacts]:
    paths = managed_paths(desired)
    out = {h: gathered(fresh_facts(h), paths.get(h, [])) for h in HOSTS}
    for host, f in overrides.items():
        out[host] = gathered(f, paths.get(host, []))
    return out


def _cluster_scenarios(out: dict[str, Callable[[], Scenario]]) -> None:
    for method in METHODS:
        for backend in BACKENDS:
            name = f"{method}-{backend}"

            def fresh(m: str = method, b: str = backend) -> Scenario:
                d = cluster_desired(m, director=b)
                return d, facts_for(d)

            def hand(m: str = method, b: str = backend) -> Scenario:
                d = cluster_desired(m, director=b)
                vips = {"web1": [VIP_HTTP, VIP_DNS], "web2": [VIP_HTTP], "web3": [VIP_HTTP]}
                return d, facts_for(d, **{h: hand_configured(m, h, v) for h, v in vips.items()})

            def applied(m: str = method, b: str = backend) -> Scenario:
                d = cluster_desired(m, director=b)
                f = facts_for(d)
                return d, after_files(f, plan_desired(d, f))

            def leaving(m: str = method, b: str = backend) -> Scenario:
                # web2 and web3 leave after the hand-configured hosts were taken over.
                full = cluster_desired(m, director=b)
                vips = {"web1": [VIP_HTTP, VIP_DNS], "web2": [VIP_HTTP], "web3": [VIP_HTTP]}
                f = facts_for(full, **{h: hand_configured(m, h, v) for h, v in vips.items()})
                f = after_files(f, plan_desired(full, f))
                return cluster_desired(m, director=b, real_servers=("web1",), revision="rev2"), f

            out[f"{name}/fresh"] = fresh
            out[f"{name}/hand"] = hand
            out[f"{name}/applied"] = applied
            out[f"{name}/leaving"] = leaving


def _extra(sid: str, function: str, args: dict[str, Any], **req: tuple[str, ...]) -> ExtraState:
    return ExtraState(id=sid, function=function, hosts=("web1",), args=args, **req)  # type: ignore[arg-type]


def _odd_hosts() -> Scenario:
    conf = _extra("conf", "file.managed", {"path": "/etc/app.conf", "content": "x=1\n"})
    svc = _extra("app", "service.running", {"name": "app", "reload": True}, watch=("conf",))
    start = _extra("app2", "service.running", {"name": "app2"}, onchanges=("conf",))
    fwd = _extra("fwd", "sysctl.present", {"key": "net.ipv4.ip_forward", "value": 1},
                 require=("conf",))  # fmt: skip
    d = cluster_desired("sysctl", extras=[conf, svc, start, fwd])
    web1 = fresh_facts("web1").model_copy(update={"services": Fact.of({"app": True})})
    web2 = fresh_facts("web2").model_copy(update={"ledger": Fact[Ledger].unknown("unreadable")})
    f = facts_for(d, web1=web1, web2=web2)
    f["web3"] = HostFacts.all_unknown("web3", "host unreachable: connect timed out")
    return d, f


def _odd_hosts_in_sync() -> Scenario:
    d, f = _odd_hosts()
    web1 = with_files(f["web1"], {"/etc/app.conf": ("x=1\n", "0644")})
    return d, dict(f, web1=web1)


def _directors_with_tables() -> Scenario:
    """IPVS and keepalived already hold part of the cluster and a stale real server."""
    ipvs = IpvsTable(available=True, loaded=True, services=(df.svc(sched="rr"),),
                     destinations=(df.dest("web1", 3), df.dest("web3", 1)))  # fmt: skip
    ledger = {"ipvs.service_present": ("tcp 10.77.0.100:80",)}
    f = {h: df.facts(h) for h in df.ADDRESSES}
    f["lvs1"] = df.facts("lvs1", ipvs=ipvs, ledger=ledger,
                         keepalived=KeepalivedInfo(installed=True, running=True))  # fmt: skip
    f["lvs2"] = df.facts("lvs2", ipvs_unknown="ipvsadm exited 1")
    # The director fixtures leave the other facts unknown; an unknown fact blocks its host, so
    # here they are a fresh host's: only lvs2 (its IPVS table unknown) is blocked.
    return df.desired("ipvsadm"), {h: _known_rest(hf) for h, hf in f.items()}


def _known_rest(hf: HostFacts) -> HostFacts:
    fresh = fresh_facts(hf.host, df.ADDRESSES[hf.host])
    names = ("sysctls", "arptables", "iptables_nat", "files", "tools", "services", "login")
    return hf.model_copy(update={n: getattr(fresh, n) for n in names})


def _fixture_repo_files() -> dict[str, bytes]:
    base = ROOT / "fixtures" / "config-repo"
    return {str(p.relative_to(base)): p.read_bytes() for p in base.rglob("*") if p.is_file()}


def _fixture_repo(applied: bool) -> Callable[[], Scenario]:
    def build() -> Scenario:
        d = load_tree(_fixture_repo_files(), revision="fixture")
        samples = sorted(FACT_SAMPLES.glob("*.json"))
        templates = [HostFacts.model_validate_json(p.read_text()) for p in samples]
        paths = managed_paths(d)
        f = {}
        for i, (name, host) in enumerate(sorted(d.inventory.hosts.items())):
            like = host_facts_like(templates[i % len(templates)], name, host.address, i)
            f[name] = gathered(like, paths.get(name, []))
        if applied:
            f = after_files(f, plan_desired(d, f))
        return d, f

    return build


def _synthetic(applied: bool) -> Callable[[], Scenario]:
    def build() -> Scenario:
        d = load_tree(synthetic_repo(240, 12), revision="synthetic")
        f = synthetic_facts(240)
        if applied:
            f = after_files(f, plan_desired(d, f))
        return d, f

    return build


def scenarios() -> dict[str, Callable[[], Scenario]]:
    out: dict[str, Callable[[], Scenario]] = {}
    _cluster_scenarios(out)
    out["odd-hosts"] = _odd_hosts
    out["odd-hosts-in-sync"] = _odd_hosts_in_sync
    out["directors-with-tables"] = _directors_with_tables
    out["fixture-repo/fresh"] = _fixture_repo(applied=False)
    out["fixture-repo/applied"] = _fixture_repo(applied=True)
    out["synthetic/fresh"] = _synthetic(applied=False)
    out["synthetic/applied"] = _synthetic(applied=True)
    return out


def fingerprint(plan: Plan) -> dict[str, Any]:
    def sha(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    return {
        "plan_id": plan.id,
        "plan_sha256": sha(plan.model_dump_json()),
        "steps": sum(len(hp.steps) for hp in plan.hosts.values()),
        "hosts": {h: sha(hp.model_dump_json()) for h, hp in sorted(plan.hosts.items())},
    }


def _golden() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(GOLDEN.read_text())
    return data


def write_golden() -> None:
    """Record the current planner's output as the golden file (after a deliberate change)."""
    data = {name: fingerprint(plan_desired(*build())) for name, build in scenarios().items()}
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


@pytest.mark.parametrize("name", sorted(scenarios()))
def test_plan_is_byte_identical_to_golden(name: str) -> None:
    expected = _golden()[name]
    got = fingerprint(plan_desired(*scenarios()[name]()))
    assert got["hosts"] == expected["hosts"]
    assert got == expected


def test_golden_covers_every_scenario_and_plans_something() -> None:
    golden = _golden()
    assert set(golden) == set(scenarios())
    assert all(g["steps"] > 0 for n, g in golden.items() if n.endswith("/fresh"))
    assert len({g["plan_id"] for g in golden.values()}) == len(golden)


# --- the fast paths against the plain computations they replace ---------------------------------


def _slow_digest(facts: HostFacts) -> str:
    from reconciler.facts.hostfacts import _LATER_FACTS, _VOLATILE_KEYS, _drop_keys, _holds_nothing

    data = _drop_keys(facts.model_dump(mode="json"), _VOLATILE_KEYS)
    for name, sibling in _LATER_FACTS.items():
        if _holds_nothing(getattr(facts, name), getattr(facts, sibling)):
            del data[name]
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def test_digest_equals_the_full_serialisation_and_ignores_counters() -> None:
    ipvs = IpvsTable(available=True, loaded=True, services=(df.svc(),),
                     destinations=(df.dest("web1", 1), df.dest("web2", 2)))  # fmt: skip
    busy = ipvs.model_copy(update={"destinations": tuple(
        d.model_copy(update={"active_connections": 7, "inactive_connections": 3})
        for d in ipvs.destinations)})  # fmt: skip
    plain = df.facts("lvs1", ipvs=ipvs)
    counted = df.facts("lvs1", ipvs=busy)
    # A service named like a counter is dropped too, as the full serialisation always did.
    odd = fresh_facts("web1").model_copy(
        update={"services": Fact.of({"active_connections": True, "nginx": True})}
    )
    for f in (plain, counted, odd, fresh_facts("web2"), HostFacts.all_unknown("x", "down")):
        assert f.digest() == _slow_digest(f) == f.digest()
    assert plain.digest() == counted.digest()
    # A copy with other facts gets its own digest, not the cached one.
    moved = plain.model_copy(update={"hostname": Fact.of("other")})
    assert moved.digest() == _slow_digest(moved) != plain.digest()


def test_the_ipv6_nat_fact_enters_the_digest_only_when_it_holds_something() -> None:
    from reconciler.facts.hostfacts import IptablesNat, IptablesRule

    before = fresh_facts("web1")  # built as before the fact existed: "not gathered"
    empty = before.model_copy(update={"ip6tables_nat": Fact.of(IptablesNat(backend="nft"))})
    rule = IptablesRule(chain="PREROUTING", spec=("-d", "fd77:77:77::100/128", "-j", "REDIRECT"))
    held = before.model_copy(
        update={"ip6tables_nat": Fact.of(IptablesNat(backend="nft", rules=(rule,)))}
    )
    failed = before.model_copy(update={"ip6tables_nat": Fact[IptablesNat].unknown("exited 4")})
    assert before.digest() == empty.digest()
    assert len({before.digest(), held.digest(), failed.digest()}) == 3
    for f in (before, empty, held, failed):
        assert f.digest() == _slow_digest(f)


def test_ledger_text_is_json_dumps_indent_2() -> None:
    from reconciler.plan.planner import ledger_text, normalized

    ledgers = [
        Ledger(),
        Ledger(entries={"addr.present": ("10.0.0.1/32 dev lo",)}),
        Ledger(entries={"b": ("z", "a", "\u00e9\"q"), "a": (), "c": ("x",)},
               sysctl_originals={"net.ipv4.conf.all.arp_ignore": "0", "k": "1\t2"}),
    ]  # fmt: skip
    for ledger in ledgers:
        data = normalized(ledger).model_dump(mode="json")
        assert ledger_text(ledger) == json.dumps(data, indent=2, sort_keys=True) + "\n"


def test_order_matches_graphlib_and_cycles_are_named() -> None:
    from reconciler.errors import RequisiteCycle
    from reconciler.plan.planner import _order_with_graphlib, order_low_states
    from reconciler.plan.steps import LowState, Phase

    def low(sid: str, phase: Phase, *req: str) -> LowState:
        return LowState(id=sid, function="sysctl.present", host="h", phase=phase, require=req)

    states = [
        low("e", Phase.EXTRA), low("d", Phase.PACKAGES, "e"), low("c", Phase.PACKAGES),
        low("b", Phase.DIRECTOR_PRIMARY, "c", "c", "missing"), low("a", Phase.PACKAGES, "b"),
    ]  # fmt: skip
    assert order_low_states("h", states) == _order_with_graphlib("h", states)
    with pytest.raises(RequisiteCycle):
        order_low_states("h", [low("x", Phase.EXTRA, "y"), low("y", Phase.EXTRA, "x")])


if __name__ == "__main__":
    write_golden()
