"""Outgoing notifications from a real controller to a real HTTP receiver on loopback: every
event once, signed, in order; retried while the receiver is down and delivered when it comes
back; a stuck receiver does not slow the reconcile pass; a full queue drops and counts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from reconciler.cli.main import app
from reconciler.server.notify import Notification, Notifier
from reconciler.server.notify_settings import (
    EVENTS,
    NotifySettingsError,
    Receiver,
    load_notify_settings,
)
from tests.support.notify_receiver import free_port, hanging, receiving, signed_ok, until
from tests.unit.server.fake_cluster import FakeCluster, set_in

SECRET = b"receiver-secret-for-tests"
LINK = "http://127.0.0.1:8080"
WEIGHT_3 = set_in("clusters/web.toml", "weight = 2", "weight = 3")


def notifier_for(fc: FakeCluster, url: str, *, timeout: float = 5.0, queue: int = 100,
                 events: frozenset[str] = frozenset(EVENTS)) -> Notifier:  # fmt: skip
    """A notifier with short backoffs, wired into `fc`'s controller and started."""
    receiver = Receiver("chat", url, SECRET, events, timeout=timeout, queue=queue)
    notifier = Notifier([receiver], fc.controller.metrics, backoff=0.05, max_backoff=0.4)
    fc.controller.ctx.notifier = notifier
    fc.controller.ctx.link_base = LINK
    notifier.start()
    return notifier


def sample(fc: FakeCluster, name: str, **labels: str) -> float:
    text = fc.controller.metrics.render().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


async def test_every_event_once_signed_and_in_order(tmp_path: Path) -> None:
    fc = FakeCluster(tmp_path)
    with receiving(SECRET) as receiver:
        notifier = notifier_for(fc, receiver.url)
        fc.mark_applied(fc.source.head or "")
        await fc.controller.reconcile_once()  # drift found
        (drift,) = fc.store.list_plans()
        await fc.controller.approve(drift.id, actor="token:alice", comment="put it back")
        await fc.controller.wait_idle()  # the fake hosts refuse the apply: the run fails
        (run,) = fc.store.list_runs()
        fc.push(WEIGHT_3)
        await fc.controller.reconcile_once()  # a new revision: a change plan, pending
        change = next(p for p in fc.store.list_plans() if p.kind == "change")
        await until(lambda: len(receiver.got) >= 4, "four notifications")
        await notifier.stop()
    assert receiver.events() == ["drift_found", "plan_approved", "failed", "plan_pending"]
    assert all(r.signed_ok for r in receiver.got)
    assert len({r.headers["X-Shoal-Delivery"] for r in receiver.got}) == 4
    found, approved, failed, pending = (r.payload for r in receiver.got)
    assert (found["plan_id"], found["who"], found["cluster"]) == (drift.id, "controller", "web")
    assert found["text"].startswith("web: drift found: the hosts left revision")
    assert found["link"] == f"{LINK}/ui/plans/{drift.id}"
    assert (approved["who"], approved["run_id"]) == ("token:alice", run.id)
    assert failed["run_id"] == run.id and failed["link"] == f"{LINK}/ui/runs/{run.id}"
    assert failed["text"].startswith(f"web: run {run.id} failed")
    assert (pending["plan_id"], pending["revision"]) == (change.id, fc.source.head)
    assert "waits for approval" in pending["text"]
    for r in receiver.got:
        assert r.headers["X-Shoal-Event"] == r.payload["event"]
        assert r.payload["delivery"] == r.headers["X-Shoal-Delivery"]
    assert sample(fc, "shoal_notifications_total", receiver="chat", result="delivered") == 4
    # A receiver with a wrong secret would refuse them: the signature covers the body.
    bad = receiver.got[0]
    assert not signed_ok(b"another secret", bad.headers, bad.body)


async def test_a_receiver_that_is_down_gets_the_event_when_it_comes_back(
    tmp_path: Path,
) -> None:
    fc = FakeCluster(tmp_path)
    port = free_port()
    notifier = notifier_for(fc, f"http://127.0.0.1:{port}/shoal")
    await fc.controller.reconcile_once()
    await until(lambda: sample(fc, "shoal_notifications_total", result="retried") >= 3,
                "three failed attempts")  # fmt: skip
    assert notifier.queued("chat") == 0  # in the delivery task's hands, not lost
    with receiving(SECRET, port) as receiver:
        await until(lambda: len(receiver.got) == 1, "the delivery after the receiver is back")
        await notifier.stop()
    assert receiver.events() == ["plan_pending"] and receiver.got[0].signed_ok
    assert sample(fc, "shoal_notifications_total", result="delivered") == 1


