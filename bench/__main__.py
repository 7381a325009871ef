"""`python -m bench` (`make bench`): shoal (as root and through sudo) vs Ansible vs pyinfra vs
the floor, and plan scale.

    python -m bench [--hosts 10,50,100] [--reps 3] [--tools shoal,shoal-sudo,ansible,pyinfra]
                    [--plan-sizes 1000,10000] [--no-lab] [--no-plan-scale] [--no-profile]
                    [--lab-prefix bench]

Prints a table and writes bench/results/<date>.md. Needs root (the lab); the peers are
installed into bench/.peers-venv on first use.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import labrun, peerenv
from bench.profile import summary
from bench.report import (
    PlanScale,
    Results,
    evaluate_targets,
    render_markdown,
    render_text,
    sudo_notes,
)
from bench.stats import Series

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
TARGET_HOSTS = 50


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _tools(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = sorted(set(names) - set(labrun.TOOLS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown tools {unknown}: choose from {','.join(labrun.TOOLS)}"
        )
    return names


def _lab_prefix(text: str) -> str:
    # The lab id is the prefix plus the host count, at most 8 of a-z and 0-9 (check_lab_id).
    if not (text.isascii() and text.isalnum() and text.islower() and len(text) <= 5):
        raise argparse.ArgumentTypeError("1-5 characters of a-z and 0-9")
    return text


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=" ".join(__doc__.split("\n\n")[0].split())
    )
    p.add_argument(
        "--hosts", type=_ints, default=[TARGET_HOSTS], help="real servers, e.g. 10,50,100"
    )
    p.add_argument("--reps", type=int, default=3, help="repetitions per measurement")
    p.add_argument("--tools", type=_tools, default=list(labrun.TOOLS), help="comma-separated")
    p.add_argument("--plan-sizes", type=_ints, default=[1000, 10000])
    p.add_argument("--no-lab", action="store_true", help="plan scale only")
    p.add_argument("--no-plan-scale", action="store_true")
    p.add_argument("--no-profile", action="store_true", help="no py-spy runs for missed targets")
    p.add_argument(
        "--lab-prefix",
        type=_lab_prefix,
        default="bench",
        help="lab id = prefix + host count (another prefix beside a running bench)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="results file (default: results/<date>.md)"
    )
    return p.parse_args(argv)


def machine() -> dict[str, str]:
    mem = "?"
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": str(os.cpu_count()),
        "cpu": model,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def versions(peers: dict[str, str]) -> dict[str, str]:
    from importlib.metadata import version

    git = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    out = {
        "shoal": f"{version('shoal')} (tree at {git or '?'} plus uncommitted work)",
        "asyncssh (shoal, floor)": version("asyncssh"),
        "pydantic": version("pydantic"),
        "OpenSSH (lab sshd, Ansible's ssh)": ssh,
    }
    out.update({f"{k} (peers venv)": v for k, v in peers.items()})
    paramiko = peerenv.installed().get("paramiko")
    if paramiko:
        out["paramiko (pyinfra)"] = paramiko
    return out


def plan_scale(sizes: list[int]) -> list[PlanScale]:
    out = []
    for n in sizes:
        print(f"bench: plan scale {n} real servers", file=sys.stderr, flush=True)
        r = subprocess.run(
            [sys.executable, "-m", "bench.planscale", str(n)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        d = json.loads(r.stdout.strip().splitlines()[-1])
        out.append(
            PlanScale(
                d["real_servers"], d["vips"], d["load_s"], d["plan_s"], d["peak_mib"], d["steps"],
                d["replan_s"],
            )
        )
    return out


def py_spy(argv: list[str], out: Path, cwd: Path) -> str:
    """Profile one command with py-spy (collapsed stacks) and summarise shoal's own frames."""
    cmd = [
        str(peerenv.bin_path("py-spy")),
        "record",
        "--format",
        "raw",
        "--rate",
        "200",
        "--subprocesses",
        "-o",
        str(out),
        "--",
        *argv,
    ]
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if not out.exists():
        return f"py-spy failed: {r.stderr[-500:]}"
    return summary(out.read_text(), root=str(ROOT), only=("reconciler/", "states/", "bench/"))


