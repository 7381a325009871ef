"""A real HTTP receiver of shoal's notifications on loopback (support for unit and lab tests).

It records every POST (headers and body) and checks its signature with the shared secret
the way a receiver should: HMAC-SHA256 of `TIMESTAMP.BODY`, compared in constant time.
`hanging()` is a listening socket that never answers: a receiver that is up but stuck.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    signed_ok: bool

    @property
    def payload(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


def signed_ok(secret: bytes, headers: dict[str, str], body: bytes) -> bool:
    stamp = headers.get("X-Shoal-Timestamp", "")
    given = headers.get("X-Shoal-Signature", "")
    want = "sha256=" + hmac.new(secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    fresh = stamp.isdigit() and abs(time.time() - int(stamp)) < 300
    return fresh and hmac.compare_digest(given, want)


class Receiver:
    def __init__(self, secret: bytes, port: int = 0) -> None:
        self.secret = secret
        self.got: list[Received] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = dict(self.headers.items())
                with outer._lock:
                    outer.got.append(Received(headers, body, signed_ok(outer.secret, headers,
                                                                       body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/shoal"

    def events(self) -> list[str]:
        with self._lock:
            return [r.payload["event"] for r in self.got]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def receiving(secret: bytes, port: int = 0) -> Iterator[Receiver]:
    receiver = Receiver(secret, port)
    try:
        yield receiver
    finally:
        receiver.close()


@contextmanager
def hanging() -> Iterator[str]:
    """The URL of a port that takes connections (the kernel's backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"http://127.0.0.1:{s.getsockname()[1]}/shoal"


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


async def until(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """As `wait_for`, for a test running in the event loop (the notifier's tasks run meanwhile)."""
    import asyncio

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
