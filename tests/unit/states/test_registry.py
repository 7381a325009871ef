"""The state-kind registry: every kind's args model reads what the compiler writes, unknown
kinds and unknown args are refused clearly, ownership and the boot form come from the kinds."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import ClassVar

import pytest

from reconciler.desired.loader import load_tree
from reconciler.desired.models import Desired, ExtraState, StateFunction
from reconciler.errors import DesiredStateInvalid
from reconciler.facts.hostfacts import HostFacts
from reconciler.plan.compile import check_low_states, compile_desired, managed_paths
from reconciler.plan.planner import plan_desired
from reconciler.plan.steps import LowState
from states.args import Args, ArgsCache, low_args
from states.base import PlanContext
from states.registry import (
    DIRECTOR_KINDS,
    HOST_KINDS,
    KINDS,
    OWNED,
    RESTORED,
    UnknownStateKind,
    kind_of,
)
from tests.statecases import HOSTS, after_files, cluster_desired, fresh_facts, gathered
from tests.unit.states import director_fixtures as df

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "fixtures" / "config-repo"
METHODS = ("sysctl", "arptables", "nft-arp", "redirect")
BACKENDS = ("keepalived", "ipvsadm", "nftables")
SVC = "tcp 10.77.0.200:80"  # a service shoal made that left the desired state


def _example() -> Desired:
    files = {str(p.relative_to(EXAMPLE)): p.read_bytes() for p in EXAMPLE.rglob("*") if p.is_file()}
    return load_tree(files, revision="example")


def _facts(desired: Desired) -> dict[str, HostFacts]:
    paths = managed_paths(desired)
    return {h: gathered(fresh_facts(h), paths.get(h, [])) for h in HOSTS}


def _extras() -> list[ExtraState]:
    conf = ExtraState(id="conf", function="file.managed", hosts=("web1",),
                      args={"path": "/etc/app.conf", "content": "x=1\n"})  # fmt: skip
    app = ExtraState(id="app", function="service.running", hosts=("web1",),
                     args={"name": "app", "reload": True}, watch=("conf",))  # fmt: skip
    return [conf, app]


def _compiled() -> list[LowState]:
    """Low states of the example repository and of every ARP method and director backend,
    fresh and after two real servers left (the removals), and of directors with leftovers."""
    lows: list[LowState] = []
    example = _example()
    lows += compile_desired(example, {h: fresh_facts(h) for h in example.inventory.hosts})
    for method in METHODS:
        for backend in BACKENDS:
            full = cluster_desired(method, director=backend, extras=_extras())
            f = _facts(full)
            lows += compile_desired(full, f)
            left = cluster_desired(method, director=backend, real_servers=("web1",))
            lows += compile_desired(left, after_files(f, plan_desired(full, f)))
    # lvs1 made an IPVS service that left, and an nftables table it no longer directs with;
    # lvs2's ledger cannot be read.
    ledger = {"ipvs.service_present": (SVC,), "ipvs.real_server_present": (f"{SVC} 10.77.0.21:80",),
              "nft.dsr_table": ("netdev shoal_dsr",)}  # fmt: skip
    f = {h: df.facts(h) for h in df.ADDRESSES}
    f["lvs1"] = df.facts("lvs1", ledger=ledger)
    f["lvs2"] = df.facts("lvs2", ledger_unknown="Permission denied")
    lows += compile_desired(df.desired("ipvsadm"), f)
    return lows


COMPILED = _compiled()


def test_the_compiled_scenarios_use_every_registered_kind() -> None:
    # Without this the round trip below could pass over a kind nothing compiles.
    assert {low.function for low in COMPILED} == set(KINDS)


def test_every_kind_reads_back_exactly_the_args_the_compiler_wrote() -> None:
    for low in COMPILED:
        kind = kind_of(low.function)
        parsed = kind.parse(low)
        assert isinstance(parsed, kind.args)
        again = kind.parse(low.model_copy(update={"args": low_args(parsed)}))
        assert again == parsed, low.id
        if low.origin.startswith("clusters/"):
            continue  # a [[state]]'s own spelling (value = 1) is normalised ("1")
        # Nothing dropped, added or respelled: the model holds exactly what the plan carries.
        assert low_args(parsed) == low.args, low.id


def test_director_args_are_typed_models_not_dicts() -> None:
    lows = {low.function: low for low in COMPILED}
    ka = kind_of("keepalived.config").parse(lows["keepalived.config"])
    assert type(ka).__name__ == "KeepalivedArgs" and ka.ledger[-1].op == "add"
    rs = kind_of("ipvs.real_server_absent").parse(lows["ipvs.real_server_absent"])
    assert (rs.protocol, rs.port, rs.drain_timeout) == ("tcp", 80, 30.0)
    assert all(issubclass(k.args, Args) and k.args.model_config.get("extra") == "forbid"
               for k in KINDS.values())  # fmt: skip


def test_unknown_kind_is_refused_by_name() -> None:
    with pytest.raises(UnknownStateKind) as exc:
        kind_of("ipvs.service_prsent")
    assert exc.value.function == "ipvs.service_prsent"
    assert "unknown state function 'ipvs.service_prsent'" in str(exc.value)
    assert "ipvs.service_present" in str(exc.value)  # the known ones are listed
    low = LowState(id="x", function="ipvs.service_prsent", host="lvs1")
    with pytest.raises(DesiredStateInvalid) as invalid:
        check_low_states([low])
    assert "unknown state function 'ipvs.service_prsent'" in str(invalid.value)


def test_a_kind_refuses_a_low_state_of_another_function() -> None:
    low = LowState(id="x", function="addr.present", host="web1", args={"key": "k"})
    with pytest.raises(ValueError, match=r"a addr\.present low state is not a addr\.absent"):
        kind_of("addr.absent").parse(low)


def test_an_unknown_director_arg_is_an_invalid_desired_state_naming_it() -> None:
    low = LowState(id="svc", function="ipvs.service_present", host="lvs1",
                   args={"vip": "10.77.0.100", "port": 80, "schedular": "rr"},
                   origin="clusters/web.toml:state.svc")  # fmt: skip
    with pytest.raises(DesiredStateInvalid) as exc:
        kind_of(low.function).run(low, PlanContext(desired=df.desired("ipvsadm"), facts={}))
    (issue,) = exc.value.issues
    assert (issue.file, issue.key_path) == ("clusters/web.toml", "state.svc.args.schedular")


def test_kinds_are_listed_once_and_ownership_names_registered_removals() -> None:
    functions = [k.function for k in HOST_KINDS + DIRECTOR_KINDS]
    assert len(functions) == len(set(functions)) == len(KINDS)
    # Every function a `[[state]]` may name has a kind.
    assert set(typing.get_args(StateFunction)) <= set(KINDS)
    assert set(OWNED) == {"addr.present", "iptables.rule_present", "arptables.rule_present",
                          "nft.table_present", "sysctl.present", "service.enabled",
                          "file.managed"}  # fmt: skip
    for owner in OWNED.values():
        assert owner.absent in KINDS and KINDS[owner.absent].owns is None
    # A VIP goes before the suppression guarding it, a unit is disabled before its file goes.
    rank = {f: o.removal_rank for f, o in OWNED.items()}
    assert rank["addr.present"] < rank["arptables.rule_present"] < rank["sysctl.present"]
    assert rank["service.enabled"] < rank["file.managed"]
    assert {k.function for k in KINDS.values() if k.watch is not None} == {"service.running"}
    # The absent forms: what ownership removes with, and the directors' own removals.
    removals = {o.absent for o in OWNED.values()} | {
        "ipvs.real_server_absent", "ipvs.service_absent", "nft.dsr_table_absent"
    }  # fmt: skip
    assert {k.function for k in KINDS.values() if k.removes_only} == removals
    # Every director kind but the skip carries its ledger updates; no host kind does.
    assert {k.function for k in KINDS.values() if k.ledger is not None} == {
        k.function for k in DIRECTOR_KINDS if k.function != "director.skipped"
    }


def test_the_boot_form_restores_arp_suppression_first_and_the_vips_last() -> None:
    assert [k.function for k in RESTORED] == [
        "sysctl.present", "arptables.rule_present", "nft.table_present", "nft.dsr_table",
        "iptables.rule_present", "ipvs.service_present", "addr.present",
    ]  # fmt: skip
    assert [k.function for k in RESTORED if k.persist and k.persist.boot_file] == [
        "sysctl.present"
    ]


class _Counted(Args):
    calls: ClassVar[int] = 0  # validations so far
    value: int

    def model_post_init(self, context: object) -> None:
        _Counted.calls += 1


def test_args_cache_validates_equal_args_once_per_plan_and_keeps_no_failure() -> None:
    _Counted.calls = 0
    cache = ArgsCache()
    a = LowState(id="a", function="t", host="h", args={"value": 1})
    b = LowState(id="b", function="t", host="h", args={"value": 1})
    assert cache.parse(_Counted, a) is cache.parse(_Counted, b)
    assert _Counted.calls == 1
    # 1 and "1" are different args, even if they validate to the same value.
    c = LowState(id="c", function="t", host="h", args={"value": "1"})
    assert cache.parse(_Counted, c) is not cache.parse(_Counted, a)
    d = LowState(id="d", function="t", host="h", args={"value": 1.0})  # 1 == 1.0, same hash
    assert cache.parse(_Counted, d) is not cache.parse(_Counted, a)
    assert ArgsCache().parse(_Counted, a) is not cache.parse(_Counted, a)  # one cache per plan
    bad = LowState(id="bad", function="t", host="h", args={"value": "x"})
    for _ in range(2):  # each failure is raised again, naming its own low state
        with pytest.raises(DesiredStateInvalid, match="'bad' on h"):
            cache.parse(_Counted, bad)

