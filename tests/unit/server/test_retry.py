"""The class of an error decides the retry (DESIGN.md): `retry_decision` over the whole tree."""

from __future__ import annotations

import inspect
import random

import pytest

import reconciler.errors as errors_module
import reconciler.server.lifecycle as lifecycle_module
from reconciler.errors import (
    ApplyError,
    ApprovalRequired,
    CommandFailed,
    CommandTimeout,
    ConfigIssue,
    DesiredStateInvalid,
    FactParseError,
    HostKeyRejected,
    HostUnreachable,
    PrivilegeMissing,
    RequisiteCycle,
    RollbackError,
    ShoalError,
    SourceError,
    StalePlan,
    Stalled,
    Transient,
    TransportError,
    Waiting,
)
from reconciler.server.lifecycle import (
    AlreadyApproved,
    AlreadyOverridden,
    PlanNotFound,
    PlanNotPending,
    StaleApproval,
)
from reconciler.server.retry import (
    BACKOFF_CAP,
    GiveUp,
    Requeue,
    RetryDecision,
    WaitForRevision,
    backoff,
    retry_decision,
)


def top(low: float, high: float) -> float:
    return high


# Every error and what it must lead to: "revision", "now" (re-plan), "backoff", "give up", "bug".
TREE: list[tuple[Exception, str]] = [
    (Stalled("operator"), "revision"),
    (DesiredStateInvalid([ConfigIssue("clusters/web.toml", "bad scheduler", line=3)]), "revision"),
    (RequisiteCycle("web1", ["a", "b", "a"]), "revision"),
    (HostKeyRejected("web1", "SHA256:abc"), "revision"),
    (PrivilegeMissing("web1", "deploy", "sudo: a password is required"), "revision"),
    (Waiting("later"), "now"),
    (ApprovalRequired("p" * 16), "now"),
    (StalePlan("p" * 16, ["web1"]), "now"),
    (PlanNotPending("p" * 16, "applied"), "now"),
    (AlreadyApproved("p" * 16, "token:alice", 2), "now"),
    (AlreadyOverridden("p" * 16), "now"),
    (StaleApproval("p" * 16, ["web1"], "facts changed on web1", None), "now"),
    (Transient("again"), "backoff"),
    (SourceError("cannot fetch"), "backoff"),
    (TransportError("web1", "channel closed"), "backoff"),
    (HostUnreachable("web1", "connect timed out"), "backoff"),
    (CommandTimeout("web1", "sh -s ran past 30s"), "backoff"),
    (CommandFailed("web1", ("ip", "-j", "addr"), 1, "oops"), "backoff"),
    (FactParseError("sysctl", "unexpected line"), "backoff"),
    (ApplyError("web1", "web1/vip/add", "exit 2"), "give up"),
    (RollbackError("web1", "web1/vip/add", "not at pre-apply"), "give up"),
    (ShoalError("on purpose"), "give up"),
    (PlanNotFound("p" * 16), "give up"),
    (ValueError("a bug"), "bug"),
    (KeyError("web9"), "bug"),
    (ExceptionGroup("units failed", [RuntimeError("x")]), "bug"),
]


def kind(decision: RetryDecision) -> str:
    match decision:
        case WaitForRevision():
            return "revision"
        case Requeue(after=0.0):
            return "now"
        case Requeue():
            return "backoff"
        case GiveUp(bug=True):
            return "bug"
        case GiveUp():
            return "give up"
    raise AssertionError(decision)


@pytest.mark.parametrize(("exc", "expected"), TREE, ids=[type(e).__name__ for e, _ in TREE])
def test_every_error_class_decides_its_retry(exc: Exception, expected: str) -> None:
    decision = retry_decision(exc, attempt=1, uniform=top)
    assert kind(decision) == expected
    assert decision.reason


def test_the_table_covers_the_whole_tree() -> None:
    tree = {
        cls
        for module in (errors_module, lifecycle_module)
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, ShoalError)
    }
    assert tree <= {type(exc) for exc, _ in TREE}


def test_a_bug_names_its_type() -> None:
    decision = retry_decision(KeyError("web9"), attempt=1, uniform=top)
    assert decision == GiveUp("KeyError: 'web9'", bug=True)


def test_transport_backoff_doubles_per_attempt_up_to_the_cap() -> None:
    ceilings = [backoff(n, top) for n in range(1, 12)]
    assert ceilings == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 300.0, 300.0]
    assert backoff(10_000, top) == BACKOFF_CAP  # no overflow, however many failures


def test_jitter_draws_from_the_upper_half_of_the_interval() -> None:
    drawn: list[tuple[float, float]] = []

    def record(low: float, high: float) -> float:
        drawn.append((low, high))
        return low

    assert backoff(3, record) == 2.0
    assert drawn == [(2.0, 4.0)]
    rng = random.Random(14)
    for attempt in range(1, 20):
        decision = retry_decision(
            HostUnreachable("web1", "down"), attempt=attempt, uniform=rng.uniform
        )
        assert isinstance(decision, Requeue)
        ceiling = min(BACKOFF_CAP, 2.0 ** (attempt - 1))
        assert ceiling / 2 <= decision.after <= ceiling
