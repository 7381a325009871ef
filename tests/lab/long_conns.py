"""Long-lived TCP connections through a VIP, run ON a lab client (`python3 - <args>`).

Each connection starts an HTTP/1.0 request to the lab's HTTP service and keeps it open by
sending one more byte of a header value every `--interval` seconds (the service answers only
after the blank line, and holds a 64 KiB header line). Every byte needs the real server's ACK,
which comes straight back to the client (Direct Routing), so a connection whose packets a
director drops shows bytes left unacknowledged in its send queue (TIOCOUTQ): the longest such
time is its stall. A reset or an early close is a loss too. When `--until` exists (or after
`--duration`), each connection ends its request and reads the answer, which names the real
server. Standard library only.

Output: one JSON object: {"connections": [{"stall": s, "reset": str | null, "server": str |
null, "reset_at": unix time | null}, ...], "sent": bytes per connection}.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import socket
import struct
import termios
import time


def _outq(sock: socket.socket) -> int:
    raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    return int(struct.unpack("i", raw)[0])


class Conn:
    def __init__(self, vip: str, port: int) -> None:
        self.sock = socket.create_connection((vip, port), timeout=5)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(f"GET / HTTP/1.0\r\nHost: {vip}\r\nX-Slow: ".encode())
        self.reset: str | None = None
        self.reset_at: float | None = None  # wall clock, to line up with the test's events
        self.acked_at = time.monotonic()
        self.stall = 0.0

    def lost(self, why: str) -> None:
        self.reset, self.reset_at = why, time.time()

    def tick(self, now: float) -> None:
        if self.reset is not None:
            return
        try:
            data = self.sock.recv(4096, socket.MSG_DONTWAIT)
            self.lost("closed by the other end" if data == b"" else f"early answer {data!r}")
            return
        except BlockingIOError:
            pass
        except OSError as exc:
            self.lost(f"{type(exc).__name__}: {exc}")
            return
        # Before the next byte: is everything sent so far acknowledged?
        if _outq(self.sock) == 0:
            self.acked_at = now
        self.stall = max(self.stall, now - self.acked_at)
        try:
            self.sock.send(b"a")
        except OSError as exc:
            self.lost(f"{type(exc).__name__}: {exc}")

    def finish(self, timeout: float) -> str | None:
        if self.reset is not None:
            return None
        self.sock.setblocking(True)
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(b"\r\n\r\n")
            chunks = []
            while chunk := self.sock.recv(4096):
                chunks.append(chunk)
        except OSError as exc:
            self.lost(f"at the end: {type(exc).__name__}: {exc}")
            return None
        finally:
            self.sock.close()
        body = b"".join(chunks).split(b"\r\n\r\n", 1)[-1].decode(errors="replace").split()
        return body[0] if body else None


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--vip", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--until", required=True)
    p.add_argument("--duration", type=float, default=300)
    a = p.parse_args()
    conns = [Conn(a.vip, a.port) for _ in range(a.count)]
    end = time.monotonic() + a.duration
    sent = 0
    while not os.path.exists(a.until) and time.monotonic() < end:
        now = time.monotonic()
        for c in conns:
            c.tick(now)
        sent += 1
        time.sleep(max(0.0, a.interval - (time.monotonic() - now)))
    servers = [c.finish(10.0) for c in conns]
    print(json.dumps({
        "connections": [{"stall": round(c.stall, 3), "reset": c.reset, "reset_at": c.reset_at,
                         "server": s}
                        for c, s in zip(conns, servers, strict=True)],
        "sent": sent,
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
