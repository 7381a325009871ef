"""One lab run: N real servers, shoal (as root and through sudo) vs Ansible vs pyinfra vs the
floor, same hosts, same run.

Per repetition and tool (the order rotates between repetitions): reset the real servers through
the lab, check they are clean, converge (timed), check through the lab that the job is done,
then the no-op check (timed) and check nothing moved. A sample counts only if the tool
succeeded and the hosts were verified. SSH connections and sessions per host come from each
host's sshd log, and so does the user each tool logged in as (a sample of a tool that logged
in as anyone else does not count). The floor runs right after shoal's no-op check, on the same
converged hosts.

shoal-sudo is shoal on the same hosts logging in as `deploy` with `become = "sudo"`: before the
measurements every host gets that user and what `shoal sudoers` prints (the wrapper and the
sudoers file), as an operator would install it; root logins stay allowed for the peers. Issue 15
wants its connections and channels per host equal to shoal's (become adds no round trip).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import hoststate, peerenv
from bench.configrepo import DIRECTOR, SUDO_USER, real_servers, vip_of, write_repo
from bench.proc import Measured, detached_cpu, run_measured
from bench.sshlog import LogWindow, login_problems, summarise
from bench.stats import Sample, Series
from bench.timed_plan import gather_seconds
from lab import Lab
from lab.nonroot import prepare_sudo_login
from reconciler.desired.loader import load_repository
from reconciler.facts.script import build_facts_script
from reconciler.plan.compile import managed_paths
from reconciler.transport.become import SUDOERS_PATH, WRAPPER_PATH

ROOT = Path(__file__).resolve().parent.parent
PEERS = Path(__file__).resolve().parent / "peers"
SHOAL = ROOT / ".venv/bin/shoal"
PROJECT_PY = ROOT / ".venv/bin/python"
ARP_VALUES = {"arp_ignore": "1", "arp_announce": "2"}
LOG_SETTLE = 0.3  # seconds for sshd to finish writing its log lines after a client is done
# The measured tools in the order of the first repetition (later ones rotate it).
TOOLS = ("shoal", "shoal-sudo", "ansible", "pyinfra")
SHOAL_TOOLS = ("shoal", "shoal-sudo")  # gather the director too; the floor mirrors them


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


@dataclass
class Tool:
    name: str
    converge: list[str]
    noop: list[str]
    env: dict[str, str]
    cwd: Path
    # Checks the tool's own output: None when fine, else why the sample does not count.
    converge_ok: Callable[[Measured], str | None]
    noop_ok: Callable[[Measured], str | None]
    detached_marker: str | None = None
    login_user: str = "root"  # whom every host's sshd must have let in during a measurement


def _rc_ok(m: Measured) -> str | None:
    return None if m.returncode == 0 else f"exit {m.returncode}: {m.output[-400:]}"


_RECAP_RE = re.compile(r"^\S+\s+: ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def ansible_recap(output: str) -> tuple[int, int, int, int]:
    """(hosts, changed, unreachable, failed) summed over PLAY RECAP lines (pure)."""
    rows = [tuple(int(x) for x in m.groups()) for m in _RECAP_RE.finditer(output)]
    return (
        len(rows),
        sum(r[0] for r in rows),
        sum(r[1] for r in rows),
        sum(r[2] for r in rows),
    )


def _ansible_check(expect_changed: bool, hosts: int) -> Callable[[Measured], str | None]:
    def check(m: Measured) -> str | None:
        n, changed, unreachable, failed = ansible_recap(m.output)
        if m.returncode != 0 or n != hosts or unreachable or failed:
            return f"exit {m.returncode}, recap hosts={n} unreachable={unreachable} failed={failed}"
        if not expect_changed and changed:
            return f"check mode reported {changed} changes on converged hosts"
        return None

    return check


def pyinfra_changes(output: str) -> list[str]:
    """Operations pyinfra's "Detected changes" table marks as changing (pure)."""
    lines = output.splitlines()
    try:
        start = next(i for i, x in enumerate(lines) if x.strip() == "--> Detected changes:")
    except StopIteration:
        return ["no 'Detected changes' table in the output"]
    out = []
    for line in lines[start + 2 :]:  # skip the header row
        if not line.strip():
            break
        fields = re.split(r"\s{2,}", line.strip())
        if len(fields) >= 2 and (fields[1] != "-" or (len(fields) > 2 and fields[2] != "-")):
            out.append(fields[0])
    return out


