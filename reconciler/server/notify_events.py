"""The notifications' payloads: what happened to which plan or run, in words a chat can post.

    {"event": "applied", "delivery": "<id of this event>", "at": "2026-...Z",
     "cluster": "web", "plan_id": "...", "run_id": "...", "revision": "<sha>",
     "who": "token:alice", "text": "web: revision 1a2b3c4d5e applied by run ...",
     "link": "https://shoal.example.net/ui/runs/..."}

`text` is the one-line summary (the field chat bridges post); `link` points at the plan's or
the run's page (`link_base` of the receivers file, default the server's listen address).
"""

from __future__ import annotations

import uuid
from typing import Any

from reconciler.server.notify import Notification
from reconciler.server.store.records import PlanRecord


def notification(
    event: str,
    record: PlanRecord,
    *,
    at: str,
    who: str,
    text: str,
    link_base: str,
    run_id: str | None = None,
) -> Notification:
    delivery = uuid.uuid4().hex
    path = f"/ui/runs/{run_id}" if run_id else f"/ui/plans/{record.id}"
    payload: dict[str, Any] = {
        "event": event,
        "delivery": delivery,
        "at": at,
        "cluster": record.cluster,
        "plan_id": record.id,
        "run_id": run_id,
        "revision": record.revision,
        "who": who,
        "text": f"{record.cluster}: {text}",
        "link": link_base + path,
    }
    return Notification(event, delivery, payload)


def plan_words(record: PlanRecord) -> str:
    """"plan ID for REV12: N steps on HOSTS"."""
    hosts = sorted(h for h, hp in record.plan.hosts.items() if hp.steps)
    steps = sum(len(hp.steps) for hp in record.plan.hosts.values())
    return (f"plan {record.id} for {record.revision[:10]}: {steps} step(s) on "
            f"{', '.join(hosts) or 'no host'}")  # fmt: skip
