"""A host where shoal would not run as root gets no step: the planner blocks it first, with the
host, the user and what to change, and plans every other host as before."""

from __future__ import annotations

from typing import Literal

import pytest

from reconciler.desired.models import Desired
from reconciler.facts.hostfacts import Fact, HostFacts, Login
from reconciler.plan.planner import plan_desired
from tests.statecases import cluster_desired, fresh_facts
from tests.unit.plan.plan_support import facts_for


def with_login(
    desired: Desired, host: str, *, become: Literal["none", "sudo"], become_user: str = "root"
) -> Desired:
    hosts = dict(desired.inventory.hosts)
    hosts[host] = hosts[host].model_copy(
        update={"user": "deploy", "become": become, "become_user": become_user}
    )
    return desired.model_copy(
        update={"inventory": desired.inventory.model_copy(update={"hosts": hosts})}
    )


def as_user(host: str, uid: int, user: str) -> HostFacts:
    return fresh_facts(host).model_copy(update={"login": Fact.of(Login(uid=uid, user=user))})


def test_root_login_plans_as_before() -> None:
    d = cluster_desired()
    plan = plan_desired(d, facts_for(d))
    assert not plan.unread
    assert plan.hosts["web1"].steps


def test_a_non_root_login_without_become_is_blocked_with_the_fix() -> None:
    d = with_login(cluster_desired(), "web1", become="none")
    plan = plan_desired(d, facts_for(d, web1=as_user("web1", 1001, "deploy")))
    hp = plan.hosts["web1"]
    assert hp.steps == ()
    assert hp.blocked == (
        "web1: login user deploy (uid 1001) is not root and become is not set: shoal changes "
        'need root; set become = "sudo" for web1 in inventory.toml (or under [login] in '
        "shoal.toml) and install what `shoal sudoers` prints"
    )
    assert plan.unread == {"web1": hp.blocked}
    assert plan.hosts["web2"].steps  # the others are planned; the apply decides whether to stop


def test_a_become_user_that_is_not_root_is_blocked() -> None:
    d = with_login(cluster_desired(), "web1", become="sudo", become_user="ops")
    plan = plan_desired(d, facts_for(d, web1=as_user("web1", 1002, "ops")))
    assert plan.hosts["web1"].blocked == (
        "web1: sudo -u ops runs shoal as ops (uid 1002), not root: shoal changes need root; "
        'set become_user = "root"'
    )


def test_sudo_to_root_plans_normally() -> None:
    d = with_login(cluster_desired(), "web1", become="sudo")
    plan = plan_desired(d, facts_for(d, web1=as_user("web1", 0, "root")))
    assert plan.hosts["web1"].blocked is None
    assert plan.hosts["web1"].steps


def test_a_sudo_refusal_blocks_with_its_own_message() -> None:
    d = with_login(cluster_desired(), "web1", become="sudo")
    why = "web1: login user deploy cannot run shoal as root: sudo: a password is required"
    refused = HostFacts.all_unknown("web1", "sudo refused").model_copy(
        update={"privilege_error": why}
    )
    plan = plan_desired(d, facts_for(d, web1=refused))
    assert plan.hosts["web1"].blocked == why
    assert plan.hosts["web1"].steps == ()


@pytest.mark.parametrize("reason", ["login section missing", "id: cannot find name"])
def test_an_unknown_login_blocks_a_host_that_answered(reason: str) -> None:
    d = cluster_desired()
    facts = fresh_facts("web1").model_copy(update={"login": Fact[Login].unknown(reason)})
    plan = plan_desired(d, facts_for(d, web1=facts))
    assert plan.hosts["web1"].blocked == f"web1: cannot tell which user shoal runs as: {reason}"


def test_an_unreachable_host_stays_unreachable_not_blocked() -> None:
    d = cluster_desired()
    plan = plan_desired(
        d, facts_for(d, web1=HostFacts.all_unknown("web1", "connect timed out"))
    )
    hp = plan.hosts["web1"]
    assert (hp.reachable, hp.blocked) == (False, None)
