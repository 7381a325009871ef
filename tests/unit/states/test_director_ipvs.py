"""The ipvsadm director backend: exact steps from `ipvsadm -Sn` facts and the ledger."""

from __future__ import annotations

import shlex

from reconciler.facts.hostfacts import IpvsTable
from reconciler.plan.steps import Phase
from states.ipvs_argv import ipvs_restore_commands, ipvs_restore_lines
from tests.unit.states.director_fixtures import commands, desired, dest, facts, plan, svc

SVC_KEY = "tcp 10.77.0.100:80"
OWNED = {
    "ipvs.service_present": (SVC_KEY,),
    "ipvs.real_server_present": (f"{SVC_KEY} 10.77.0.21:80", f"{SVC_KEY} 10.77.0.22:80"),
}


def _argv(text: str) -> tuple[str, ...]:
    return tuple(shlex.split(text))


def _no_flush(steps: list) -> None:  # type: ignore[type-arg]
    for s in steps:
        for argv in (*s.commands, *s.undo):
            assert "-C" not in argv and "--clear" not in argv, argv


def test_fresh_director_exact_steps() -> None:
    d = desired("ipvsadm")
    f = {h: facts(h) for h in ("lvs1", "lvs2")}
    lows, steps, skipped = plan(d, f)
    assert skipped == []
    expected = [
        "ipvsadm -A -t 10.77.0.100:80 -s wlc",
        "ipvsadm -a -t 10.77.0.100:80 -r 10.77.0.21:80 -g -w 0",
        "ipvsadm -e -t 10.77.0.100:80 -r 10.77.0.21:80 -g -w 1",
        "ipvsadm -a -t 10.77.0.100:80 -r 10.77.0.22:80 -g -w 0",
        "ipvsadm -e -t 10.77.0.100:80 -r 10.77.0.22:80 -g -w 2",
    ]
    assert commands(steps, "lvs1") == expected
    assert commands(steps, "lvs2") == expected
    assert {s.phase for s in steps if s.host == "lvs1"} == {Phase.DIRECTOR_PRIMARY}
    assert {s.phase for s in steps if s.host == "lvs2"} == {Phase.DIRECTOR_BACKUP}
    # Undo of each step, in order.
    lvs1 = [s for s in steps if s.host == "lvs1"]
    assert [" ".join(u) for s in lvs1 for u in s.undo] == [
        "ipvsadm -D -t 10.77.0.100:80",
        "ipvsadm -d -t 10.77.0.100:80 -r 10.77.0.21:80",
        "ipvsadm -e -t 10.77.0.100:80 -r 10.77.0.21:80 -g -w 0",
        "ipvsadm -d -t 10.77.0.100:80 -r 10.77.0.22:80",
        "ipvsadm -e -t 10.77.0.100:80 -r 10.77.0.22:80 -g -w 0",
    ]
    # The weight comes after the weight-0 add.
    assert lvs1[2].require == (lvs1[1].id,)
    # The VIP only on the primary, /32 on its interface, after the services that serve it.
    vips = [lw for lw in lows if lw.function == "addr.present"]
    assert [(v.host, v.args, v.phase) for v in vips] == [
        ("lvs1", {"address": "10.77.0.100", "prefix": 32, "interface": "eth0", "announce": True},
         Phase.DIRECTOR_PRIMARY),
    ]  # fmt: skip
    assert set(vips[0].require) == {
        lw.id for lw in lows if lw.host == "lvs1" and lw.function.startswith("ipvs.")
    }
    _no_flush(steps)


def test_in_sync_is_empty() -> None:
    table = IpvsTable(available=True, services=(svc(),),
                      destinations=(dest("web1", 1), dest("web2", 2)))  # fmt: skip
    f = {h: facts(h, ipvs=table, ledger=OWNED) for h in ("lvs1", "lvs2")}
    _, steps, skipped = plan(desired("ipvsadm"), f)
    assert steps == [] and skipped == []


