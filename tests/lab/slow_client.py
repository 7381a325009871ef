"""Long-lived HTTP connections, run ON a lab client (`python3 - ARGS` with this source on stdin).

Opens `--connections` connections to VIP:PORT at once and sends each one's request slowly: the
request line, then a padding header one byte every 0.2 s (packets through the director all the
time) until the file `--until` exists or `--max-hold` seconds have passed; then the end of the
request, and reads each reply. Standard library only. Prints one JSON
object: per connection its local port, the first word of the reply body (the lab service's
hostname) or the error, and when it ended (time.time()).
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from pathlib import Path


def _one(vip: str, port: int, until: Path, max_hold: float, out: dict[str, object]) -> None:
    head = f"GET / HTTP/1.0\r\nHost: {vip}\r\nUser-Agent: shoal-slow-client\r\nX-Pad: "
    give_up = time.monotonic() + max_hold
    try:
        with socket.create_connection((vip, port), timeout=10) as sock:
            out["port"] = sock.getsockname()[1]
            sock.sendall(head.encode())
            while not until.exists() and time.monotonic() < give_up:
                sock.sendall(b"a")
                time.sleep(0.2)
            sock.sendall(b"\r\n\r\n")
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
        _, _, body = reply.partition(b"\r\n\r\n")
        words = body.decode("utf-8", "replace").split()
        out["server"] = words[0] if words and reply.startswith(b"HTTP/") else None
        out["ok"] = out["server"] is not None
    except OSError as exc:
        out["ok"] = False
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["ended"] = time.time()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vip", required=True)
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--until", type=Path, required=True)
    parser.add_argument("--max-hold", type=float, default=30.0)
    args = parser.parse_args()
    results: list[dict[str, object]] = [{} for _ in range(args.connections)]
    threads = [
        threading.Thread(target=_one, args=(args.vip, args.port, args.until, args.max_hold, r))
        for r in results
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
