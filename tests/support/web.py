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
    return client.post(
        "/ui/sign-in",
        data={"token": token, "nonce": nonce.group(1), "next": next_path},
        follow_redirects=False,
    )


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found is not None, "no CSRF token on the page"
    return found.group(1)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "action", "formaction") and value is not None:
                self.urls.append(value)


def fetched_urls(html: str) -> list[str]:
    """Every src, href, action and formaction of a page."""
    parser = _Links()
    parser.feed(html)
    return parser.urls
