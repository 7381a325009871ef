"""Structured logs: one JSON object per line, with the `extra={...}` fields of each call.

`log_context(plan_id=..., run_id=..., clusters=...)` adds ids to every line logged inside it,
by any module, in the task that entered it and the tasks it starts (a context variable): the
executor's and the transport's lines of a run carry the run's ids, so `shoal serve`'s output
can be followed by plan, run or cluster without each call site repeating them.

Secrets never reach a log line because nothing that logs is handed one: tokens are checked by
hash, the webhook secret is compared and dropped, and URLs are redacted before they are logged.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


# Read-only mappings: a block replaces the value, never changes it in place.
_CONTEXT: ContextVar[Mapping[str, Any]] = ContextVar("shoal_log_context",
                                                     default=MappingProxyType({}))  # fmt: skip


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add `fields` to every line logged inside the block (nested blocks add to the outer)."""
    token = _CONTEXT.set(MappingProxyType({**_CONTEXT.get(), **fields}))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_CONTEXT.get())
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log would print every request path; keep its errors, in our format.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
