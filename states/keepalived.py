"""The `keepalived` director backend's state: plan `keepalived.config` (and its shell commands).

keepalived owns the IPVS table and the VIPs (VRRP) on a keepalived director, so shoal manages
only its config file: rendered by `states.keepalived_conf` (deterministic, sorted), validated on
the host with `keepalived -t -f TMP` (exit 0 required), installed, and reloaded only when the
content changed: an installed file that says the same in other words (a hand-written one, say)
is in sync (`states.keepalived_meaning`). Of the real servers a new file brings, only those the
host did not serve before become shoal's (its claims); the others stay foreign unless the host
adopts.

Facts that shape the output (research notes, section 2):
- `lb_kind DR` is written explicitly and in upper case; a missing or lower-case method is NAT.
- No `vrrp_strict`: it installs DROP rules for the VIPs. No scripts, so script security is moot
  and `keepalived -t` returns 0.
- The VIPs are `/32` on the director's interface: a /32 adds no prefix route and never becomes a
  secondary of the interface's own subnet (removing a primary deletes its secondaries).
- A SIGHUP deletes real servers missing from the new file at once, without draining; so a real
  server that leaves is first rendered at weight 0 (a "drain" config), the executor waits for its
  connections, and only then is the final file installed (both in one plan).
"""

from __future__ import annotations

import hashlib
from typing import Any

from reconciler.facts.hostfacts import HostFacts
from reconciler.plan.steps import Argv, Change, DrainWait, FileWrite, LowState, Step
from states.args import Args, LedgerOp, ledger_of
from states.base import Claim, PlanContext, StateResult, created
from states.common import skip
from states.keepalived_meaning import brought_real_servers, installed_text, same_meaning
from states.kind import StateKind

FUNCTION = "keepalived.config"
CONF_PATH = "/etc/keepalived/keepalived.conf"
# Only where no service manager runs keepalived; private to the host's /var/lib, which the lab
# gives every host (its /run may be shared). shoal's own state directory, not one of its own:
# every phase has made it before a step runs, while a directory the start made would be left
# behind when the start is rolled back.
PID_DIR = "/var/lib/shoal"

# Decided on the host at apply time: systemd as PID 1 -> systemctl; else SIGHUP through the pid
# file when that process is alive (shoal's own, or keepalived's default /run/keepalived.pid of a
# daemon started by hand, if it runs in this host's network namespace: lab hosts share /run);
# else start keepalived. Every value is a positional parameter.
# Starting it by hand honours DAEMON_ARGS from /etc/default/keepalived, as Debian's unit and init
# script do (sourced in a subshell, split into words on purpose: it is a list of options), e.g.
# `--vrrp` on a host whose kernel has no IPVS (the lab's): there the checker process exits FATAL
# at start and takes keepalived down with it. keepalived's parent returns as soon as it has
# forked, so a daemon that dies right away must still fail the step: its pid is checked after 1 s.
_RELOAD_SCRIPT = (
    "conf=$1; dir=$2; "
    "if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then "
    "exec systemctl reload-or-restart keepalived; fi; "
    'for f in "$dir/keepalived.pid" /run/keepalived.pid; do pid=$(cat "$f" 2>/dev/null); '
    '[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || continue; '
    '[ "$f" = /run/keepalived.pid ] && [ "$(readlink /proc/"$pid"/ns/net)" != '
    '"$(readlink /proc/self/ns/net)" ] && continue; exec kill -HUP "$pid"; done; '
    'mkdir -p "$dir" || exit; opts=; '
    "if [ -r /etc/default/keepalived ]; then "
    'opts=$(. /etc/default/keepalived >/dev/null 2>&1; printf %s "${DAEMON_ARGS-}"); fi; '
    'keepalived $opts -f "$conf" -p "$dir/keepalived.pid" -r "$dir/keepalived_vrrp.pid" '
    '-c "$dir/keepalived_checkers.pid" || exit; sleep 1; '
    'pid=$(cat "$dir/keepalived.pid" 2>/dev/null); '
    'if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then exit 0; fi; '
    'echo "keepalived exited right after starting (DAEMON_ARGS: ${opts:-none}); a kernel '
    'without IPVS needs --vrrp in /etc/default/keepalived" >&2; exit 1'
)


