"""shoal-healthd on the ipvsadm and nftables directors: its low states, config, and what it holds.

keepalived checks its own real servers; the other two backends have no checker of their own,
so every director of theirs gets shoal's (reconciler.plan.healthd_agent): the program, its
config (every real server of the director's services with its check, weight and, for nftables,
its MAC and the service chain's bucket rule with sentinels), a systemd unit after
shoal-restore.service, enabled;
started where systemd runs (the lab's namespace hosts have none: the plan says so).

What the checker holds down is a fact (its state file, in the files facts): a real server listed
there stays out of the table the plan wants (`held_down`), so the checker's weight 0 is never
drift and an apply never puts a dead server back. The boot restore keeps the configured weights;
the checker takes the listed servers out again when it starts. A state file that cannot be read
makes the held set unknown, and the director's weights are not planned (`skipped`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reconciler.desired.checks import HealthCheck
from reconciler.desired.models import Desired, Service
from reconciler.facts.hostfacts import HostFacts
from reconciler.plan import healthd_agent
from reconciler.plan.compile_director import clusters, host_phase, low_state
from reconciler.plan.steps import LowState
from states.args import Args
from states.file import FileArgs
from states.ipvs_argv import real_server_address, service_key
from states.nft_dsr_model import macs_of
from states.nft_dsr_render import bucket_rule
from states.service import EnabledArgs, RunningArgs

AGENT_PATH = "/usr/local/sbin/shoal-healthd"
CONFIG_PATH = healthd_agent.CONFIG
STATE_PATH = healthd_agent.STATE
UNIT = "shoal-healthd.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT}"
BACKENDS = ("ipvsadm", "nftables")
FALL = 2  # failed checks in a row before a real server goes out
RISE = 2  # passed checks in a row before it comes back

_UNIT = f"""\
# Managed by shoal.
[Unit]
Description=shoal: health checks of this director's real servers (weights)
After=network.target shoal-restore.service
Wants=shoal-restore.service

