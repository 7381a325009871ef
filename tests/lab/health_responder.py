"""A real server's services for the health check lab test, each able to answer wrong.

Run in a real server's network namespace: `python3 health_responder.py NAME DIR CERT KEY`.
For every service, the file DIR/mode-<service> holds "bad" to answer wrong (read on every
request, so the test flips it while this runs); anything else answers right. Every answer names
the server, so traffic through the VIP shows which real server it reached.

- web, tcp 80 (http): GET /status 200 "NAME ok"; bad: 503.
- regex, tcp 8080 (http body_regex): 200 "ok NAME"; bad: 200 "degraded NAME".
- tls, tcp 443 (https): as web over TLS; a client that does not send SNI www.lab.test gets 421.
- dns, udp 53: A www.lab.test 192.0.2.1 with TTL = the server's number; bad: 192.0.2.99.
- echo, udp 9000: "ping" -> "pong NAME"; bad: "nope NAME".
"""

from __future__ import annotations

import socket
import ssl
import struct
import sys
import threading
from pathlib import Path

NAME, DIR, CERT, KEY = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
SNI = "www.lab.test"


def bad(service: str) -> bool:
    try:
        return (DIR / f"mode-{service}").read_text().strip() == "bad"
    except OSError:
        return False


def http_answer(service: str, sni_ok: bool = True) -> bytes:
    if not sni_ok:
        status, body = "421 Misdirected Request", f"no SNI {SNI} {NAME}"
    elif service == "regex":
        status, body = "200 OK", (f"degraded {NAME}" if bad(service) else f"ok {NAME}")
    elif bad(service):
        status, body = "503 Service Unavailable", f"broken {NAME}"
    else:
        status, body = "200 OK", f"{NAME} ok"
    return (f"HTTP/1.0 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            f"{body}").encode()  # fmt: skip


def serve_http(conn: socket.socket, service: str, sni_ok: bool = True) -> None:
    try:
        conn.settimeout(3)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        conn.sendall(http_answer(service, sni_ok))
    except OSError:
        pass
    finally:
        conn.close()


def tcp_loop(port: int, service: str, tls: ssl.SSLContext | None) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(64)
    while True:
        conn, _ = srv.accept()
        if tls is None:
            threading.Thread(target=serve_http, args=(conn, service), daemon=True).start()
            continue
        threading.Thread(target=tls_conn, args=(conn, tls), daemon=True).start()


def tls_conn(conn: socket.socket, ctx: ssl.SSLContext) -> None:
    names: list[str | None] = []

    def on_sni(_s: ssl.SSLObject, name: str | None, _c: ssl.SSLContext) -> None:
        names.append(name)

    ctx.sni_callback = on_sni
    try:
        conn.settimeout(3)
        wrapped = ctx.wrap_socket(conn, server_side=True)
    except (OSError, ssl.SSLError):
        conn.close()
        return
    serve_http(wrapped, "tls", sni_ok=names == [SNI])


def dns_loop() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 53))
    ttl = int("".join(c for c in NAME if c.isdigit()) or "0")
    while True:
        msg, peer = s.recvfrom(512)
        if len(msg) < 17:
            continue
        end = msg.index(b"\0", 12) + 5
        question = msg[12:end]
        address = "192.0.2.99" if bad("dns") else "192.0.2.1"
        header = struct.pack("!HHHHHH", struct.unpack("!H", msg[:2])[0], 0x8180, 1, 1, 0, 0)
        answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, ttl, 4) + socket.inet_aton(address)
        s.sendto(header + question + answer, peer)


def echo_loop() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 9000))
    while True:
        msg, peer = s.recvfrom(512)
        if msg == b"ping":
            s.sendto((b"nope " if bad("echo") else b"pong ") + NAME.encode(), peer)


def main() -> None:
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(CERT, KEY)
    loops = ((tcp_loop, (80, "web", None)), (tcp_loop, (8080, "regex", None)),
             (tcp_loop, (443, "tls", tls)), (dns_loop, ()), (echo_loop, ()))  # fmt: skip
    for target, args in loops:
        threading.Thread(target=target, args=args, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
