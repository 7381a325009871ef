"""The plan's value types: low states, steps, phases, and the plan itself.

A low state (Salt's term) is one addressable unit of desired state: an id, a function such as
`sysctl.present`, its arguments and its requisites. States (`states/`) turn one low state plus a
host's facts into zero or more Steps; an empty list means in sync. Planning across hosts and
ordering live in `reconciler.plan.planner`; running steps lives in `reconciler.apply.executor`.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from enum import IntEnum
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

Argv = tuple[str, ...]

Subsystem = Literal[
    "pkg", "arp", "addr", "sysctl", "iptables", "nft", "ipvs", "keepalived", "file", "service"
]


class Phase(IntEnum):
    """Cross-host order, from DESIGN.md's LVS-DR safety rules.

    Real servers are prepared (ARP suppression, then VIP) before any director sends them
    traffic; the backup director changes before the primary; real servers leave the directors
    (drained) before their VIP and ARP suppression go away.
    """

    PACKAGES = 10
    REAL_SERVERS_PREPARE = 20
    DIRECTOR_BACKUP = 30
    DIRECTOR_PRIMARY = 40
    REAL_SERVERS_CLEANUP = 50
    EXTRA = 60


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


class LowState(_Value):
    """One compiled state: `function` applied with `args` on `host`."""

    id: str
    function: str
    host: str
    args: dict[str, Any] = Field(default_factory=dict)
    require: tuple[str, ...] = ()
    watch: tuple[str, ...] = ()
    onchanges: tuple[str, ...] = ()
    phase: Phase = Phase.EXTRA
    origin: str = "compiled"  # "compiled" from the cluster model, or "file:key" for [[state]]


class FileWrite(_Value):
    """A file the executor writes on the host (atomically: temp file, then rename)."""

    path: str
    content: str
    mode: str = "0644"


class Change(_Value):
    """Before/after for the diff (text, one item per line)."""

    before: str | None = None
    after: str | None = None


class Step(_Value):
    """One ordered, explainable change on one host, with how to undo it."""

    id: str  # "<host>/<state id>/<action>", stable across runs
    host: str
    state_id: str
    function: str
    subsystem: Subsystem
    phase: Phase
    description: str
    change: Change = Change()
    commands: tuple[Argv, ...] = ()
    writes: tuple[FileWrite, ...] = ()
    undo: tuple[Argv, ...] = ()
    require: tuple[str, ...] = ()  # step ids that must run first
    # Seconds to wait after the commands, e.g. a drain; the executor turns it into a poll.
    drain: DrainWait | None = None
    # Run at the very end of a rollback that undid this step (after every undo and file
    # restore), if the step had started: a restart that picked up a watched change must run
    # again once the old file is back, or the daemon keeps the new config (or stays down).
    after_rollback: tuple[Argv, ...] = ()


class DrainWait(_Value):
    """Wait until an IPVS destination has no connections, or the timeout passes."""

    service: str  # e.g. "tcp 10.77.0.100:80"
    real_server: str  # "10.77.0.21:80"
    timeout: float


class SkippedRemoval(_Value):
    """Something the planner did not plan, and why; shown with the plan.

    `fact_unknown`: because a fact of the host could not be read. Such a host gets no step at
    all (its HostPlan is `blocked`): what was planned around the gap could be unsafe alone.
    """

    host: str
    state_id: str
    reason: str
    fact_unknown: bool = False


class HostPlan(_Value):
    host: str
    facts_digest: str
    reachable: bool = True
    unknown_reason: str | None = None
    steps: tuple[Step, ...] = ()
    skipped: tuple[SkippedRemoval, ...] = ()
    # Why nothing may change on this reachable host ("web3: /var/lib/shoal/ledger.json:
    # Permission denied"): a fact a step depends on, or the ledger, could not be read.
    blocked: str | None = None
    # LVS-DR safety rules the host's facts (or this plan) break: the host is refused, no steps.
    violations: tuple[str, ...] = ()
    # What the plan found and says, without refusing (a violation it fixes, a seed-form rule).
    notes: tuple[str, ...] = ()


class Plan(_Value):
    """Every host's steps for one revision, ordered by phase; `id` hashes all of it."""

    id: str
    revision: str
    clusters: tuple[str, ...]
    hosts: dict[str, HostPlan]
    low_states: tuple[LowState, ...] = ()

    @property
    def empty(self) -> bool:
        return all(not hp.steps for hp in self.hosts.values())

    @property
    def unread(self) -> dict[str, str]:
        """Host -> why its facts could not be read (unreachable) or were not enough (blocked).
        Such a host has no step, yet nobody knows it is in sync."""
        out: dict[str, str] = {}
        for h, hp in sorted(self.hosts.items()):
            if not hp.reachable:
                out[h] = f"{h}: unreachable ({hp.unknown_reason or 'no reason given'})"
            elif hp.blocked:
                out[h] = hp.blocked
        return out

    @property
    def refused(self) -> dict[str, tuple[str, ...]]:
        """Host -> the safety rules it breaks, for every host the plan refuses."""
        return {h: hp.violations for h, hp in sorted(self.hosts.items()) if hp.violations}

    def steps_in_phase(self, phase: Phase) -> dict[str, tuple[Step, ...]]:
        out: dict[str, tuple[Step, ...]] = {}
        for host, hp in self.hosts.items():
            steps = tuple(s for s in hp.steps if s.phase == phase)
            if steps:
                out[host] = steps
        return out