def test_changed_weight_is_one_full_edit() -> None:
    table = IpvsTable(available=True, services=(svc(),),
                      destinations=(dest("web1", 1), dest("web2", 5)))  # fmt: skip
    f = {"lvs1": facts("lvs1", ipvs=table, ledger=OWNED)}
    _, steps, _ = plan(desired("ipvsadm"), f)
    lvs1 = [s for s in steps if s.host == "lvs1"]
    assert commands(lvs1) == ["ipvsadm -e -t 10.77.0.100:80 -r 10.77.0.22:80 -g -w 2"]
    assert lvs1[0].undo == (_argv("ipvsadm -e -t 10.77.0.100:80 -r 10.77.0.22:80 -g -w 5"),)


def test_masq_destination_is_switched_to_dr() -> None:
    table = IpvsTable(available=True, services=(svc(),),
                      destinations=(dest("web1", 1, forward="masq"), dest("web2", 2)))  # fmt: skip
    _, steps, _ = plan(desired("ipvsadm"), {"lvs1": facts("lvs1", ipvs=table, ledger=OWNED)})
    assert commands(steps, "lvs1") == ["ipvsadm -e -t 10.77.0.100:80 -r 10.77.0.21:80 -g -w 1"]
    assert " ".join(steps[0].undo[0]).endswith("-m -w 1")


def test_changed_scheduler_edits_with_full_spec() -> None:
    table = IpvsTable(available=True, services=(svc(sched="rr", persistence=300),),
                      destinations=(dest("web1", 1), dest("web2", 2)))  # fmt: skip
    d = desired("ipvsadm")
    _, steps, _ = plan(d, {"lvs1": facts("lvs1", ipvs=table, ledger=OWNED)})
    # -E resets what it omits: without persistence in the desired state, -p must go; the undo
    # puts back the whole observed spec.
    assert commands(steps, "lvs1") == ["ipvsadm -E -t 10.77.0.100:80 -s wlc"]
    assert steps[0].undo == (_argv("ipvsadm -E -t 10.77.0.100:80 -s rr -p 300"),)


def test_removed_real_server_drains_then_deletes() -> None:
    table = IpvsTable(available=True, services=(svc(),),
                      destinations=(dest("web1", 1), dest("web2", 2), dest("web3", 3)))  # fmt: skip
    owned = dict(OWNED)
    owned["ipvs.real_server_present"] += (f"{SVC_KEY} 10.77.0.23:80",)
    lows, steps, _ = plan(desired("ipvsadm"), {"lvs1": facts("lvs1", ipvs=table, ledger=owned)})
    assert commands(steps, "lvs1") == [
        "ipvsadm -e -t 10.77.0.100:80 -r 10.77.0.23:80 -g -w 0",
        "ipvsadm -d -t 10.77.0.100:80 -r 10.77.0.23:80",
    ]
    drain, delete = steps
    assert drain.drain is not None
    assert (drain.drain.service, drain.drain.real_server) == (SVC_KEY, "10.77.0.23:80")
    assert drain.drain.timeout == 30.0
    assert delete.require == (drain.id,) and delete.drain is None
    assert [" ".join(u) for u in drain.undo] == [
        "ipvsadm -e -t 10.77.0.100:80 -r 10.77.0.23:80 -g -w 3"
    ]
    assert [" ".join(u) for u in delete.undo] == [
        "ipvsadm -a -t 10.77.0.100:80 -r 10.77.0.23:80 -g -w 0"
    ]
    absent = next(lw for lw in lows if lw.function == "ipvs.real_server_absent")
    # Present real servers of the same service come first; the ledger forgets it afterwards.
    assert "ipvs-rs:web:http:web1" in absent.require
    assert absent.args["ledger"] == [{"function": "ipvs.real_server_present", "op": "remove",
                                      "keys": [f"{SVC_KEY} 10.77.0.23:80"]}]  # fmt: skip
    _no_flush(steps)


