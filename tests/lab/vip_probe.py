"""TCP requests to VIP:PORT at a steady rate, run ON a lab client (`python3 - ARGS`).

Every `--interval` seconds one HTTP/1.0 request on a new connection (connect and reply within
`--timeout`), until the file `--until` exists or `--duration` passes. Each attempt is recorded
as [time.time() when it started, first word of the reply body or null when it failed]: the lab
service answers with its hostname, so the record says which host held the VIP. Standard library
only. Prints one JSON object: {"attempts": [[time, who], ...]}.
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from pathlib import Path


def _request(vip: str, port: int, timeout: float) -> str | None:
    try:
        with socket.create_connection((vip, port), timeout=timeout) as sock:
            sock.sendall(f"GET / HTTP/1.0\r\nHost: {vip}\r\n\r\n".encode())
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
    except OSError:
        return None
    words = reply.partition(b"\r\n\r\n")[2].decode("utf-8", "replace").split()
    return words[0] if words and reply.startswith(b"HTTP/") else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vip", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--timeout", type=float, default=0.25)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--until", type=Path, default=None)
    args = parser.parse_args()
    attempts: list[tuple[float, str | None]] = []
    end = time.monotonic() + args.duration
    while time.monotonic() < end and not (args.until and args.until.exists()):
        started = time.monotonic()
        attempts.append((time.time(), _request(args.vip, args.port, args.timeout)))
        time.sleep(max(0.0, args.interval - (time.monotonic() - started)))
    print(json.dumps({"attempts": attempts}))


if __name__ == "__main__":
    main()
