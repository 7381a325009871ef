"""A failed verification after every phase applied: every host phase is rolled back, latest
phase and batch first, each proven (fake hosts; tests/lab/test_executor_verify.py runs it for
real, with real traffic). The verification itself is replaced: only its verdict matters here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import pytest

from reconciler.apply import final_verify
from reconciler.apply.executor import apply_plan
from reconciler.desired.models import ApplySettings, Desired, Settings, VerifySettings
from reconciler.facts.hostfacts import HostFacts
from reconciler.plan.steps import Phase
from reconciler.transport.protocol import Transport
from reconciler.verify.result import VerificationFailure, VerificationResult
from tests.statecases import cluster_desired
from tests.unit.apply.fake_hosts import (
    ARP_IGNORE,
    FakeHost,
    fake_transport,
    join_steps,
    make_plan,
)


def _failing_verification(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    asked: list[tuple[str, ...]] = []

    async def verify(
        desired: Desired,
        transport: Transport,
        facts: Mapping[str, HostFacts] | None = None,
        *,
        clusters: Iterable[str] | None = None,
    ) -> VerificationResult:
        asked.append(tuple(clusters or ()))
        failure = VerificationFailure(check="traffic", host="web2", message="web2 got nothing")
        return VerificationResult(ok=False, failures=(failure,))

    monkeypatch.setattr(final_verify, "verify_desired", verify)
    return asked


async def test_a_failed_verification_rolls_back_every_phase_latest_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked = _failing_verification(monkeypatch)
    desired = cluster_desired().model_copy(
        update={
            "settings": Settings(
                apply=ApplySettings(batch_size=1, lockout_timeout=5),
                verify=VerifySettings(clients=("client1",)),
            )
        }
    )
    hosts = [FakeHost(h) for h in ("web1", "web2", "lvs1", "lvs2")]
    plan = make_plan(
        {
            "web1": join_steps("web1"),
            "web2": join_steps("web2"),
            "lvs2": join_steps("lvs2", Phase.DIRECTOR_BACKUP),
            "lvs1": join_steps("lvs1", Phase.DIRECTOR_PRIMARY),
        }
    ).model_copy(update={"clusters": ("web",)})
    result = await apply_plan(plan, desired, fake_transport(*hosts))
    assert asked == [("web",)]
    assert not result.ok
    # The directors stop sending to a real server before it is undone.
    assert [(r.host, r.phase, r.by, r.proven) for r in result.rollbacks] == [
        ("lvs1", "director_primary", "controller", True),
        ("lvs2", "director_backup", "controller", True),
        ("web2", "real_servers_prepare", "controller", True),
        ("web1", "real_servers_prepare", "controller", True),
    ]
    assert [(e.kind, e.host, e.step_id) for e in result.errors] == [
        ("VerificationError", "web2", "verify/traffic")
    ]
    assert result.comment.startswith("verification failed (traffic check, host web2): ")
    assert all(h.sysctls[ARP_IGNORE] == "0" for h in hosts)
