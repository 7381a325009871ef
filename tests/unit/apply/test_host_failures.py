"""What the executor decides when one host's phase goes wrong, on fake hosts: a failing step, a
channel lost mid-run, a confirmation that cannot get through or comes too late, and a rollback
whose proof does not match.

The lab runs of the same cases are tests/lab/test_executor_rollback.py and
test_executor_lockout.py; here the hosts are `FakeHost`s (tests/unit/apply/fake_hosts.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from reconciler.apply.events import ApplyEvent
from reconciler.apply.executor import apply_plan
from reconciler.errors import RollbackError
from tests.unit.apply.fake_hosts import (
    ARP_ANNOUNCE,
    ARP_IGNORE,
    FakeHost,
    desired_for,
    fake_transport,
    join_steps,
    make_plan,
)

LOCKOUT = 5


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every wait the executor asks for; none is really waited (the tests stay milliseconds)."""
    asked: list[float] = []
    real: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def sleep(seconds: float) -> None:
        if seconds:
            asked.append(seconds)
        await real(0)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    return asked


async def test_a_failing_step_is_restored_by_its_own_phase_and_proven() -> None:
    web1 = FakeHost("web1", fail_step=(1, 3))
    t = fake_transport(web1)
    result = await apply_plan(make_plan({"web1": join_steps("web1")}), desired_for(["web1"]), t)
    assert not result.ok
    (err,) = result.errors
    assert (err.kind, err.step_id) == ("ApplyError", "web1/fake-1/" + ARP_ANNOUNCE)
    assert err.message == f"sysctl -w {ARP_ANNOUNCE}=2 exited 3"
    assert [(s.result, s.rolled_back) for s in result.hosts["web1"]] == [
        (True, True),
        (False, False),
    ]
    (rb,) = result.rollbacks
    assert (rb.by, rb.proven, rb.differences) == ("phase", True, [])
    assert rb.restored == [
        f"undo sysctl -w {ARP_ANNOUNCE}=0: ok",
        f"undo sysctl -w {ARP_IGNORE}=0: ok",
    ]
    # The phase restored itself: the controller sent no rollback, and asked the facts again.
    assert [k for k, _ in web1.asked] == ["facts", "phase", "facts"]
    assert web1.sysctls == {ARP_IGNORE: "0", ARP_ANNOUNCE: "0"}


async def test_a_rollback_whose_proof_does_not_match_is_reported_unproven() -> None:
    web1 = FakeHost("web1", fail_step=(1, 1), restore_leaves=frozenset({ARP_IGNORE}))
    t = fake_transport(web1)
    result = await apply_plan(make_plan({"web1": join_steps("web1")}), desired_for(["web1"]), t)
    (rb,) = result.rollbacks
    assert rb.proven is False
    assert rb.differences[0].startswith("sysctl differs")
    assert any(d.startswith("fact sysctls differs") for d in rb.differences)
    assert rb.digest_after != rb.digest_before
    assert [e.kind for e in result.errors] == ["ApplyError", "RollbackError"]
    with pytest.raises(RollbackError):
        result.raise_for_errors()


async def test_a_refused_confirmation_means_the_host_restores_itself(waits: list[float]) -> None:
    """The phase cut new logins: the confirmation and the first recover attempt are refused, the
    timer restores the host, and the controller proves the timer's restore once it gets in."""
    web1 = FakeHost("web1", refuse_new=2)
    events: list[ApplyEvent] = []
    result = await apply_plan(
        make_plan({"web1": join_steps("web1")}),
        desired_for(["web1"], lockout_timeout=LOCKOUT),
        fake_transport(web1),
        on_event=events.append,
    )
    assert not result.ok and not result.interrupted
    assert "no new SSH connection after the phase (lock-out?)" in result.errors[0].message
    (rb,) = result.rollbacks
    assert (rb.by, rb.proven) == ("timer", True)
    assert result.phases[0].lockout == "fired"
    assert all(s.result and s.rolled_back for s in result.hosts["web1"])
    assert waits == [LOCKOUT + 3]  # once, for the timer's deadline
    assert [e.kind for e in events].count("wait") == 1
    assert [k for k, _ in web1.asked] == [
        "facts",
        "phase",
        "confirm",
        "recover",
        "recover",
        "facts",
    ]


async def test_a_confirmation_that_finds_the_timer_restored_fails_the_host() -> None:
    web1 = FakeHost("web1", timer_first=True)
    result = await apply_plan(
        make_plan({"web1": join_steps("web1")}),
        desired_for(["web1"], lockout_timeout=LOCKOUT),
        fake_transport(web1),
    )
    assert not result.ok
    assert result.errors[0].message == (
        "the lock-out timer restored the host before the confirmation (restored)"
    )
    (rb,) = result.rollbacks
    assert (rb.by, rb.proven) == ("timer", True)
    assert result.phases[0].lockout == "fired"
    assert web1.sysctls[ARP_IGNORE] == "0"


async def test_a_host_lost_mid_run_stays_pending_and_the_rollout_stops(waits: list[float]) -> None:
    """web2 drops its channel after one step and takes no new connection: its rollback is not
    proven either way (pending, its timer restores it), web1 is rolled back, web3 never runs."""
    web1, web3 = FakeHost("web1"), FakeHost("web3")
    web2 = FakeHost("web2", drop_channel_after=1, refuse_new=2)
    plan = make_plan({h: join_steps(h) for h in ("web1", "web2", "web3")})
    t = fake_transport(web1, web2, web3)
    result = await apply_plan(plan, desired_for(["web1", "web2", "web3"], batch_size=1), t)
    assert not result.ok and result.interrupted
    assert [(e.kind, e.host) for e in result.errors] == [("Interrupted", "web2")]
    assert [(r.host, r.by, r.proven) for r in result.rollbacks] == [
        ("web2", "pending", None),
        ("web1", "controller", True),
    ]
    assert (
        "its lock-out timer restores it 5s after its last step"
        in (result.rollbacks[0].differences[0])
    )
    assert waits == [LOCKOUT + 3]
    assert t.calls_to("web3")[1:] == []  # facts only: no phase script
    assert {s.comment for s in result.hosts["web3"]} == {"not run: the rollout stopped"}


async def test_a_lost_channel_is_recovered_when_the_host_answers_again() -> None:
    """The channel drops, the host finishes alone; the recover script restores it and the
    restore is proven (by `recover`), with no wait since the host answers at once."""
    web1 = FakeHost("web1", drop_channel_after=1)
    result = await apply_plan(
        make_plan({"web1": join_steps("web1")}), desired_for(["web1"]), fake_transport(web1)
    )
    assert result.interrupted
    assert result.errors[0].message.startswith("lost the phase: ")
    (rb,) = result.rollbacks
    assert (rb.by, rb.proven) == ("recover", True)
    assert all(s.rolled_back for s in result.hosts["web1"])
    assert web1.sysctls == {ARP_IGNORE: "0", ARP_ANNOUNCE: "0"}