def plan_id(revision: str, digests: dict[str, str], hosts: dict[str, HostPlan]) -> str:
    """Hash of the revision, every host's fact digest, and every step.

    The hashed text is `json.dumps(body, sort_keys=True)` of
    `{"revision", "digests", "steps": {host: [step, ...]}}`, written out piece by piece: each
    host's steps are serialised once (`host_steps_json`, cached per HostPlan) instead of
    rebuilding one body holding every step of every host.
    """
    # Fed to the hash piece by piece: the whole text of 10,000 hosts (and its bytes) is never
    # held at once.
    h = hashlib.sha256()
    h.update(b'{"digests": ')
    h.update(json.dumps(dict(sorted(digests.items())), sort_keys=True).encode())
    h.update(b', "revision": ')
    h.update(json.dumps(revision).encode())
    h.update(b', "steps": {')
    for i, (host, hp) in enumerate(sorted(hosts.items())):
        h.update(f"{', ' if i else ''}{json.dumps(host)}: {host_steps_json(hp)}".encode())
    h.update(b"}}")
    return h.hexdigest()[:16]


# id(host plan) -> (weak reference, its steps as plan_id hashes them); see HostFacts.digest.
_STEPS_JSON: dict[int, tuple[weakref.ref[HostPlan], str]] = {}


def host_steps_json(hp: HostPlan) -> str:
    """`json.dumps([step.model_dump(mode="json") ...], sort_keys=True)`, once per HostPlan."""
    entry = _STEPS_JSON.get(id(hp))
    if entry is not None and entry[0]() is hp:
        return entry[1]
    steps = hp.model_dump(mode="json", include={"steps"})["steps"] if hp.steps else []
    text = json.dumps(steps, sort_keys=True)
    key = id(hp)
    _STEPS_JSON[key] = (weakref.ref(hp, lambda _r: _STEPS_JSON.pop(key, None)), text)
    return text


_M = TypeVar("_M", bound=BaseModel)


def replace(model: _M, **changes: Any) -> _M:
    """`model.model_copy(update=changes)` without its per-call overhead.

    Like model_copy it does not validate: only for values of the field's type, already checked.
    """
    cls = type(model)
    new = cls.__new__(cls)
    object.__setattr__(new, "__dict__", {**model.__dict__, **changes})
    object.__setattr__(new, "__pydantic_extra__", None)
    fields_set = model.__pydantic_fields_set__ | changes.keys()
    object.__setattr__(new, "__pydantic_fields_set__", fields_set)
    object.__setattr__(new, "__pydantic_private__", None)
    return new


# class -> its fields' defaults (default factories called once: every default here is
# immutable), for `build`.
_DEFAULTS: dict[type[BaseModel], dict[str, Any]] = {}
_REQUIRED: dict[type[BaseModel], frozenset[str]] = {}


def build(cls: type[_M], **fields: Any) -> _M:
    """`cls(**fields)` without validation, for hot paths whose values have the field's type by
    construction (a state's steps); cheaper than both `cls(...)` and `model_construct`."""
    defaults = _DEFAULTS.get(cls)
    if defaults is None:
        defaults = _DEFAULTS[cls] = {
            name: None if f.is_required() else f.get_default(call_default_factory=True)
            for name, f in cls.model_fields.items()
        }
        _REQUIRED[cls] = frozenset(n for n, f in cls.model_fields.items() if f.is_required())
    unknown = fields.keys() - defaults.keys()
    absent = _REQUIRED[cls] - fields.keys()
    if unknown or absent:
        raise TypeError(f"{cls.__name__}: unknown {sorted(unknown)}, missing {sorted(absent)}")
    new = cls.__new__(cls)
    # In field order, as validation leaves it: the JSON dump follows the dict's order.
    object.__setattr__(new, "__dict__", {**defaults, **fields})
    object.__setattr__(new, "__pydantic_extra__", None)
    object.__setattr__(new, "__pydantic_fields_set__", set(fields))
    object.__setattr__(new, "__pydantic_private__", None)
    return new


Step.model_rebuild()