def target_size(hosts: list[int]) -> int:
    """The host count the targets are judged at: 50 if measured, else the largest."""
    return TARGET_HOSTS if TARGET_HOSTS in hosts else max(hosts)


async def lab_part(args: argparse.Namespace, results: Results, work: Path) -> None:
    tools: list[str] = args.tools
    for n in args.hosts:
        w = work / f"h{n}"
        w.mkdir()
        profile_at = None if args.no_profile else target_size(args.hosts)
        series, notes = await _run_one(
            f"{args.lab_prefix}{n}", n, args.reps, w, tools, profile_at, results
        )
        results.series += series
        results.notes += notes


async def _run_one(
    lab_id: str,
    n: int,
    reps: int,
    work: Path,
    tools: list[str],
    profile_at: int | None,
    results: Results,
) -> tuple[list[Series], list[str]]:
    from lab import Lab, Topology

    async with Lab.up(lab_id, Topology.with_real_servers(n), ephemeral=True) as lab:
        bench = labrun.LabBench(lab, work, reps, tools)
        series = await bench.run()
        if n == profile_at:
            # Profiles of shoal's own runs at this size, kept if a target turns out missed.
            await bench.reset()
            key = lab.client_key_path
            conv = await asyncio.to_thread(
                py_spy,
                labrun.shoal_profile_argv(work, key, "converge"),
                work / "spy-apply.txt",
                ROOT,
            )
            noop = await asyncio.to_thread(
                py_spy, labrun.shoal_profile_argv(work, key, "noop"), work / "spy-plan.txt", ROOT
            )
            results.pending_profiles[n] = {"converge": conv, "noop": noop}
        return series, bench.notes


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM unwinds like Ctrl-C, so the lab's context manager takes the hosts down.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, _interrupt)
    peers = peerenv.ensure()
    results = Results(machine=machine(), versions=versions(peers), repetitions=args.reps)
    work = Path(tempfile.mkdtemp(prefix="shoal-bench-"))
    if not args.no_lab:
        asyncio.run(lab_part(args, results, work))
        results.notes += sudo_notes(results)
    if not args.no_plan_scale:
        results.plan_scale = plan_scale(args.plan_sizes)
    target_n = target_size(args.hosts)
    results.targets = evaluate_targets(results, target_n) if not args.no_lab else []
    if args.no_lab and results.plan_scale:
        results.targets = [
            t for t in evaluate_targets(results, target_n) if "plan" in t.name or "growth" in t.name
        ]
    missed = {t.name for t in results.targets if t.met is False}
    pending = results.pending_profiles.get(target_n, {})
    if any("no-op" in m or "facts" in m for m in missed) and "noop" in pending:
        results.profiles.append(f"shoal plan, {target_n} hosts (py-spy):\n{pending['noop']}")
    if any("converge" in m or "apply" in m for m in missed) and "converge" in pending:
        results.profiles.append(f"shoal apply, {target_n} hosts (py-spy):\n{pending['converge']}")
    if (
        not args.no_profile
        and results.plan_scale
        and any("plan of" in m or "growth" in m for m in missed)
    ):
        big = max(args.plan_sizes)
        argv2 = [sys.executable, "-m", "bench.planscale", str(big), "--reps", "1"]
        spy = py_spy(argv2, work / "spy-planscale.txt", ROOT)
        results.profiles.append(f"plan scale, {big} real servers (py-spy):\n{spy}")
    results.notes.append(f"raw logs of this run: {work}")
    text = render_text(results)
    print(text)
    date = datetime.datetime.now().strftime("%Y-%m-%d-%H%M")
    out = args.out or RESULTS / f"{date}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_markdown(results, f"shoal benchmark, {date}, hosts {args.hosts}"))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
