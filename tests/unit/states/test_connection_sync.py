"""Connection sync between a cluster's directors (issue 18): keepalived's lvs_sync_daemon, the
checks that refuse what cannot run, and the nftables backend's note in the plan."""

from __future__ import annotations

import subprocess
from pathlib import Path

from reconciler.desired.models import Cluster, Desired
from reconciler.plan.compile_nftables import failover_notes
from states.keepalived import validate_argv
from states.keepalived_conf import render_keepalived_conf
from tests.unit.states.director_fixtures import desired
from tests.unit.states.test_director_keepalived import _keepalived


def with_sync(d: Desired, sync_id: int = 7, sync_interface: str | None = None) -> Desired:
    web = d.clusters["web"]
    header = web.cluster.model_copy(
        update={"sync": web.cluster.sync.model_copy(update={"enabled": True, "sync_id": sync_id})}
    )
    hosts = dict(d.inventory.hosts)
    if sync_interface is not None:
        hosts["lvs2"] = hosts["lvs2"].model_copy(update={"sync_interface": sync_interface})
    inventory = d.inventory.model_copy(update={"hosts": hosts})
    clusters = {"web": Cluster.model_validate({**web.model_dump(by_alias=True),
                                               "cluster": header.model_dump()})}  # fmt: skip
    return d.model_copy(update={"clusters": clusters, "inventory": inventory})


def test_both_directors_run_the_sync_daemon_for_the_cluster_instance() -> None:
    d = with_sync(desired("keepalived"), sync_interface="eth1")
    lvs1 = render_keepalived_conf(d, "lvs1")
    lvs2 = render_keepalived_conf(d, "lvs2")
    assert "global_defs {\n    router_id lvs1\n    lvs_sync_daemon eth0 VI_web id 7\n}\n" in lvs1
    assert "    lvs_sync_daemon eth1 VI_web id 7\n" in lvs2
    # The primary starts as backup and waits before it takes the VIP back.
    assert "    state BACKUP\n    interface eth0\n    virtual_router_id 51\n    priority 150\n" \
        "    advert_int 1\n    preempt_delay 15\n" in lvs1
    assert "preempt_delay" not in lvs2 and "    state BACKUP\n" in lvs2


def test_without_sync_nothing_changes() -> None:
    text = render_keepalived_conf(desired("keepalived"), "lvs1")
    assert "lvs_sync_daemon" not in text and "preempt_delay" not in text
    assert "    state MASTER\n" in text


def test_keepalived_accepts_the_sync_daemon(tmp_path: Path) -> None:
    _keepalived()
    conf = tmp_path / "keepalived.conf"
    for host in ("lvs1", "lvs2"):
        text = render_keepalived_conf(with_sync(desired("keepalived")), host)
        conf.write_text(text)
        res = subprocess.run(validate_argv(str(conf), text), capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr


def test_the_nftables_backend_says_what_a_failover_keeps() -> None:
    d = with_sync(desired("nftables"))
    (note,) = failover_notes(d, "lvs1")
    assert note.startswith("lvs1: cluster web asks for connection sync, which the nftables "
                           "backend cannot do")  # fmt: skip
    assert failover_notes(d, "web1") == ()
    assert failover_notes(desired("nftables"), "lvs1") == ()
