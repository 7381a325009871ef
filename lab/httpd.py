"""Lab services: a tiny HTTP server on each real server, and the client load generator.

The server answers every request with its own hostname and the address the request was sent to
(`web2 10.77.0.100`), so a client sees which real server answered a request to a VIP. It runs
inside the lab host's namespaces, listens on 0.0.0.0 and on :: (IPv6 only) on the given ports (so
it also answers on a VIP held on `lo`, of either family), and writes a pid file under the host's
private /var/lib so it can be stopped.

This file is also the server program itself: `start_services` sends this very source to the host
(`python3 -c <source> serve ...`), which is why the top level imports the standard library only.

The load generator is `reconciler.verify.probe_traffic` (the same program `shoal verify` ships to a
client), run inside a lab client host by `run_load`, aimed only at addresses of the lab's subnet.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lab import Lab

PID_DIR = "/var/lib/shoal-lab"
PID_FILE = f"{PID_DIR}/httpd.pid"
LOG_FILE = f"{PID_DIR}/httpd.log"
_START_WAIT = 10.0


# --- the server (runs inside a lab host) ---------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server_version = "shoal-lab-httpd"
    protocol_version = "HTTP/1.0"

    def _reply(self, with_body: bool) -> None:
        local = self.connection.getsockname()[0]
        body = f"{socket.gethostname()} {local}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._reply(with_body=True)

    def do_HEAD(self) -> None:
        self._reply(with_body=False)

    def log_message(self, format: str, *args: Any) -> None:
        # One line per request would fill the log during load tests; errors still go to stderr.
        return


class _Http6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        # IPv6 only: the IPv4 listener on the same port owns IPv4 (no mapped addresses).
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()


def _servers(port: int) -> list[ThreadingHTTPServer]:
    servers = [ThreadingHTTPServer(("0.0.0.0", port), _Handler)]
    if socket.has_ipv6 and Path("/proc/net/if_inet6").exists():
        servers.append(_Http6Server(("::", port), _Handler))
    return servers


def serve(ports: Sequence[int], pid_file: str) -> None:
    """Listen on every port (0.0.0.0 and ::) until SIGTERM; the pid file exists while serving."""
    servers = [srv for port in ports for srv in _servers(port)]
    for srv in servers:
        srv.daemon_threads = True
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threads = [
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        for srv in servers
    ]
    for t in threads:
        t.start()
    # Written only after every socket is bound: its presence means "ready".
    Path(pid_file).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{pid_file}.tmp"
    Path(tmp).write_text(f"{os.getpid()}\n", encoding="ascii")
    os.replace(tmp, pid_file)
    try:
        stop.wait()
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()
        Path(pid_file).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """`serve` runs inside a lab host; `start`, `stop` and `load` drive a lab from outside."""
    parser = argparse.ArgumentParser(description="shoal lab HTTP service and load generator")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="serve on the ports (inside a lab host)")
    p_serve.add_argument("--port", type=int, action="append", required=True)
    p_serve.add_argument("--pidfile", default=PID_FILE)
    p_start = sub.add_parser("start", help="start the service on a lab's real servers")
    p_stop = sub.add_parser("stop", help="stop the service on a lab's real servers")
    p_load = sub.add_parser("load", help="send requests from a lab client to VIP:PORT")
    for p in (p_start, p_stop, p_load):
        p.add_argument("--lab-id", required=True)
    for p in (p_start, p_stop):
        p.add_argument("--host", action="append", default=None, help="default: every real server")
    p_start.add_argument("--port", type=int, action="append", required=True)
    p_load.add_argument("--client", default="client1")
    p_load.add_argument("--vip", required=True)
    p_load.add_argument("--port", type=int, default=80)
    p_load.add_argument("--count", type=int, default=30)
    p_load.add_argument("--path", default="/")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.port, args.pidfile)
        return 0
    return asyncio.run(_control(args))


async def _control(args: argparse.Namespace) -> int:
    from lab import Lab

    lab = Lab.attach(args.lab_id)
    if args.command == "start":
        names = await start_services(lab, args.port, hosts=args.host)
        ports = ", ".join(map(str, args.port))
        print(f"lab httpd listening on port(s) {ports} on {' '.join(names)}")
    elif args.command == "stop":
        await stop_services(lab, hosts=args.host)
    else:
        result = await run_load(lab, args.client, args.vip, args.port, count=args.count,
                                http_path=args.path)
        print(json.dumps(result, sort_keys=True))
        return 0 if result["failed"] == 0 else 1
    return 0


# --- control from the test process ----------------------------------------------------------------


def _server_source() -> str:
    return Path(__file__).read_text(encoding="utf-8")


async def _running_pid(lab: Lab, host: str) -> int | None:
    """The pid in the host's pid file if that process is alive, else None."""
    res = await lab.exec(host, ["cat", PID_FILE], check=False)
    text = str(res.stdout).strip()
    if res.returncode != 0 or not text.isdigit():
        return None
    alive = await lab.exec(host, ["kill", "-0", text], check=False)
    return int(text) if alive.returncode == 0 else None


