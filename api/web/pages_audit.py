"""The audit log, filtered by who, what, when and cluster (the store's `list_audit`)."""

from __future__ import annotations

import re
from datetime import date, timedelta

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.deps import get_store
from api.params import ACTION_PATTERN
from api.schemas import audit_out
from api.web.render import render
from api.web.session import PageUser
from reconciler.desired.models import NAME_PATTERN

router = APIRouter(include_in_schema=False)

DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
ACTOR = re.compile(r"^[A-Za-z0-9_.:=@ -]{1,128}$")
LIMIT = 500


def _valid(pattern: re.Pattern[str], value: str) -> bool:
    if not pattern.match(value):
        return False
    if pattern is DATE:
        try:
            date.fromisoformat(value)
        except ValueError:
            return False
    return True


@router.get("/ui/audit")
def audit_log(request: Request, user: PageUser) -> Response:
    q = request.query_params
    wanted = {k: q.get(k, "").strip() for k in ("actor", "action", "cluster", "since", "until")}
    checks = {
        "actor": ACTOR,
        "action": re.compile(ACTION_PATTERN),
        "cluster": re.compile(NAME_PATTERN),
        "since": DATE,
        "until": DATE,
    }
    ignored = [k for k, v in wanted.items() if v and not _valid(checks[k], v)]
    used = {k: (v if v and k not in ignored else None) for k, v in wanted.items()}
    until = used["until"]
    records = get_store(request).list_audit(
        actor=used["actor"],
        action=used["action"],
        cluster=used["cluster"],
        since=used["since"],
        # A day given as "until" includes that whole day.
        until=(date.fromisoformat(until) + timedelta(days=1)).isoformat() if until else None,
        limit=LIMIT,
    )
    return render(
        request,
        "audit.html",
        user,
        entries=[audit_out(r) for r in records],
        filters=wanted,
        ignored=ignored,
        limit=LIMIT,
    )