def _pyinfra_noop(m: Measured) -> str | None:
    if m.returncode != 0:
        return f"exit {m.returncode}: {m.output[-400:]}"
    changes = pyinfra_changes(m.output)
    return f"dry run reports changes on converged hosts: {changes}" if changes else None


def _shoal_noop(m: Measured) -> str | None:
    return None if m.returncode == 0 else f"shoal plan exit {m.returncode} (0 = in sync)"


class LabBench:
    def __init__(self, lab: Lab, work: Path, reps: int, tools: list[str]) -> None:
        self.lab = lab
        self.work = work
        self.reps = reps
        self.tool_names = tools
        self.rs = real_servers(lab)
        self.vip = vip_of(lab)
        self.n = len(self.rs)
        self.repo = write_repo(lab, work / "repo")
        self.sudo_repo = write_repo(lab, work / "repo-sudo", login_user=SUDO_USER)
        self.logs = LogWindow({h: lab.sshd_log_path(h) for h in [DIRECTOR, *self.rs]})
        self.expected: hoststate.Observed | None = None
        self.series: dict[tuple[str, str], Series] = {}
        self.notes: list[str] = []
        self.sem = asyncio.Semaphore(16)
        self.loads: list[float] = []  # 1-minute load average when each measurement started

    # --- hosts through the lab ------------------------------------------------------------

    async def _each(self, script: str) -> dict[str, str]:
        async def one(h: str) -> tuple[str, str]:
            async with self.sem:
                r = await self.lab.exec(h, ["sh", "-c", script])
                return h, r.stdout

        return dict(await asyncio.gather(*(one(h) for h in self.rs)))

    async def reset(self) -> None:
        await self._each(hoststate.reset_script(self.vip))
        clean = await self.observe()
        dirty = [
            h
            for h, o in clean.items()
            if o.link != "missing" or any(a.endswith("/32") for a in o.lo_addresses)
        ]
        if dirty:
            raise RuntimeError(f"reset left state on {dirty[:5]}")

    async def observe(self) -> dict[str, hoststate.Observed]:
        out = await self._each(hoststate.observe_script())
        return {h: hoststate.parse_observed(t) for h, t in out.items()}

    async def verify(self) -> str | None:
        assert self.expected is not None
        got = await self.observe()
        bad = {h: o for h, o in got.items() if o != self.expected}
        if not bad:
            return None
        h, o = next(iter(sorted(bad.items())))
        return f"{len(bad)} hosts differ, e.g. {h}: " + "; ".join(
            hoststate.differences(o, self.expected)
        )

    # --- inputs for everyone ------------------------------------------------------------------

    async def prepare(self) -> None:
        """Converge the director once, take the reference files from shoal's plan, write the
        peers' inputs and the floor's scripts."""
        await self.reset()
        if "shoal-sudo" in self.tool_names:
            await self._install_sudo_login()
        plan = await asyncio.to_thread(
            run_measured,
            [str(SHOAL), "plan", str(self.repo), "--key", str(self.lab.client_key_path), "--json"],
            log=self.work / "shoal-plan-clean.json",
        )
        doc = json.loads(plan.output[plan.output.index("{") :])
        writes = {
            w["path"]: w
            for step in doc["plan"]["hosts"][self.rs[0]]["steps"]
            for w in step["writes"]
        }
        files = self.work / "files"
        files.mkdir(exist_ok=True)
        for name, path in (("restore", hoststate.RESTORE_SCRIPT), ("unit", hoststate.RESTORE_UNIT)):
            (files / name).write_text(writes[path]["content"])
        sysctls = {
            f"net.ipv4.conf.{scope}.{k}": v
            for scope in ("all", "eth0")
            for k, v in ARP_VALUES.items()
        }
        self.peer_vars = {
            "vip": self.vip,
            "sysctls": sysctls,
            "sysctl_file": hoststate.SYSCTL_FILE,
            "restore_src": str(files / "restore"),
            "restore_path": hoststate.RESTORE_SCRIPT,
            "restore_mode": "0" + writes[hoststate.RESTORE_SCRIPT]["mode"].lstrip("0"),
            "unit_src": str(files / "unit"),
            "unit_path": hoststate.RESTORE_UNIT,
            "unit_mode": "0" + writes[hoststate.RESTORE_UNIT]["mode"].lstrip("0"),
            "wants_link": hoststate.WANTS_LINK,
        }
        # Warm-up (not measured): converges the director, which is never reset afterwards.
        warm = await asyncio.to_thread(self._shoal_apply_measured, "warmup")
        if warm.returncode != 0:
            raise RuntimeError(f"shoal apply (warm-up) failed: {warm.output[-2000:]}")
        self.expected = (await self.observe())[self.rs[0]]
        problem = await self.verify()
        if problem:
            raise RuntimeError(f"shoal's own converge is not uniform: {problem}")
        self._check_expected()
        if "shoal-sudo" in self.tool_names:
            # Not measured: sudo works for deploy on every host before any sample depends on it.
            key = str(self.lab.client_key_path)
            sudo = await asyncio.to_thread(
                run_measured, [str(SHOAL), "plan", str(self.sudo_repo), "--key", key],
                log=self.work / "shoal-sudo-plan-warmup.log", cwd=ROOT,
            )  # fmt: skip
            if sudo.returncode != 0:
                raise RuntimeError(f"shoal plan through sudo (warm-up): {sudo.output[-2000:]}")
        self._write_peer_inputs()
        self._write_floor_inputs()

    async def _install_sudo_login(self) -> None:
        """The deploy user and what `shoal sudoers` prints for the sudo repo, on every host
        shoal logs in to (the director too), as root through the lab."""
        # stdout alone: the script goes to sh as it is.
        printed = await asyncio.to_thread(
            subprocess.run, [str(SHOAL), "sudoers", str(self.sudo_repo)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if printed.returncode != 0:
            raise RuntimeError(f"shoal sudoers failed: {printed.stderr[-2000:]}")
        (self.work / "shoal-sudoers.sh").write_text(printed.stdout)
        hosts = [DIRECTOR, *self.rs]
        done = await prepare_sudo_login(self.lab, hosts, SUDO_USER, printed.stdout)
        ok = f"installed {WRAPPER_PATH} and {SUDOERS_PATH}"
        missing = [h for h in hosts if ok not in done[h]]
        if missing:
            raise RuntimeError(f"the sudoers install printed no {ok!r} on {missing[:5]}")

    def _check_expected(self) -> None:
        """shoal's converged host must be the job as the issue states it, independently."""
        e = self.expected
        assert e is not None
        want_sysctls = tuple(sorted(self.peer_vars["sysctls"].items()))
        problems = []
        if e.sysctls != want_sysctls:
            problems.append(f"sysctls {e.sysctls}")
        if f"{self.vip}/32" not in e.lo_addresses:
            problems.append(f"lo {e.lo_addresses}")
        if e.persisted != want_sysctls:
            problems.append(f"sysctl.d {e.persisted}")
        if e.link != hoststate.RESTORE_UNIT or "missing" in (e.restore, e.unit):
            problems.append(f"restore files {e.restore} {e.unit} {e.link}")
        if problems:
            raise RuntimeError(
                "shoal's converged state is not the bench job: " + "; ".join(problems)
            )

    def _shoal_apply_measured(self, tag: str) -> Measured:
        argv = [
            str(SHOAL),
            "apply",
            str(self.repo),
            "--key",
            str(self.lab.client_key_path),
            "--yes",
        ]
        return run_measured(argv, log=self.work / f"shoal-apply-{tag}.log", cwd=ROOT)

    def _write_peer_inputs(self) -> None:
        p = self.work / "peers"
        p.mkdir(exist_ok=True)
        (p / "peer-vars.json").write_text(json.dumps(self.peer_vars, indent=2))
        key, kh = self.lab.client_key_path, self.lab.known_hosts_path
        # Ansible: the playbook from bench/peers, its vars next to it.
        (p / "site.yml").write_text((PEERS / "ansible/site.yml").read_text())
        inv = ["[real_servers]"]
        inv += [f"{h} ansible_host={self.lab.hosts[h].address}" for h in self.rs]
        (p / "inventory.ini").write_text("\n".join(inv) + "\n")
        (p / "ansible.cfg").write_text(
            "[defaults]\n"
            f"forks = {self.n}\n"
            "gathering = explicit\n"
            "host_key_checking = True\n"
            "remote_user = root\n"
            f"private_key_file = {key}\n"
            "interpreter_python = /usr/bin/python3\n"
            "retry_files_enabled = False\n"
            f"local_tmp = {p / 'ansible-local'}\n"
            "[ssh_connection]\n"
            "pipelining = True\n"
            f"ssh_args = -o ControlMaster=auto -o ControlPersist=60s -o IdentitiesOnly=yes "
            f"-o UserKnownHostsFile={kh} -o StrictHostKeyChecking=yes -o BatchMode=yes\n"
        )
        # pyinfra: the deploy from bench/peers, an inventory of this lab's hosts.
        (p / "deploy.py").write_text((PEERS / "pyinfra_deploy/deploy.py").read_text())
        hosts = [
            (
                h,
                {
                    "ssh_hostname": self.lab.hosts[h].address,
                    "ssh_user": "root",
                    "ssh_key": str(key),
                    "ssh_known_hosts_file": str(kh),
                    "ssh_strict_host_key_checking": "yes",
                },
            )
            for h in self.rs
        ]
        (p / "inventory.py").write_text(f"real_servers = {hosts!r}\n")

    def _write_floor_inputs(self) -> None:
        desired = load_repository(self.repo)
        paths = managed_paths(desired)
        scripts = {
            h.address: build_facts_script(paths.get(name, []))
            for name, h in desired.inventory.hosts.items()
        }
        (self.work / "floor-hosts.json").write_text(json.dumps(scripts))

    def tools(self) -> dict[str, Tool]:
        p = self.work / "peers"
        key = str(self.lab.client_key_path)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "PYTHON"))}
        ans_env = {
            **base_env,
            "ANSIBLE_CONFIG": str(p / "ansible.cfg"),
            "ANSIBLE_HOME": str(p / "ansible-home"),
        }
        ans = [str(peerenv.bin_path("ansible-playbook")), "-i", "inventory.ini", "site.yml"]
        pyi_env = {**base_env, "PEER_VARS": str(p / "peer-vars.json")}
        pyi = str(peerenv.bin_path("pyinfra"))
        floor = [
            str(PROJECT_PY),
            "-m",
            "bench.floor",
            str(self.work / "floor-hosts.json"),
            str(self.lab.known_hosts_path),
            key,
        ]
        return {
            "shoal": Tool(
                "shoal",
                [str(SHOAL), "apply", str(self.repo), "--key", key, "--yes"],
                [str(SHOAL), "plan", str(self.repo), "--key", key],
                base_env,
                ROOT,
                _rc_ok,
                _shoal_noop,
            ),
            "shoal-sudo": Tool(
                "shoal-sudo",
                [str(SHOAL), "apply", str(self.sudo_repo), "--key", key, "--yes"],
                [str(SHOAL), "plan", str(self.sudo_repo), "--key", key],
                base_env,
                ROOT,
                _rc_ok,
                _shoal_noop,
                login_user=SUDO_USER,
            ),
            "ansible": Tool(
                "ansible",
                ans,
                [*ans, "--check"],
                ans_env,
                p,
                _ansible_check(True, self.n),
                _ansible_check(False, self.n),
                detached_marker="ansible-cp",
            ),
            "pyinfra": Tool(
                "pyinfra",
                [pyi, "-y", "inventory.py", "deploy.py"],
                [pyi, "--dry", "inventory.py", "deploy.py"],
                pyi_env,
                p,
                _rc_ok,
                _pyinfra_noop,
            ),
            "floor": Tool("floor", floor, floor, base_env, ROOT, _rc_ok, _rc_ok),
        }

    # --- measuring ------------------------------------------------------------------------------

    async def measure(self, tool: Tool, action: str, tag: str) -> tuple[Measured, Sample]:
        argv = tool.converge if action == "converge" else tool.noop
        env = dict(tool.env)
        marker = None
        if tool.detached_marker:
            # A control-path directory per run: its masters are found (and ended) by it.
            cp = Path(tempfile.mkdtemp(prefix=f"{tool.detached_marker}-", dir=self.work))
            env["ANSIBLE_SSH_CONTROL_PATH_DIR"] = str(cp)
            marker = str(cp)
        self.loads.append(os.getloadavg()[0])
        self.logs.mark()
        m = await asyncio.to_thread(
            run_measured,
            argv,
            env=env,
            cwd=tool.cwd,
            log=self.work / f"{tool.name}-{action}-{tag}.log",
        )
        cpu = m.cpu
        if marker:
            cpu += detached_cpu(marker, end=True)
        await asyncio.sleep(LOG_SETTLE)
        counts = self.logs.read()
        check = tool.converge_ok if action == "converge" else tool.noop_ok
        problem = check(m)
        logins = login_problems(counts, tool.login_user)
        if problem is None and logins:
            h, what = next(iter(logins.items()))
            problem = f"{len(logins)} hosts not logged in to as {tool.login_user}, e.g. {h}: {what}"
        if problem is None:
            problem = await self.verify()
        sample = Sample(
            wall=m.wall,
            cpu=cpu,
            ok=problem is None,
            ssh=summarise(counts, self.rs),
            ssh_director=(
                summarise(counts, [DIRECTOR]) if tool.name in (*SHOAL_TOOLS, "floor") else None
            ),
            note=problem or "",
        )
        if problem:
            self.notes.append(f"{self.n} hosts, {tool.name} {action} ({tag}): {problem[:600]}")
            log(f"{tool.name} {action} {tag}: NOT counted: {problem[:300]}")
        else:
            log(
                f"{tool.name} {action} {tag}: {m.wall:.2f}s wall, {cpu:.2f}s cpu, "
                f"{sample.ssh.describe() if sample.ssh else ''}"
            )
        self.series.setdefault(
            (tool.name, action), Series(tool.name, action, self.n)
        ).samples.append(sample)
        return m, sample

    async def measure_fixed(self, tag: str) -> None:
        """`shoal plan` on the in-sync hosts, its SSH round trip timed apart
        (`bench.timed_plan`): the sample's wall is the process's wall time less that."""
        key = str(self.lab.client_key_path)
        argv = [str(PROJECT_PY), "-m", "bench.timed_plan", str(self.repo), "--key", key]
        self.loads.append(os.getloadavg()[0])
        m = await asyncio.to_thread(
            run_measured, argv, cwd=ROOT, log=self.work / f"shoal-fixed-{tag}.log"
        )
        gather = gather_seconds(m.output)
        problem = None
        if m.returncode != 0:
            problem = f"shoal plan exited {m.returncode} (not in sync?): {m.output[-300:]}"
        elif gather is None:
            problem = "no gather time printed"
        fixed = m.wall - (gather or 0.0)
        sample = Sample(wall=fixed, cpu=m.cpu, ok=problem is None, note=problem or "")
        if problem:
            self.notes.append(f"{self.n} hosts, shoal fixed cost ({tag}): {problem}")
        log(f"shoal fixed {tag}: {fixed:.3f}s outside the round trip ({m.wall:.3f}s wall, "
            f"gather {gather or 0:.3f}s)")  # fmt: skip
        self.series.setdefault(("shoal", "fixed"), Series("shoal", "fixed", self.n)).samples.append(
            sample
        )

    async def run(self) -> list[Series]:
        t0 = time.monotonic()
        log(f"{self.n} hosts: preparing (reference plan, warm-up apply)")
        await self.prepare()
        tools = self.tools()
        order = [t for t in TOOLS if t in self.tool_names]
        for rep in range(self.reps):
            rotated = order[rep % len(order) :] + order[: rep % len(order)]
            for name in rotated:
                tool = tools[name]
                await self.reset()
                await self.measure(tool, "converge", f"r{rep}")
                await self.measure(tool, "noop", f"r{rep}")
                if name == "shoal":
                    # The floor right after shoal's no-op check, on the same converged hosts,
                    # so the two see the same machine load.
                    await self.measure(tools["floor"], "noop", f"r{rep}")
                    await self.measure_fixed(f"r{rep}")
        log(f"{self.n} hosts: done in {time.monotonic() - t0:.0f}s")
        if self.loads:
            self.notes.append(
                f"{self.n} hosts: 1-minute load average at the start of the measurements: "
                f"min {min(self.loads):.1f}, max {max(self.loads):.1f} "
                f"({os.cpu_count()} cores; the lab's sshd and on-host scripts run here too)"
            )
        return list(self.series.values())


def shoal_profile_argv(work: Path, key: Path, action: str) -> list[str]:
    repo = work / "repo"
    if action == "converge":
        return [str(SHOAL), "apply", str(repo), "--key", str(key), "--yes"]
    return [str(SHOAL), "plan", str(repo), "--key", str(key)]


def quoted(argv: list[str]) -> str:
    return shlex.join(argv)