# keepalived 2.2.7 reports a virtual server whose real servers sum to weight 0 (all drained, or
# none yet) as a config error, exit 5: quorum (at least 1) exceeds the total weight. That is the
# drain state shoal wants, so for such a file exactly those two warnings are let through.
_VALIDATE_ZERO_WEIGHT_SCRIPT = (
    'out=$(keepalived -t -f "$1" 2>&1); rc=$?; [ "$rc" -eq 0 ] && exit 0; '
    '[ "$rc" -eq 5 ] && ! printf "%s\\n" "$out" | '
    "grep -v -e 'exceeds total weight of real servers 0, reducing quorum to 0' "
    "-e 'hysteresis 0 >= quorum 0; setting hysteresis to' | grep -q . && exit 0; "
    'printf "%s\\n" "$out" >&2; exit "$rc"'
)


def has_zero_weight_server(content: str) -> bool:
    """Whether a rendered file has a virtual server whose real servers sum to weight 0."""
    total: int | None = None
    for line in content.splitlines():
        if line.startswith("virtual_server "):
            total = 0
        elif total is not None and line.startswith("        weight "):
            total += int(line.split()[1])
        elif total is not None and line == "}":
            if total == 0:
                return True
            total = None
    return False


def validate_argv(tmp: str, content: str) -> Argv:
    if has_zero_weight_server(content):
        return ("sh", "-c", _VALIDATE_ZERO_WEIGHT_SCRIPT, "sh", tmp)
    return ("keepalived", "-t", "-f", tmp)


def reload_argv(path: str = CONF_PATH) -> Argv:
    return ("sh", "-c", _RELOAD_SCRIPT, "sh", path, PID_DIR)


# Undo of starting a daemon that was not running: stop it again, and wait until it has released
# its VIPs and virtual servers, so a rollback leaves the host as it found it.
_STOP_SCRIPT = (
    "dir=$1; "
    "if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then "
    "exec systemctl stop keepalived; fi; "
    'pid=$(cat "$dir/keepalived.pid" 2>/dev/null); [ -n "$pid" ] || exit 0; '
    'kill -TERM "$pid" 2>/dev/null || exit 0; i=0; '
    'while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i+1)); done; '
    '! kill -0 "$pid" 2>/dev/null'
)


def stop_argv() -> Argv:
    return ("sh", "-c", _STOP_SCRIPT, "sh", PID_DIR)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- args -----------------------------------------------------------------------------------------


class DrainArgs(Args):
    """A real server leaving a virtual service: what the drain step waits for."""

    service: str  # "tcp 10.77.0.100:80"
    real_server: str  # "10.77.0.21:80"


class KeepalivedArgs(Args):
    path: str = CONF_PATH
    content: str
    drain_timeout: float = 30.0
    ledger: tuple[LedgerOp, ...] = ()
    # Why the compiler could not plan the file (an unknown ledger): nothing but a skip.
    skip_reason: str | None = None
    # A real server leaves: this config (it at weight 0) goes first, then the drains.
    drain_content: str | None = None
    drains: tuple[DrainArgs, ...] = ()


# --- the state function ---------------------------------------------------------------------------


def current_config(facts: HostFacts, path: str, sha: str) -> str:
    """The installed file as the plan's "before": its content when the facts carry that very
    file (same digest), else its digest and why there is no content."""
    files = facts.files.value if facts.files.known else None
    info = (files or {}).get(path)
    if info is not None and info.content is not None and info.sha256 == sha:
        return info.content
    why = info.content_unknown_reason if info is not None else None
    return f"sha256 {sha} (content not shown: {why or 'content not gathered'})"


