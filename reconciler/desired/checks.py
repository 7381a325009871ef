"""`check = { ... }` of a service: how a director decides that a real server is up.

Each type takes its own keys (`_CHECK_KEYS`); a key of another type, both a body regex and a
digest, a dns check without a name or a udp check without bytes to send are errors. Every value
ends up in keepalived.conf (states.keepalived_conf) or shoal-healthd's config
(reconciler.plan.compile_health), so the strings are held to what both can carry.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


def _quoted(value: object) -> str:
    """As models.quoted (which imports this module)."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else str(value)


# A health check URL path goes into keepalived.conf and probe argv: no quotes, spaces or '?'.
_URL_PATH_RE = re.compile(r"/[A-Za-z0-9_./~%-]*")


def _check_url_path(value: str) -> str:
    if _URL_PATH_RE.fullmatch(value) is None:
        raise ValueError(
            f"{_quoted(value)} is not a URL path (starts with '/'; letters, digits, '_', '.', "
            "'/', '~', '%', '-')"
        )
    return value


def _check_address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{_quoted(value)} is not an IP address") from None
    return value


# keepalived.conf quotes a regex in double quotes and has no escape for them; a newline would
# end the line. The checker gets the same text.
def _check_regex(value: str) -> str:
    if not value or '"' in value or any(c in value for c in "\n\r\t"):
        raise ValueError(f"{_quoted(value)}: a body regex is one line without '\"'")
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"{_quoted(value)} is not a regular expression ({exc})") from None
    return value


_DNS_NAME_RE = re.compile(r"(?=.{1,253}\.?$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*"
                          r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.?")  # fmt: skip


def _check_dns_name(value: str) -> str:
    if _DNS_NAME_RE.fullmatch(value) is None:
        raise ValueError(f"{_quoted(value)} is not a DNS name")
    return value


def _check_digest(value: str) -> str:
    # keepalived's HTTP_GET digest is the MD5 of the body, as its genhash prints it.
    if re.fullmatch(r"[0-9a-f]{32}", value) is None:
        raise ValueError(f"{_quoted(value)} is not an MD5 digest (32 digits 0-9 a-f)")
    return value


def _check_hex(value: str) -> str:
    if not value or len(value) % 2 or re.fullmatch(r"[0-9a-f]+", value) is None:
        raise ValueError(f"{_quoted(value)} is not bytes in hex (pairs of 0-9 a-f)")
    if len(value) > 2 * 1024:
        raise ValueError("at most 1024 bytes")
    return value


CheckType = Literal["tcp", "http", "https", "dns", "udp", "none"]
# The query types keepalived 2.2's DNS_CHECK knows (keepalived.conf(5)).
DnsType = Literal["A", "AAAA", "CNAME", "MX", "NS", "SOA", "TXT"]
# Which check types take which of the optional keys (the rest are refused by name).
_CHECK_KEYS: dict[str, tuple[str, ...]] = {
    "path": ("http", "https"),
    "expect": ("http", "https"),
    "body_regex": ("http", "https"),
    "digest": ("http", "https"),
    "sni": ("https",),
    "query_name": ("dns",),
    "query_type": ("dns",),
    "answer": ("dns",),
    "send": ("udp",),
    "receive": ("udp",),
}


class HealthCheck(BaseModel):
    """How a director decides that a real server is up (README: "Health checks")."""

    type: CheckType = "tcp"
    path: Annotated[str, AfterValidator(_check_url_path)] = "/"
    expect: int = Field(default=200, ge=100, le=599)
    interval: int = Field(default=5, ge=1, le=3600)
    timeout: int = Field(default=3, ge=1, le=3600)
    body_regex: Annotated[str, AfterValidator(_check_regex)] | None = None
    digest: Annotated[str, AfterValidator(_check_digest)] | None = None
    sni: Annotated[str, AfterValidator(_check_dns_name)] | None = None
    query_name: Annotated[str, AfterValidator(_check_dns_name)] | None = None
    query_type: DnsType = "A"
    answer: Annotated[str, AfterValidator(_check_address)] | None = None
    send: Annotated[str, AfterValidator(_check_hex)] | None = None
    receive: Annotated[str, AfterValidator(_check_hex)] | None = None

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    @model_validator(mode="after")
    def _keys_fit_the_type(self) -> HealthCheck:
        # A key at its default counts as not given: a model dumped and read again has them all.
        for key, types in _CHECK_KEYS.items():
            given = getattr(self, key) != type(self).model_fields[key].default
            if given and self.type not in types:
                raise ValueError(
                    f"{key} is a key of {' and '.join(types)} checks, not of {self.type}"
                )
        if self.body_regex is not None and self.digest is not None:
            raise ValueError("body_regex and digest: a check takes one of them, not both")
        if self.type == "dns" and self.query_name is None:
            raise ValueError("a dns check needs query_name (the name it asks for)")
        if self.type == "udp" and self.send is None:
            raise ValueError("a udp check needs send (the bytes it sends, in hex)")
        if self.answer is not None and self.query_type not in ("A", "AAAA"):
            raise ValueError("answer is an address: it goes with query_type A or AAAA")
        if self.answer is not None and ipaddress.ip_address(self.answer).version != (
            6 if self.query_type == "AAAA" else 4
        ):
            raise ValueError(f"answer {_quoted(self.answer)} is not an {self.query_type} record")
        return self
