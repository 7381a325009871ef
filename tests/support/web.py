"""Helpers of the web pages' tests: sign a client in, read a page's CSRF token, list what a
page would fetch. Shared by the TestClient tests and (the parsing part) the browser test."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx
from starlette.testclient import TestClient

_NONCE = re.compile(r'name="nonce" value="([^"]+)"')
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def sign_in(client: TestClient, token: str, next_path: str = "/ui/") -> httpx.Response:
    """Sign in through the form, as a browser does; returns the answer to the POST."""
    page = client.get(f"/ui/sign-in?next={next_path}")
    nonce = _NONCE.search(page.text)
    assert nonce is not None, page.text
    response: httpx.Response = client.post(
        "/ui/sign-in",
        data={"token": token, "nonce": nonce.group(1), "next": next_path},
        follow_redirects=False,
    )
    return response


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found is not None, "no CSRF token on the page"
    return found.group(1)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.handlers: list[str] = []
        self.inline_styles = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name.startswith("on"):
                self.handlers.append(f"<{tag} {name}>")
            if name == "style":
                self.inline_styles += 1
            if name in ("src", "href", "action", "formaction") and value is not None:
                self.urls.append(value)


def fetched_urls(html: str) -> list[str]:
    """Every src, href, action and formaction of a page."""
    parser = _Links()
    parser.feed(html)
    return parser.urls


def inline_code(html: str) -> list[str]:
    """Inline event handlers and style attributes of a page (the CSP forbids both)."""
    parser = _Links()
    parser.feed(html)
    return parser.handlers + ["style=..."] * parser.inline_styles
