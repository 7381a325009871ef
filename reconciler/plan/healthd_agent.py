"""shoal-healthd: the health checker of the ipvsadm and nftables director backends.

Standard library only: shoal ships this file to every such director as
/usr/local/sbin/shoal-healthd (reconciler.plan.compile_health) and systemd runs it
(shoal-healthd.service, after shoal-restore.service). It reads /etc/shoal/healthd.json, checks
every real server from the director's side (tcp, http, https with SNI, dns, udp), and takes a
failing one out: ipvsadm weight 0 (its configured weight back when it recovers); nftables: the
service chain's last rule (the jhash bucket map of new flows) rewritten without it. Established
flows keep their pins, as an IPVS connection keeps its destination at weight 0.

What it holds down is written to /var/lib/shoal/healthd/state.json, only when that changes. The
reconciler reads that file as a fact: a real server listed there is the checker's, at weight 0
or out of the buckets, and not drift. The file survives a reboot: at start the checker takes the
listed servers out again at once (the boot restore script brought the configured weights
back), then checks them as usual. Config changes are picked up without a restart.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from typing import Any

CONFIG = "/etc/shoal/healthd.json"
STATE = "/var/lib/shoal/healthd/state.json"
NFT_TABLE = ("netdev", "shoal_dsr")
MODULUS = "@MODULUS@"
BUCKETS = "@BUCKETS@"
READ_MAX = 1 << 20
DNS_TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "MX": 15, "TXT": 16, "AAAA": 28}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- checks: each returns None when the server is up, else why not --------------------------


def _http(address: str, port: int, c: dict[str, Any], tls: bool) -> str | None:
    timeout = float(c["timeout"])
    with socket.create_connection((address, port), timeout=timeout) as raw:
        sock: socket.socket = raw
        if tls:
            ctx = ssl.create_default_context()
            # As keepalived's SSL_GET: the certificate is not what is checked, the answer is.
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            sock = ctx.wrap_socket(raw, server_hostname=c.get("sni") or None)
        host = c.get("sni") or address
        req = f"GET {c['path']} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        sock.sendall(req.encode())
        data = b""
        deadline = time.monotonic() + timeout
        while len(data) < READ_MAX:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or not status[1].isdigit():
        return "no HTTP status line"
    if int(status[1]) != int(c["expect"]):
        return f"status {int(status[1])}, expected {c['expect']}"
    if c.get("body_regex") and re.search(c["body_regex"], body.decode("latin-1")) is None:
        return f"body does not match {c['body_regex']!r}"
    if c.get("digest") and hashlib.md5(body).hexdigest() != c["digest"]:
        return "body digest differs"
    return None


def _dns_query(name: str, qtype: int, qid: int) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".") if p)
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack(
        "!HH", qtype, 1
    )


def _skip_name(msg: bytes, i: int) -> int:
    while True:
        n = msg[i]
        if n & 0xC0 == 0xC0:
            return i + 2
        if n == 0:
            return i + 1
        i += n + 1


def _dns(address: str, port: int, c: dict[str, Any]) -> str | None:
    qtype = DNS_TYPES[c.get("query_type", "A")]
    qid = int.from_bytes(os.urandom(2), "big")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(float(c["timeout"]))
        s.connect((address, port))
        s.send(_dns_query(c["query_name"], qtype, qid))
        msg = s.recv(4096)
    rid, flags, qd, an = struct.unpack("!HHHH", msg[:8])
    if rid != qid or not flags & 0x8000:
        return "not an answer to the query"
    if flags & 0xF:
        return f"rcode {flags & 0xF}"
    if an == 0:
        return "no answer records"
    i = 12
    for _ in range(qd):
        i = _skip_name(msg, i) + 4
    want = c.get("answer")
    if not want:
        return None
    for _ in range(an):
        i = _skip_name(msg, i)
        rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", msg[i : i + 10])
        rdata = msg[i + 10 : i + 10 + rdlen]
        i += 10 + rdlen
        if rtype == qtype and rtype in (1, 28):
            fam = socket.AF_INET if rtype == 1 else socket.AF_INET6
            if socket.inet_ntop(fam, rdata) == socket.inet_ntop(fam, socket.inet_pton(fam, want)):
                return None
    return f"no {c.get('query_type', 'A')} record {want}"


def _udp(address: str, port: int, c: dict[str, Any]) -> str | None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    want = bytes.fromhex(c["receive"]) if c.get("receive") else None
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(float(c["timeout"]))
        s.connect((address, port))
        s.send(bytes.fromhex(c["send"]))
        try:
            reply = s.recv(65536)
        except TimeoutError:
            # As keepalived's UDP_CHECK without require_reply: silence is up, an ICMP error down.
            return "no reply" if want is not None else None
    if want is not None and not reply.startswith(want):
        return f"reply {reply[:32].hex()} does not start with {want.hex()}"
    return None


def run_check(address: str, port: int, c: dict[str, Any], protocol: str = "tcp") -> str | None:
    try:
        kind = c["type"]
        if kind == "tcp" and protocol == "udp":
            # The default check of a udp service, as keepalived's UDP_CHECK without a payload:
            # a datagram, and down only on an ICMP error.
            return _udp(address, port, {**c, "send": "00", "receive": None})
        if kind == "tcp":
            with socket.create_connection((address, port), timeout=float(c["timeout"])):
                return None
        if kind in ("http", "https"):
            return _http(address, port, c, kind == "https")
        if kind == "dns":
            return _dns(address, port, c)
        if kind == "udp":
            return _udp(address, port, c)
        return None
    except (OSError, ValueError, IndexError, struct.error) as exc:
        return f"{type(exc).__name__}: {exc}"


# --- the weights ------------------------------------------------------------------------------


def _run(argv: list[str], text: str | None = None) -> str:
    res = subprocess.run(argv, input=text, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {res.stderr.strip()}")
    return res.stdout


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def buckets(members: list[tuple[str, int]]) -> tuple[int, str]:
    """(modulus, nft map text) of contiguous bucket ranges proportional to weight, as shoal."""
    live = [(mac, w) for mac, w in members if w > 0]
    g = 0
    for _, w in live:
        g = math.gcd(g, w)
    parts, start = [], 0
    for mac, w in live:
        n = w // g
        parts.append(f"{start} : {mac}" if n == 1 else f"{start}-{start + n - 1} : {mac}")
        start += n
    return start, "{ " + ", ".join(parts) + " }"


class Checker:
    def __init__(self, config_path: str, state_path: str) -> None:
        self.config_path, self.state_path = config_path, state_path
        self.config: dict[str, Any] = {"services": []}
        self.config_digest = ""
        self.lock = threading.Lock()
        self.results: dict[str, tuple[int, int]] = {}  # key -> (fails in a row, oks in a row)
        self.down: dict[str, str] = {}  # key -> since (UTC)
        self.applied: dict[str, tuple[str, str]] = {}  # nft chain -> (rule handle, rule text)
        self.threads: dict[str, threading.Event] = {}

    # keys and members
    def members(self) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
        return {
            f"{s['key']} {m['host']}": (s, m) for s in self.config["services"] for m in s["members"]
        }

    def load(self) -> bool:
        try:
            with open(self.config_path, "rb") as f:
                raw = f.read()
        except OSError as exc:
            log(f"config {self.config_path}: {exc}")
            return False
        digest = hashlib.sha256(raw).hexdigest()
        if digest == self.config_digest:
            return False
        try:
            self.config = json.loads(raw)
        except ValueError as exc:
            log(f"config {self.config_path}: {exc}")
            return False
        self.config_digest = digest
        keys = self.members()
        with self.lock:
            for key in list(self.down):
                if key not in keys:
                    del self.down[key]
        for key, stop in list(self.threads.items()):
            stop.set()
            del self.threads[key]
        for key in keys:
            stop = threading.Event()
            self.threads[key] = stop
            threading.Thread(target=self.check_loop, args=(key, stop), daemon=True).start()
        log(f"config {digest[:12]}: {len(keys)} real servers")
        return True

    def restore_state(self) -> None:
        try:
            with open(self.state_path) as f:
                saved = json.load(f).get("down", {})
        except (OSError, ValueError):
            return
        keys = self.members()
        self.down = {k: v for k, v in saved.items() if k in keys}

    def save_state(self) -> None:
        os.makedirs(os.path.dirname(self.state_path), exist_ok=True)
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"version": 1, "down": dict(sorted(self.down.items()))}, f, indent=1)
            f.write("\n")
        os.replace(tmp, self.state_path)

    def check_loop(self, key: str, stop: threading.Event) -> None:
        svc, member = self.members()[key]
        c = svc["check"]
        fall, rise = int(self.config.get("fall", 2)), int(self.config.get("rise", 2))
        while not stop.is_set():
            why = run_check(member["address"], int(svc["port"]), c, svc["protocol"])
            with self.lock:
                fails, oks = self.results.get(key, (0, 0))
                fails, oks = (fails + 1, 0) if why else (0, oks + 1)
                self.results[key] = (fails, oks)
                if why and fails >= fall and key not in self.down:
                    self.down[key] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                    log(f"down {key}: {why}")
                elif not why and oks >= rise and key in self.down:
                    del self.down[key]
                    log(f"up {key}")
            stop.wait(float(c["interval"]))

    # applying what is down
    def enforce(self) -> None:
        with self.lock:
            down = set(self.down)
        backends = {s["backend"] for s in self.config["services"]}
        if "ipvsadm" in backends:
            self.enforce_ipvs(down)
        if "nftables" in backends:
            self.enforce_nft(down)

    def enforce_ipvs(self, down: set[str]) -> None:
        have: dict[tuple[str, str, str], int] = {}
        for line in _run(["ipvsadm", "-Sn"]).splitlines():
            f = line.split()
            if len(f) >= 5 and f[0] == "-a" and "-w" in f:
                have[(f[1], f[2], f[4])] = int(f[f.index("-w") + 1])
        for key, (svc, m) in self.members().items():
            if svc["backend"] != "ipvsadm":
                continue
            flag = "-u" if svc["protocol"] == "udp" else "-t"
            vs, rs = _endpoint(svc["vip"], svc["port"]), _endpoint(m["address"], svc["port"])
            current = have.get((flag, vs, rs))
            if current is None:
                continue
            want = 0 if key in down else int(m["weight"])
            if key in down:
                if current != 0:
                    _run(["ipvsadm", "-e", flag, vs, "-r", rs, "-g", "-w", "0"])
                self.applied[key] = ("", "0")
            elif key in self.applied:
                if current == 0 and want != 0:
                    _run(["ipvsadm", "-e", flag, vs, "-r", rs, "-g", "-w", str(want)])
                del self.applied[key]

    def enforce_nft(self, down: set[str]) -> None:
        family, table = NFT_TABLE
        for svc in self.config["services"]:
            if svc["backend"] != "nftables":
                continue
            chain = svc["chain"]
            held = any(f"{svc['key']} {m['host']}" in down for m in svc["members"])
            if not held and chain not in self.applied:
                continue
            live = [(m["mac"], 0 if f"{svc['key']} {m['host']}" in down else int(m["weight"]))
                    for m in svc["members"]]  # fmt: skip
            modulus, bmap = buckets(live)
            text = (svc["bucket_rule"].replace(MODULUS, str(modulus)).replace(BUCKETS, bmap)
                    if modulus else "drop")  # fmt: skip
            try:
                rules = json.loads(_run(["nft", "-j", "-a", "list", "chain", family, table, chain]))
            except RuntimeError as exc:
                log(f"chain {chain}: {exc}")
                continue
            handles = [o["rule"]["handle"] for o in rules["nftables"] if "rule" in o]
            if not handles:
                continue
            handle = str(handles[-1])
            if self.applied.get(chain) == (handle, text):
                if not held:
                    del self.applied[chain]
                continue
            _run(["nft", "-f", "-"],
                 f"replace rule {family} {table} {chain} handle {handle} {text}\n")  # fmt: skip
            rules = json.loads(_run(["nft", "-j", "-a", "list", "chain", family, table, chain]))
            handle = str([o["rule"]["handle"] for o in rules["nftables"] if "rule" in o][-1])
            self.applied[chain] = (handle, text)
            log(f"{chain}: {text}")

    def run(self, once: bool = False) -> None:
        self.load()
        self.restore_state()
        saved = dict(self.down)
        while True:
            self.load()
            try:
                self.enforce()
            except (RuntimeError, OSError, ValueError, KeyError) as exc:
                log(f"weights not applied: {exc}")
            with self.lock:
                now = dict(self.down)
            if now != saved:
                self.save_state()
                saved = now
            if once:
                return
            time.sleep(0.5)


def main(argv: list[str]) -> int:
    config = argv[1] if len(argv) > 1 else CONFIG
    state = argv[2] if len(argv) > 2 else STATE
    Checker(config, state).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