def _install_steps(
    low: LowState,
    stage: str,
    content: str,
    path: str,
    existed: bool,
    before: str | None,
    after: tuple[str, ...],
    was_running: bool = True,
    staged: bool = False,
) -> list[Step]:
    """validate (temp file, `keepalived -t`), install (atomic rename), reload.

    `staged`: an earlier stage of the same plan (the drain config) installed over the file
    already, keeping the original in `prev`.
    """
    tmp = f"{path}.shoal-new"
    prev = f"{path}.shoal-prev"
    base = f"{low.host}/{low.id}/{stage}"

    def step(action: str, description: str, **kw: Any) -> Step:
        return Step(
            id=f"{base}/{action}", host=low.host, state_id=low.id, function=low.function,
            subsystem="keepalived", phase=low.phase, description=description, **kw,
        )  # fmt: skip

    validate = step(
        "validate", f"validate {stage} keepalived.conf with keepalived -t",
        writes=(FileWrite(path=tmp, content=content, mode="0644"),),
        commands=(validate_argv(tmp, content),),
        undo=(("rm", "-f", tmp),),
        require=after,
    )  # fmt: skip
    # The validated bytes are what gets installed: a rename, not a second write.
    commands: tuple[Argv, ...] = (("mv", "-f", tmp, path),)
    undo: tuple[Argv, ...] = (("rm", "-f", path),)
    if staged:
        # No second copy: it would overwrite the original in `prev` with the drain config, and
        # the drain stage's undo (which runs after this one's) could not put the original back.
        # That undo restores the original and reloads; until then the drain config is in place.
        undo = ()
    elif existed:
        commands = (("cp", "-p", path, prev), *commands)
        # A daemon that was not running stays stopped: the reload step's undo stops it first.
        undo = (
            (("mv", "-f", prev, path), reload_argv(path))
            if was_running
            else (("mv", "-f", prev, path),)
        )
    install = step(
        "install", f"install {stage} {path}",
        change=Change(before=before, after=content),
        commands=commands, undo=undo, require=(validate.id,),
    )  # fmt: skip
    reload = step(
        "reload", "reload keepalived (SIGHUP, or start it)",
        commands=(reload_argv(path),), require=(install.id,),
        undo=() if was_running else (stop_argv(),),
    )  # fmt: skip
    return [validate, install, reload]


def plan_config(low: LowState, args: KeepalivedArgs, ctx: PlanContext) -> StateResult:
    """`keepalived.config`: install `content`; first `drain_content` and the drains, if any."""
    facts: HostFacts | None = ctx.facts.get(low.host)
    if args.skip_reason:
        return skip(low, args.skip_reason)
    if facts is None or not facts.keepalived.known or facts.keepalived.value is None:
        why = facts.keepalived.unknown_reason if facts is not None else "no facts"
        return skip(low, f"keepalived facts unknown ({why}); config not planned", unknown=True)
    info = facts.keepalived.value
    path, content = args.path, args.content
    current = info.config_sha256
    existed = current is not None
    before = current_config(facts, path, current) if current is not None else None
    installed = installed_text(facts, path, current)
    if current == sha256_text(content) or (
        installed is not None and same_meaning(installed, content)
    ):
        if info.running:
            return StateResult()
        start = Step(
            id=f"{low.host}/{low.id}/start", host=low.host, state_id=low.id,
            function=low.function, subsystem="keepalived", phase=low.phase,
            description="start keepalived (config in sync, daemon not running)",
            commands=(reload_argv(path),),
            undo=(stop_argv(),),
        )  # fmt: skip
        return StateResult(steps=(start,))
    steps: list[Step] = []
    drain_content = args.drain_content
    staged = False
    if drain_content and current != sha256_text(drain_content):
        steps += _install_steps(
            low, "drain", drain_content, path, existed, before, (), info.running
        )
        # The final stage replaces the drain config: its diff is drain -> final.
        existed, before, staged = True, drain_content, True
    if drain_content:
        timeout = args.drain_timeout
        prior = steps[-1].id if steps else None
        for d in args.drains:
            steps.append(
                Step(
                    id=f"{low.host}/{low.id}/drain/{d.service}/{d.real_server}",
                    host=low.host, state_id=low.id, function=low.function,
                    subsystem="keepalived", phase=low.phase,
                    description=f"drain {d.real_server} of {d.service}",
                    drain=DrainWait(
                        service=d.service, real_server=d.real_server, timeout=timeout,
                    ),
                    require=(prior,) if prior else (),
                )
            )  # fmt: skip
    # The final file waits for the drain config and for every drain.
    after = tuple(s.id for s in steps if s.id.endswith("/reload") or s.drain is not None)
    steps += _install_steps(
        low, "final", content, path, existed, before, after, info.running, staged
    )
    return StateResult(steps=tuple(steps), claims=_created(args, facts, installed, existed))



def _created(
    args: KeepalivedArgs, facts: HostFacts, installed: str | None, existed: bool
) -> tuple[Claim, ...]:
    """The claims of the real servers the new file brings (`states.keepalived_meaning`)."""
    wanted = {k for op in args.ledger if op.op == "add" for k in op.keys}
    new = brought_real_servers(wanted, facts, installed, existed)
    return created(args.ledger, tuple(sorted(new)))

CONFIG = StateKind(FUNCTION, KeepalivedArgs, plan_config, ledger=ledger_of)
