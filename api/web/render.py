"""Templates and the headers every page carries.

One Jinja2 environment, autoescaping everything (the pages show commit subjects, comments and
command output, which anyone who can push or approve can write). The Content-Security-Policy
allows this server's own scripts, styles and images only: no inline script or style, no
frame, forms posting back here only.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse

from api.web.session import WebUser
from reconciler.desired.endpoint import endpoint

TEMPLATES = Path(__file__).with_name("templates")

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    # Pages show live state and who may do what: never from a cache.
    "Cache-Control": "no-store",
}


def short_sha(sha: str | None) -> str:
    return (sha or "")[:10]


def when(stamp: str | None) -> str:
    """An ISO timestamp as people read it: `2025-01-31 14:02:11 UTC`."""
    if not stamp:
        return ""
    try:
        at = datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    if at.tzinfo is not None:
        at = at.astimezone(UTC)
    return at.strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(start: str | None, end: str | None) -> str:
    if not start or not end:
        return ""
    try:
        seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except ValueError:
        return ""
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def diff_class(line: str) -> str:
    """The CSS class of one unified-diff line (added, removed, hunk, file header, step)."""
    if line.startswith(("+++", "---")):
        return "d-file"
    if line.startswith("+"):
        return "d-add"
    if line.startswith("-"):
        return "d-del"
    if line.startswith("@@"):
        return "d-hunk"
    if line.startswith("#"):
        return "d-step"
    return "d-ctx"


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters.update(short_sha=short_sha, when=when, diff_class=diff_class, endpoint=endpoint)
_env.globals.update(duration=duration)


def render(
    request: Request,
    template: str,
    user: WebUser | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    html = _env.get_template(template).render(request=request, user=user, **context)
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)