async def _start_one(lab: Lab, host: str, ports: Sequence[int]) -> None:
    await _stop_one(lab, host)
    argv = ["python3", "-c", _server_source(), "serve", "--pidfile", PID_FILE]
    for port in ports:
        argv += ["--port", str(port)]
    # setsid -f detaches the server from lab.exec's process, and the redirections close the pipes
    # lab.exec waits on; the arguments reach the server through "$@", never through the shell text.
    launcher = f'mkdir -p {PID_DIR} && exec setsid -f "$@" </dev/null >>{LOG_FILE} 2>&1'
    await lab.exec(host, ["sh", "-c", launcher, "sh", *argv])
    loop = asyncio.get_running_loop()
    give_up = loop.time() + _START_WAIT
    while await _running_pid(lab, host) is None:
        if loop.time() > give_up:
            log = await lab.exec(host, ["tail", "-n", "20", LOG_FILE], check=False)
            raise RuntimeError(f"{host}: lab httpd did not start: {log.stdout!s}")
        await asyncio.sleep(0.05)


async def _stop_one(lab: Lab, host: str) -> None:
    pid = await _running_pid(lab, host)
    if pid is not None:
        await lab.exec(host, ["kill", str(pid)], check=False)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + _START_WAIT
        while await _running_pid(lab, host) is not None and loop.time() < give_up:
            await asyncio.sleep(0.05)
    await lab.exec(host, ["rm", "-f", PID_FILE], check=False)


def _real_servers(lab: Lab, hosts: Iterable[str] | None) -> list[str]:
    if hosts is not None:
        return list(hosts)
    return [name for name, h in lab.hosts.items() if h.role == "real_server"]


async def start_services(
    lab: Lab, ports: Sequence[int], hosts: Iterable[str] | None = None
) -> list[str]:
    """Start the HTTP service on `ports` on each real server (or on `hosts`); idempotent."""
    names = _real_servers(lab, hosts)
    await asyncio.gather(*(_start_one(lab, h, ports) for h in names))
    return names


async def stop_services(lab: Lab, hosts: Iterable[str] | None = None) -> None:
    """Stop the HTTP service wherever it runs (or on `hosts`)."""
    await asyncio.gather(*(_stop_one(lab, h) for h in _real_servers(lab, hosts)))


async def run_load(
    lab: Lab,
    client: str,
    vip: str,
    port: int,
    *,
    count: int = 30,
    timeout: float = 2.0,
    deadline: float = 30.0,
    http_path: str | None = "/",
) -> dict[str, Any]:
    """Send `count` requests from lab host `client` to vip:port; per-server counts and failures.

    Returns the probe's JSON (`ok`, `failed`, `errors`, `answered_by`: hostname -> count).
    """
    # Lab traffic stays in the lab: the target must be an address of the lab's own subnets.
    addr = ipaddress.ip_address(vip)
    subnet = ipaddress.ip_network(lab.subnet if addr.version == 4 else lab.subnet6)
    if addr not in subnet or addr.is_loopback:
        raise ValueError(f"{vip} is not an address of the lab subnet {subnet}")
    from reconciler.verify.probe_traffic import probe_source

    argv = ["python3", "-", "--vip", str(addr), "--port", str(port), "--count", str(count),
            "--timeout", str(timeout), "--deadline", str(deadline)]
    if http_path is not None:
        argv += ["--http", http_path]
    res = await lab.exec(client, argv, input=probe_source())
    result: dict[str, Any] = json.loads(str(res.stdout))
    return result


if __name__ == "__main__":
    sys.exit(main())
