"""The one error tree of shoal; the class of an error decides what the controller does next.

```
ShoalError
├── Stalled                    the operator must change something (git, inventory); no retry
│   ├── DesiredStateInvalid    the config repo failed validation (carries every ConfigIssue)
│   ├── RequisiteCycle         requisites of low states form a cycle (names it)
│   ├── HostKeyRejected        a host presented an unknown or changed key (carries the fingerprint)
│   └── PrivilegeMissing     sudo refused the login, nothing ran (names the user, what is missing)
├── Waiting                    nothing is wrong, the plan waits; re-plan later
│   ├── ApprovalRequired       a plan waits for a person
│   └── StalePlan              facts changed between plan and approval (HTTP 409)
└── Transient                  retry with backoff
    ├── SourceError            git fetch/clone failed
    ├── TransportError         anything between us and a host
    │   ├── HostUnreachable    connect failed or timed out
    │   ├── CommandTimeout     a remote command ran past its timeout
    │   └── CommandFailed      a remote command exited non-zero where success was required
    ├── FactParseError         a tool printed something the parser does not understand
    └── ApplyError             a step failed; its host was rolled back
        └── RollbackError      the rollback could not prove the host equals its pre-apply facts
```

What the controller does for each class is one function, `reconciler.server.retry.retry_decision`:
Stalled waits for a new revision, Waiting re-plans at once, ApplyError (and RollbackError) gives
up on that plan (a new revision or new facts make a new one), any other Transient is retried with
capped exponential backoff and jitter; anything outside the tree is a bug, given up and logged.

Messages never contain secrets (keys, tokens, webhook secrets).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


class ShoalError(Exception):
    """Base of every error shoal raises on purpose."""


class Stalled(ShoalError):
    """The operator has to change something; retrying the same input cannot help."""


class Waiting(ShoalError):
    """Not a failure: the plan waits for approval or must be made again."""


class Transient(ShoalError):
    """May succeed on retry (with backoff)."""


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One validation error, located as precisely as the input allows."""

    file: str
    message: str
    key_path: str = ""
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        if self.key_path:
            where += f": {self.key_path}"
        return f"{where}: {self.message}"


def issue_dicts(issues: Iterable[ConfigIssue]) -> list[dict[str, Any]]:
    """Config issues as JSON objects: the located fields, and the one-line text."""
    return [
        {
            "file": i.file,
            "line": i.line,
            "column": i.column,
            "key_path": i.key_path,
            "message": i.message,
            "text": str(i),
        }
        for i in issues
    ]


class DesiredStateInvalid(Stalled, ValueError):
    """The config repository is invalid; nothing may be planned from it."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


class RequisiteCycle(Stalled):
    """Requisites between low states form a cycle."""

    def __init__(self, host: str, cycle: list[str]) -> None:
        self.host = host
        self.cycle = cycle
        super().__init__(f"{host}: requisite cycle: {' -> '.join(cycle)}")


class HostKeyRejected(Stalled):
    """The host's key is not the one pinned in known_hosts."""

    def __init__(self, host: str, fingerprint: str, detail: str = "") -> None:
        self.host = host
        self.fingerprint = fingerprint
        msg = f"{host}: host key {fingerprint} is not trusted by known_hosts"
        super().__init__(f"{msg}: {detail}" if detail else msg)


class PrivilegeMissing(Stalled):
    """The login user may not run shoal's scripts as root on the host; nothing ran there."""

    def __init__(self, host: str, user: str, missing: str) -> None:
        self.host = host
        self.user = user
        self.missing = missing
        super().__init__(f"{host}: login user {user} cannot run shoal as root: {missing}")


class ApprovalRequired(Waiting):
    """A plan is pending and needs a person's approval."""

    def __init__(self, plan_id: str) -> None:
        self.plan_id = plan_id
        super().__init__(f"plan {plan_id} waits for approval")


class StalePlan(Waiting):
    """Facts or revision changed since the plan was made."""

    def __init__(self, plan_id: str, hosts: list[str]) -> None:
        self.plan_id = plan_id
        self.hosts = hosts
        super().__init__(f"plan {plan_id} is stale: facts changed on {', '.join(hosts)}")


class SourceError(Transient):
    """The config repository could not be fetched."""


class TransportError(Transient):
    """Something failed between the controller and a host."""

    def __init__(self, host: str, message: str) -> None:
        self.host = host
        super().__init__(f"{host}: {message}")


class HostUnreachable(TransportError):
    """The host could not be reached (connect refused, timed out, link down)."""


class CommandTimeout(TransportError):
    """A remote command ran longer than its timeout."""


class CommandFailed(TransportError):
    """A remote command exited non-zero where success was required."""

    def __init__(self, host: str, argv: tuple[str, ...], exit_status: int, stderr: str) -> None:
        self.argv = argv
        self.exit_status = exit_status
        self.stderr = stderr
        super().__init__(host, f"{' '.join(argv)!r} exited {exit_status}: {stderr.strip()}")


class FactParseError(Transient):
    """A tool's output did not parse."""

    def __init__(self, fact: str, detail: str) -> None:
        self.fact = fact
        super().__init__(f"cannot parse {fact}: {detail}")


class ApplyError(Transient):
    """A step failed; the host it ran on was rolled back."""

    def __init__(self, host: str, step_id: str, detail: str) -> None:
        self.host = host
        self.step_id = step_id
        super().__init__(f"{host}: step {step_id} failed: {detail}")


class RollbackError(ApplyError):
    """The rollback ran but the host does not equal its pre-apply facts."""