[Service]
ExecStart=/usr/bin/python3 {AGENT_PATH} {CONFIG_PATH} {STATE_PATH}
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
"""


def member_key(svc: Service, host: str) -> str:
    """How the checker and the plan name one real server of one service."""
    return f"{service_key(svc.protocol, svc.vip, svc.port)} {host}"


def held_down(facts: Mapping[str, HostFacts], host: str) -> frozenset[str] | str:
    """The member keys the checker on `host` holds down, or why that is unknown."""
    f = facts.get(host)
    if f is None:
        return "no facts"
    if not f.files.known or f.files.value is None:
        return f"files unknown ({f.files.unknown_reason})"
    info = f.files.value.get(STATE_PATH)
    # The facts script reports the path on every host (DEFAULT_FILES); facts made before the
    # checker existed do not list it, and then no checker ran there either.
    if info is None or not info.exists:
        return frozenset()
    if info.content is None:
        return f"{STATE_PATH}: {info.content_unknown_reason or 'no content'}"
    try:
        down = json.loads(info.content)["down"]
        return frozenset(str(k) for k in down)
    except (ValueError, KeyError, TypeError):
        return f"{STATE_PATH} is not the checker's state"


def check_config(check: HealthCheck) -> dict[str, Any]:
    return check.model_dump(exclude_defaults=False)


def _service_entry(desired: Desired, backend: str, svc: Service, host: str,
                   macs: dict[str, dict[str, str]]) -> dict[str, Any] | None:  # fmt: skip
    from reconciler.facts.parsers.nft_dsr import DsrService, DsrTable

    members = []
    for rs in sorted(svc.real_servers, key=lambda r: r.host):
        m: dict[str, Any] = {"host": rs.host, "weight": rs.weight,
                             "address": real_server_address(desired, rs.host, svc.family)}
        if backend == "nftables":
            mac = macs.get(rs.host, {}).get(desired.inventory.hosts[rs.host].interface)
            if mac is None:
                continue  # the DSR table is not planned either (compile_nftables)
            m["mac"] = mac
        members.append(m)
    entry: dict[str, Any] = {
        "backend": backend, "key": service_key(svc.protocol, svc.vip, svc.port),
        "protocol": svc.protocol, "vip": svc.vip, "port": svc.port,
        "check": check_config(svc.check), "members": members,
    }  # fmt: skip
    if backend == "nftables":
        iface = desired.inventory.hosts[host].interface
        dmac = macs.get(host, {}).get(iface)
        if dmac is None:
            return None
        model = DsrService(svc.protocol, svc.vip, svc.port, svc.persistence > 0, ())
        entry["chain"] = model.chain
        entry["bucket_rule"] = bucket_rule(DsrTable(iface, dmac, ()), model,
                                           healthd_agent.MODULUS, healthd_agent.BUCKETS)
    return entry


def _low(sid: str, function: str, host: str, args: Args, desired: Desired,
         require: tuple[str, ...] = (), watch: tuple[str, ...] = ()) -> LowState:  # fmt: skip
    low = low_state(sid, function, host, args, host_phase(desired, host), require=require)
    return low if not watch else LowState(**{**low.__dict__, "watch": watch})


def compile_health(desired: Desired, facts: Mapping[str, HostFacts]) -> list[LowState]:
    """The checker's low states on every ipvsadm/nftables director with a checked service."""
    macs = macs_of(facts.values())
    per_host: dict[str, list[dict[str, Any]]] = {}
    for backend in BACKENDS:
        for _, cl in clusters(desired, backend):
            for host in cl.cluster.directors:
                for svc in sorted(cl.services, key=lambda s: s.name):
                    if svc.check.type == "none":
                        continue
                    # The files are planned whatever the facts say (managed_paths compiles
                    # without facts); a service whose MACs are unknown is left out of the config.
                    entries = per_host.setdefault(host, [])
                    entry = _service_entry(desired, backend, svc, host, macs)
                    if entry is not None:
                        entries.append(entry)
    out: list[LowState] = []
    agent = Path(healthd_agent.__file__).read_text(encoding="utf-8")
    for host in sorted(per_host):
        config = {"version": 1, "fall": FALL, "rise": RISE, "services": per_host[host]}
        text = json.dumps(config, indent=1, sort_keys=True) + "\n"
        files = (
            ("healthd-agent", AGENT_PATH, agent, "0755"),
            ("healthd-config", CONFIG_PATH, text, "0644"),
            ("healthd-unit", UNIT_PATH, _UNIT, "0644"),
        )
        for sid, path, content, mode in files:
            out.append(_low(sid, "file.managed", host,
                            FileArgs(path=path, content=content, mode=mode), desired))  # fmt: skip
        ids = tuple(f[0] for f in files)
        out.append(_low("healthd-enabled", "service.enabled", host, EnabledArgs(name=UNIT),
                        desired, require=("healthd-unit",)))  # fmt: skip
        f = facts.get(host)
        if f is not None and f.services.known:
            # The checker reads its config again by itself; a new program needs a restart.
            out.append(_low("healthd-running", "service.running", host, RunningArgs(name=UNIT),
                            desired, require=ids, watch=("healthd-agent",)))  # fmt: skip
    return out


def health_notes(desired: Desired, hf: HostFacts) -> tuple[str, ...]:
    """What a plan says about the checker on a host: who it holds down, or why it is unknown."""
    host = hf.host
    if not any(host in cl.cluster.directors for b in BACKENDS for _, cl in clusters(desired, b)):
        return ()
    held = held_down({host: hf}, host)
    if isinstance(held, str):
        return (f"{host}: shoal-healthd's state unknown ({held}); weights not planned",)
    notes = [f"{host}: {key} is held out by shoal-healthd (its check fails); not drift"
             for key in sorted(held)]  # fmt: skip
    if not hf.services.known:
        notes.append(f"{host}: systemd is not running ({hf.services.unknown_reason}); "
                     f"{UNIT} is installed and enabled, nothing starts it now")  # fmt: skip
    return tuple(notes)