def test_foreign_entries_survive() -> None:
    # Not in the ledger: someone else's service and destination; nothing is removed.
    table = IpvsTable(available=True, services=(svc(), svc(address="10.77.0.150")),
                      destinations=(dest("web1", 1), dest("web2", 2), dest("web3", 1),
                                    dest("web3", 1, vip="10.77.0.150")))  # fmt: skip
    f = {h: facts(h, ipvs=table, ledger=OWNED) for h in ("lvs1", "lvs2")}
    _, steps, skipped = plan(desired("ipvsadm"), f)
    assert steps == [] and skipped == []


def test_removed_service_drains_every_destination_then_deletes() -> None:
    d = desired("ipvsadm", services=[])
    table = IpvsTable(available=True, services=(svc(),),
                      destinations=(dest("web1", 1), dest("web2", 2)))  # fmt: skip
    lows, steps, _ = plan(d, {"lvs1": facts("lvs1", ipvs=table, ledger=OWNED)})
    assert commands(steps, "lvs1") == [
        "ipvsadm -e -t 10.77.0.100:80 -r 10.77.0.21:80 -g -w 0",
        "ipvsadm -d -t 10.77.0.100:80 -r 10.77.0.21:80",
        "ipvsadm -e -t 10.77.0.100:80 -r 10.77.0.22:80 -g -w 0",
        "ipvsadm -d -t 10.77.0.100:80 -r 10.77.0.22:80",
        "ipvsadm -D -t 10.77.0.100:80",
    ]
    svc_absent = next(lw for lw in lows if lw.function == "ipvs.service_absent")
    rs_absent = {lw.id for lw in lows if lw.function == "ipvs.real_server_absent"}
    assert set(svc_absent.require) == rs_absent and len(rs_absent) == 2
    assert steps[-1].undo == (_argv("ipvsadm -A -t 10.77.0.100:80 -s wlc"),)
    _no_flush(steps)


def test_unknown_facts_plan_no_removal() -> None:
    d = desired("ipvsadm", services=[])
    _, steps, skipped = plan(
        d, {"lvs1": facts("lvs1", ledger=OWNED, ipvs_unknown="ipvsadm failed")}
    )
    assert steps == [] and len(skipped) == 1 and "IPVS table unknown" in skipped[0].reason
    d = desired("ipvsadm")
    _, steps, skipped = plan(d, {"lvs1": facts("lvs1", ledger_unknown="unreadable")})
    assert ["ledger unknown" in s.reason for s in skipped if s.host == "lvs1"] == [True]
    assert len(commands(steps, "lvs1")) == 5  # the desired side is still planned


def test_restore_lines() -> None:
    d = desired("ipvsadm")
    assert ipvs_restore_lines(d, "lvs2") == [
        "ipvsadm -A -t 10.77.0.100:80 -s wlc",
        "ipvsadm -a -t 10.77.0.100:80 -r 10.77.0.21:80 -g -w 1",
        "ipvsadm -a -t 10.77.0.100:80 -r 10.77.0.22:80 -g -w 2",
    ]
    assert [shlex.join(a) for a in ipvs_restore_commands(d, "lvs1")] == ipvs_restore_lines(
        d, "lvs1"
    )
    assert ipvs_restore_lines(desired("keepalived"), "lvs1") == []
    assert ipvs_restore_lines(d, "web1") == []


def test_director_vip_is_announced_and_real_server_vips_never_are() -> None:
    from states.base import PlanContext
    from states.registry import kind_of

    d = desired("ipvsadm")
    f = {h: facts(h) for h in ("lvs1", "lvs2")}
    lows, _, _ = plan(d, f)
    (vip_low,) = [low for low in lows if low.function == "addr.present"]
    (vip_step,) = kind_of("addr.present").run(vip_low, PlanContext(desired=d, facts=f)).steps
    assert vip_step.host == "lvs1"
    add, announce = vip_step.commands
    assert add == ("ip", "addr", "add", "10.77.0.100/32", "dev", "eth0")
    # The address and interface are positional parameters of the script, never part of it.
    assert announce[:2] == ("sh", "-c") and "10.77.0.100" not in announce[2]
    assert announce[-2:] == ("eth0", "10.77.0.100") and "arping -U" in announce[2]
