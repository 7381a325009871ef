"""Where outgoing notifications go: the server's receivers file (TOML), never the config repo.

    link_base = "https://shoal.example.net"   # optional: the links in messages start here

    [[receiver]]
    name = "chat"                              # a label in /metrics and the logs
    url = "https://chat-bridge.example.net/hooks/shoal"
    secret_file = "/etc/shoal/chat.secret"     # the HMAC key, read once at start
    events = ["plan_pending", "applied"]       # default: every event
    timeout = 10                               # seconds per attempt
    queue = 1000                               # events held while the receiver is down

A bad file stops `shoal serve` with the file, line and key named; a secret file that cannot be
read or is empty stops it too (a receiver that cannot sign is not a receiver).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from reconciler.desired.models import Name

Event = Literal["plan_pending", "plan_approved", "applied", "verified", "rolled_back", "failed",
                "drift_found"]  # fmt: skip
EVENTS: tuple[Event, ...] = ("plan_pending", "plan_approved", "applied", "verified",
                             "rolled_back", "failed", "drift_found")  # fmt: skip


class NotifySettingsError(ValueError):
    """The receivers file is wrong; the message names the file and the place."""


class _ReceiverModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: Name
    url: str
    secret_file: str
    events: tuple[Event, ...] = Field(default=EVENTS, strict=False, min_length=1)
    timeout: float = Field(default=10.0, gt=0, le=300, strict=False)
    queue: int = Field(default=1000, ge=1, le=100_000)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f'"{value}" is not an http:// or https:// URL')
        return value


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    link_base: str = ""
    receiver: tuple[_ReceiverModel, ...] = Field(default=(), strict=False)


@dataclass(frozen=True)
class Receiver:
    name: str
    url: str
    secret: bytes = field(repr=False)
    events: frozenset[str]
    timeout: float = 10.0
    queue: int = 1000


@dataclass(frozen=True)
class NotifySettings:
    receivers: tuple[Receiver, ...] = ()
    link_base: str = ""


def load_notify_settings(path: Path) -> NotifySettings:
    """Read and check the receivers file; raises NotifySettingsError."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise NotifySettingsError(f"{path}: cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise NotifySettingsError(f"{path}: {exc}") from None
    try:
        parsed = _FileModel.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{' > '.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise NotifySettingsError(f"{path}: {problems}") from None
    names = [r.name for r in parsed.receiver]
    if len(set(names)) != len(names):
        raise NotifySettingsError(f"{path}: two receivers have the same name")
    receivers = []
    for r in parsed.receiver:
        secret_path = Path(r.secret_file)
        if not secret_path.is_absolute():
            secret_path = path.parent / secret_path
        try:
            secret = secret_path.read_bytes().strip()
        except OSError as exc:
            raise NotifySettingsError(
                f"{path}: receiver {r.name}: secret_file {secret_path} cannot be read: "
                f"{exc.strerror}") from None  # fmt: skip
        if not secret:
            raise NotifySettingsError(f"{path}: receiver {r.name}: secret_file {secret_path} "
                                      "is empty")  # fmt: skip
        receivers.append(Receiver(r.name, r.url, secret, frozenset(r.events), r.timeout, r.queue))
    return NotifySettings(tuple(receivers), parsed.link_base.rstrip("/"))
