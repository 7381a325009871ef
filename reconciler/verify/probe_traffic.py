"""The traffic probe that runs ON a client host: N requests to one VIP:port, counted.

This file is shipped verbatim to the client (`python3 - <args>` with this source on stdin), so
it uses the standard library only and imports nothing from shoal. `reconciler.verify.traffic`
reads it with `probe_source()`; the lab's load generator runs the same file.

Each request is a new connection from a new source port, so a director that hashes the source
address and port (or IPVS's schedulers) spreads them over the real servers; `--concurrency N`
keeps N requests in flight (threads), so a round costs about count/N request times. A TCP
request is a connect (proof of a full SYN / SYN-ACK round trip) and, with `--http PATH`, one
HTTP/1.0 GET whose reply's first word is taken as the identity of the server that answered (the
lab service answers with its hostname; a production service's first word is reported as it is
and filtered later).
A UDP request is one datagram; a reply is optional, because arrival is counted on the servers.
An IPv6 VIP (any text with a ':') is reached over AF_INET6, and its Host header is bracketed.

The result is one JSON object on stdout: sent, ok, failed, errors by kind, answered_by, elapsed.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from collections import Counter
from pathlib import Path

_MAX_REPLY = 4096
_MAX_IDENTITY = 64


def _identity(reply: bytes) -> str | None:
    """The first word of an HTTP reply's body, or None."""
    _, sep, body = reply.partition(b"\r\n\r\n")
    if not sep:
        return None
    words = body.decode("utf-8", "replace").split()
    return words[0][:_MAX_IDENTITY] if words else None


def _family(vip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in vip else socket.AF_INET


def _tcp_request(vip: str, port: int, timeout: float, http_path: str | None) -> str | None:
    # A socket of the VIP's family, not create_connection: no name lookup, and an IPv6 VIP
    # is never tried over IPv4 (or the other way round).
    with socket.socket(_family(vip), socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect((vip, port))
        if http_path is None:
            return None
        host = f"[{vip}]" if ":" in vip else vip
        request = f"GET {http_path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: shoal-verify\r\n\r\n"
        sock.sendall(request.encode())
        chunks: list[bytes] = []
        size = 0
        while size < _MAX_REPLY:
            data = sock.recv(_MAX_REPLY - size)
            if not data:
                break
            chunks.append(data)
            size += len(data)
        reply = b"".join(chunks)
        if not reply.startswith(b"HTTP/"):
            raise ConnectionError("not an HTTP reply")
        return _identity(reply)


def _udp_request(vip: str, port: int, timeout: float) -> str | None:
    with socket.socket(_family(vip), socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        # A fresh socket per datagram gives each one its own source port.
        sock.sendto(b"shoal-verify\n", (vip, port))
        try:
            data, _ = sock.recvfrom(_MAX_REPLY)
        except (TimeoutError, ConnectionRefusedError):
            return None
        words = data.decode("utf-8", "replace").split()
        return words[0][:_MAX_IDENTITY] if words else None


def run_probe(
    vip: str,
    port: int,
    *,
    protocol: str = "tcp",
    count: int = 10,
    timeout: float = 2.0,
    deadline: float = 30.0,
    http_path: str | None = None,
    max_failures: int | None = None,
    concurrency: int = 1,
) -> dict[str, object]:
    """Send `count` requests, `concurrency` at a time, and count the outcomes.

    Stops early when `deadline` seconds have passed or `max_failures` requests have failed (a
    dead VIP would otherwise cost count x timeout); the requests not sent count as failed.
    """
    start = time.monotonic()
    errors: Counter[str] = Counter()
    answered_by: Counter[str] = Counter()
    lock = threading.Lock()
    sent = ok = failed = 0
    stopped: str | None = None  # why requests were left unsent

    def one() -> None:
        nonlocal ok, failed
        try:
            if protocol == "udp":
                who = _udp_request(vip, port, timeout)
            else:
                who = _tcp_request(vip, port, timeout, http_path)
        except TimeoutError:
            kind = "timeout"
        except ConnectionRefusedError:
            kind = "refused"
        except OSError as exc:
            kind = type(exc).__name__
        else:
            with lock:
                ok += 1
                if who is not None:
                    answered_by[who] += 1
            return
        with lock:
            failed += 1
            errors[kind] += 1

    def worker() -> None:
        nonlocal sent, stopped
        while True:
            with lock:
                if sent >= count or stopped is not None:
                    return
                if time.monotonic() - start > deadline:
                    stopped = "deadline"
                    return
                # Completed failures only: requests still in flight are not failures (yet).
                if max_failures is not None and failed >= max_failures:
                    stopped = "skipped after failures"
                    return
                sent += 1
            one()

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, concurrency))]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    if stopped is not None and sent < count:
        errors[stopped] += count - sent
    return {
        "vip": vip,
        "port": port,
        "protocol": protocol,
        "requested": count,
        "sent": sent,
        "ok": ok,
        "failed": count - ok,
        "errors": dict(errors),
        "answered_by": dict(answered_by),
        "elapsed": round(time.monotonic() - start, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="shoal verification probe")
    parser.add_argument("--vip", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--protocol", choices=("tcp", "udp"), default="tcp")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--deadline", type=float, default=30.0)
    parser.add_argument("--http", dest="http_path", default=None)
    parser.add_argument("--max-failures", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args(argv)
    if not 1 <= args.count <= 100000 or not 0 < args.timeout <= 300:
        parser.error("count must be 1..100000 and timeout 0..300 seconds")
    if not 1 <= args.concurrency <= 64:
        parser.error("concurrency must be 1..64")
    result = run_probe(
        args.vip,
        args.port,
        protocol=args.protocol,
        count=args.count,
        timeout=args.timeout,
        deadline=args.deadline,
        http_path=args.http_path,
        max_failures=args.max_failures,
        concurrency=args.concurrency,
    )
    print(json.dumps(result, sort_keys=True))
    return 0


def probe_source() -> str:
    """This file's source text, to send to a client's `python3 -`."""
    return Path(__file__).read_text(encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
