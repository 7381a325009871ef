"""The bounds of every path and query parameter of the API, in one place.

Each parameter says in the OpenAPI what the server accepts, so a client (or a fuzzer) learns the
limits from the schema and anything outside them is a 422 before a route runs: names follow the
config loader's name rule, ids are the lowercase hex the store hands out, and integers stay
inside SQLite's signed 64-bit INTEGER.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

from reconciler.desired.models import NAME_PATTERN
from reconciler.server.store.records import PlanState

# SQLite stores INTEGER as a signed 64-bit value; a larger bound parameter overflows.
SQLITE_INT_MAX = 2**63 - 1
# Plan ids hash the plan (reconciler.plan.steps.plan_id); run ids are random; both 16 hex digits.
ID_PATTERN = r"^[0-9a-f]{16}$"
# Audit actions are dotted lowercase words: plan.approved, drift.detected, run.interrupted.
ACTION_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$"

PlanIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="a plan id (16 hex digits)")]
RunIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="a run id (16 hex digits)")]
HostNamePath = Annotated[
    str, Path(pattern=NAME_PATTERN, max_length=63, description="a host of the inventory")
]
ClusterNamePath = Annotated[
    str, Path(pattern=NAME_PATTERN, max_length=63, description="a cluster of the repository")
]
ClusterQuery = Annotated[
    str | None,
    Query(pattern=NAME_PATTERN, max_length=63, description="only this cluster's records"),
]
PlanStateQuery = Annotated[PlanState | None, Query(description="only plans in this state")]
ActionQuery = Annotated[
    str | None,
    Query(
        pattern=ACTION_PATTERN, max_length=64, description="only this action, e.g. plan.approved"
    ),
]
# Actors are `token:NAME`, `controller`, `cli` or `policy:KEY=VALUE`: printable, no spaces.
ActorQuery = Annotated[
    str | None,
    Query(pattern=r"^[A-Za-z0-9_.:=@-]{1,128}$", description="only this actor, e.g. token:alice"),
]
AfterIdQuery = Annotated[
    int, Query(ge=0, le=SQLITE_INT_MAX, description="only records with a larger id")
]

LimitQuery = Annotated[int, Query(ge=1, le=1000, description="at most this many records")]