async def test_a_stuck_receiver_does_not_slow_the_reconcile_pass(tmp_path: Path) -> None:
    # The pass with no receiver, then the same pass (a new revision each time, so that each
    # makes a plan and emits) while the receiver takes connections and never answers.
    fc = FakeCluster(tmp_path)
    started = time.perf_counter()
    await fc.controller.reconcile_once()
    alone = time.perf_counter() - started
    with hanging() as url:
        notifier = notifier_for(fc, url, timeout=5.0)
        timings = []
        for weight in (3, 4, 5):
            fc.push(set_in("clusters/web.toml", "weight = 2", f"weight = {weight}"))
            started = time.perf_counter()
            await fc.controller.reconcile_once()
            timings.append(time.perf_counter() - started)
        await until(lambda: sample(fc, "shoal_notification_queue_depth", receiver="chat") >= 2,
                    "the events queued behind the stuck one")  # fmt: skip
        # Generous: a pass that waited for the receiver would take its 5 s timeout.
        assert max(timings) < max(3 * alone, alone + 1.0), (alone, timings)
        assert sample(fc, "shoal_notifications_total", result="delivered") == 0
        await notifier.stop(timeout=0.1)


async def test_a_full_queue_drops_the_new_event_and_counts_it(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture,
                                                             ) -> None:  # fmt: skip
    fc = FakeCluster(tmp_path)
    with hanging() as url:
        notifier = notifier_for(fc, url, queue=2)
        for i in range(5):
            notifier.emit(Notification("plan_pending", f"d{i}", {"event": "plan_pending"}))
        assert notifier.queued("chat") == 2
        assert sample(fc, "shoal_notifications_dropped_total", receiver="chat") == 3
        dropped = [r for r in caplog.records if "queue is full" in r.getMessage()]
        assert [vars(r)["delivery"] for r in dropped] == ["d2", "d3", "d4"]
        await notifier.stop(timeout=0.1)


async def test_only_the_events_a_receiver_asked_for(tmp_path: Path) -> None:
    fc = FakeCluster(tmp_path)
    with receiving(SECRET) as receiver:
        notifier = notifier_for(fc, receiver.url, events=frozenset({"drift_found"}))
        await fc.controller.reconcile_once()  # a change plan: not wanted
        fc.mark_applied(fc.source.head or "")
        fc.push(WEIGHT_3)
        await fc.controller.reconcile_once()
        await notifier.stop()
    assert receiver.events() == []


def test_the_receivers_file_is_checked(tmp_path: Path) -> None:
    (tmp_path / "chat.secret").write_text("s3cret\n")
    good = tmp_path / "notify.toml"
    good.write_text('link_base = "https://shoal.example.net/"\n[[receiver]]\nname = "chat"\n'
                    'url = "http://127.0.0.1:9/x"\nsecret_file = "chat.secret"\n'
                    'events = ["applied", "rolled_back"]\n')  # fmt: skip
    settings = load_notify_settings(good)
    (chat,) = settings.receivers
    assert (chat.secret, chat.events, settings.link_base) == (
        b"s3cret", frozenset({"applied", "rolled_back"}), "https://shoal.example.net")
    assert "s3cret" not in repr(chat)
    for text, message in [
        ('[[receiver]]\nname = "x"\nurl = "ftp://h/"\nsecret_file = "chat.secret"\n',
         "not an http:// or https:// URL"),
        ('[[receiver]]\nname = "x"\nurl = "http://h/"\nsecret_file = "none"\n',
         "secret_file"),
        ('[[receiver]]\nname = "x"\nurl = "http://h/"\nsecret_file = "chat.secret"\n'
         'events = ["exploded"]\n', "receiver > 0 > events > 0"),
        ('[[receiver]]\nname = "x"\nurl = "http://h/"\n', "secret_file: Field required"),
    ]:
        good.write_text(text)
        with pytest.raises(NotifySettingsError, match=message):
            load_notify_settings(good)


def test_serve_refuses_a_bad_receivers_file_before_it_starts(tmp_path: Path) -> None:
    bad = tmp_path / "notify.toml"
    bad.write_text('[[receiver]]\nname = "chat"\nurl = "http://127.0.0.1:9/"\n'
                   'secret_file = "missing.secret"\n')  # fmt: skip
    result = CliRunner().invoke(app, ["serve", "--repo", str(tmp_path / "repo"), "--state-dir",
                                      str(tmp_path / "state"), "--notify", str(bad)])  # fmt: skip
    assert result.exit_code == 2
    assert f"{bad}: receiver chat: secret_file {tmp_path / 'missing.secret'} cannot be read" in (
        result.output)
    assert not (tmp_path / "state").exists()
