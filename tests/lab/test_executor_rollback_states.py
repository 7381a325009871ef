"""The fault matrix of issue 4 for real states: a failure at each step, the host as before.

Every plan here is a real one (a cluster file, the hosts' facts, `plan_desired`), applied to a
lab of this module's own; a fault makes one command of one step fail on one host only
(tests/lab/rollback_states_support.py). After the failed apply each host must print exactly
what it printed before: arptables-save, iptables-save, the nft ruleset, addresses, sysctls,
shoal's files, keepalived's file, pid file and process, the test's own files. The failed step
is the one the fault hit, the steps before it (in its phase) were rolled back, none after it
ran, and the executor proved its rollback.

- keepalived.config (lvs1): validate, install, reload, and the steps after them; from nothing
  (a failure at or after the start must stop the daemon again), an update of a running daemon
  through a drain config (the same daemon must end with the OLD file loaded: the new files add
  a VIP that must be gone again), and a stopped daemon whose file is in sync (start).
- nft.dsr_table (lvs2): the table's check and load, then the steps after it (the VIP,
  service.enabled, the ledger) from no table; an update of a table with other real servers:
  check, load, the drain (hung, stopped by the command timeout), the step after it.
- pkg.installed and service.running (start, and its watch restart) as extras on web3, with a
  file.managed before and after each; kmod.present on an ipvsadm director, whose failure in
  the packages phase must stop the whole rollout before any host changed.

The parameters are step ids, not indexes: the phase holds other states' steps too
(persistence, ledger), and those may change without changing what is tested here.
"""

from __future__ import annotations

import asyncio
import json
import shlex
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from lab import Lab, Topology
from reconciler.apply.runresult import RunResult
from reconciler.facts.hostfacts import HostFacts
from reconciler.plan.steps import Step
from states.keepalived import CONF_PATH, stop_argv
from tests.lab.rollback_states_support import (
    AFTER,
    DAEMON_ARGS,
    FAIL,
    HANG,
    KEEPALIVED_PID,
    OK,
    STATES_DIR,
    UNITS_DIR,
    Planned,
    Rule,
    apply,
    assert_failed_at,
    assert_same,
    cleared,
    cluster_toml,
    command_fault,
    converge_hosts,
    hide,
    host_state,
    inject,
    plan_now,
    service_toml,
    settled_state,
    state_toml,
    summary,
    unit_rules,
    vip,
    with_inactive_unit,
    with_unit,
    write_desired,
    write_fault,
)

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="session")]

KA = "lvs1"  # the keepalived director
NFT = "lvs2"  # the nftables director
EXTRAS = "web3"  # pkg.installed, service.running, file.managed
KA_VIP, KA_NEW_VIP, NFT_VIP, IPVS_VIP = 140, 141, 150, 160


@dataclass
class RbLab:
    lab: Lab
    workdir: Path
    # Plans by scenario and the host's raw state they were made in: a case whose host is
    # exactly as the last case's was gets the same plan without reading the facts again.
    plans: dict[tuple[str, str], Planned] = field(default_factory=dict)
    # The state a precondition left: seen again, nothing needs doing.
    ready: dict[str, dict[str, str]] = field(default_factory=dict)

    async def planned(
        self,
        scenario: str,
        state: dict[str, str],
        cluster: Callable[[], str],
        read: Sequence[str],
        adjust: Callable[[HostFacts], HostFacts] | None = None,
    ) -> Planned:
        """The plan of `scenario` (its cluster file's name first) from the facts of `read`."""
        key = (scenario, json.dumps(state, sort_keys=True))
        if key not in self.plans:
            desired = write_desired(self.lab, self.workdir, scenario.split("-")[0], cluster())
            self.plans[key] = await plan_now(self.lab, desired, read, adjust)
        return self.plans[key]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def rb(session_token: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RbLab]:
    # A lab of its own: keepalived runs on lvs1 and VRRP puts VIPs on its eth0 in between.
    async with Lab.up(f"b{session_token}", Topology.default(), ephemeral=True) as lab:
        # This kernel has no IPVS: keepalived's checker would exit FATAL and take it down.
        await lab.exec(KA, ["sh", "-c", f"echo '{DAEMON_ARGS}' >/etc/default/keepalived"])
        # Where the stand-in systemctl records the units it started (see unit_rules).
        await lab.exec(EXTRAS, ["mkdir", "-p", UNITS_DIR])
        try:
            yield RbLab(lab, tmp_path_factory.mktemp("rbstates"))
        finally:
            await lab.exec(KA, list(stop_argv()), check=False)


def index_of(steps: list[Step], step_id: str) -> int:
    ids = [s.id for s in steps]
    assert step_id in ids, ids
    return ids.index(step_id)


# --- keepalived.config ----------------------------------------------------------------------

KA_STATE = f"{KA}/keepalived-conf"
KA_LEDGER = f"{KA}/shoal-ledger/write"


def ka_cluster(lab: Lab, new: bool) -> str:
    """OLD: one service (web1, web2). NEW: web2 leaves (drained) and a second VIP comes."""
    if not new:
        services = service_toml("http", vip(lab, KA_VIP), 80, {"web1": 1, "web2": 1})
    else:
        services = service_toml("http", vip(lab, KA_VIP), 80, {"web1": 1})
        services += service_toml("alt", vip(lab, KA_NEW_VIP), 8080, {"web1": 1})
    return cluster_toml("ka", [KA], "keepalived", services)


async def ka_absent(lab: Lab) -> dict[str, str]:
    await lab.exec(KA, list(stop_argv()))
    await lab.exec(
        KA, ["sh", "-c", f"rm -f {CONF_PATH} {CONF_PATH}.shoal-* /var/lib/shoal/ledger.json"]
    )
    return await host_state(lab, KA)


async def ka_running(rb: RbLab) -> dict[str, str]:
    """keepalived runs the OLD file (converged by shoal) and holds its VIP."""
    state = await host_state(rb.lab, KA)
    if rb.ready.get("ka-running") == state:
        return state
    await ka_absent(rb.lab)
    old = write_desired(rb.lab, rb.workdir, "ka", ka_cluster(rb.lab, new=False))
    await converge_hosts(rb.lab, old, [KA], [KA])
    # VRRP makes the instance MASTER a few seconds after the start.
    address = vip(rb.lab, KA_VIP)
    for _ in range(100):
        res = await rb.lab.exec(KA, ["ip", "-br", "addr", "show", "dev", "eth0", "to", address])
        if res.stdout.strip():
            break
        await asyncio.sleep(0.1)
    state = await host_state(rb.lab, KA)
    assert f'"local":"{address}"' in state["addr"], state["addr"]
    rb.ready["ka-running"] = state
    return state


def ka_fault(steps: list[Step], failing: int, running: bool) -> tuple[str, Rule]:
    """The command of keepalived.config's step `failing` that fails, and how."""
    step = steps[failing]
    kind = step.id.rsplit("/", 1)[-1]
    # The same command runs once per stage (drain, final): fail the right call of it.
    nth = 1 + sum(1 for s in steps[:failing] if s.id.rsplit("/", 1)[-1] == kind)
    if kind == "validate":
        return "/usr/sbin/keepalived", Rule(f"-t -f {step.writes[0].path}", FAIL, nth=nth)
    if kind == "install":
        # After the copy of the old file (when there is one), the rename fails.
        return command_fault(step, len(step.commands) - 1, FAIL, nth=nth)
    if kind in ("reload", "start") and running:
        # A running daemon is reloaded by SIGHUP (`exec kill -HUP PID`): the kill fails after
        # the signal went out, so the daemon has loaded the new file when the rollback starts.
        return "/usr/bin/kill", Rule("-HUP", AFTER, nth=nth, contains=True)
    if kind in ("reload", "start"):
        # keepalived starts (and forks its daemon), then the call reports a failure.
        return "/usr/sbin/keepalived", Rule(f"-p {KEEPALIVED_PID}", AFTER, contains=True)
    return write_fault(step)


async def ka_apply_failing(
    rb: RbLab, new: bool, step_id: str, before: dict[str, str]
) -> tuple[list[Step], int, RunResult, Rule]:
    """Plan OLD or NEW for lvs1, make `step_id` fail, apply: (the host's steps, index, run)."""
    planned = await rb.planned(f"ka-{new}", before, lambda: ka_cluster(rb.lab, new), [KA])
    steps = planned.steps(KA)
    failing = index_of(steps, step_id)
    program, rule = ka_fault(steps, failing, "running: pid" in before["shoal"])
    async with cleared(rb.lab, KA):
        await inject(rb.lab, KA, program, rule)
        result = await apply(rb.lab, planned, [KA])
    return steps, failing, result, rule


def ka_ids(steps: list[Step]) -> list[str]:
    """The ids of keepalived.config's own steps, in the order they run."""
    return [s.id for s in steps if s.function == "keepalived.config"]


FRESH = [f"{KA_STATE}/final/{a}" for a in ("validate", "install", "reload")]


@pytest.mark.parametrize("step_id", [*FRESH, KA_LEDGER])
async def test_keepalived_fresh_failure_leaves_no_file_and_no_daemon(
    rb: RbLab, step_id: str
) -> None:
    """No file, not running: a failure at the start (after it started) or at any later step
    must stop the daemon again and remove the file."""
    before = await ka_absent(rb.lab)
    assert "not running" in before["shoal"] and f"{CONF_PATH} absent" in before["shoal"]
    steps, failing, result, rule = await ka_apply_failing(rb, False, step_id, before)
    assert ka_ids(steps) == FRESH
    assert_same(before, await host_state(rb.lab, KA), result)
    function = "file.managed" if step_id == KA_LEDGER else "keepalived.config"
    assert_failed_at(result, KA, steps, failing, function, rule)


UPDATE = [f"{KA_STATE}/{stage}/{a}" for stage in ("drain", "final")
          for a in ("validate", "install", "reload")]  # fmt: skip


# The drain wait between the stages has no command: it waits and never fails (a drain that
# times out proceeds, like an IPVS drain), so there is nothing to inject there.
@pytest.mark.parametrize("step_id", [*UPDATE, KA_LEDGER])
async def test_keepalived_update_failure_keeps_the_old_file_loaded(rb: RbLab, step_id: str) -> None:
    """Running with the OLD file; NEW drains web2 and adds a VIP: after the failure the same
    daemon (pid) runs with the OLD file, byte for byte, and holds exactly the OLD VIPs."""
    before = await ka_running(rb)
    assert "running: pid" in before["shoal"]
    assert vip(rb.lab, KA_NEW_VIP) not in before["addr"]
    steps, failing, result, rule = await ka_apply_failing(rb, True, step_id, before)
    web2 = rb.lab.hosts["web2"].address
    drain = f"{KA_STATE}/drain/tcp {vip(rb.lab, KA_VIP)}:80/{web2}:80"
    assert ka_ids(steps) == [*UPDATE[:3], drain, *UPDATE[3:]]
    # keepalived acts on the rollback's SIGHUP after the kill returned: give it a moment.
    assert_same(before, await settled_state(rb.lab, KA, before), result)
    function = "file.managed" if step_id == KA_LEDGER else "keepalived.config"
    assert_failed_at(result, KA, steps, failing, function, rule)


async def test_keepalived_start_of_a_stopped_daemon_is_undone(rb: RbLab) -> None:
    """The file in sync, the daemon stopped: `start` is its one step; it starts it and fails."""
    await ka_running(rb)
    await rb.lab.exec(KA, list(stop_argv()))
    before = await host_state(rb.lab, KA)
    assert "not running" in before["shoal"] and "Managed by shoal" in before["shoal"]
    steps, failing, result, rule = await ka_apply_failing(rb, False, f"{KA_STATE}/start", before)
    assert ka_ids(steps) == [f"{KA_STATE}/start"]
    assert_same(before, await host_state(rb.lab, KA), result)
    assert_failed_at(result, KA, steps, failing, "keepalived.config", rule)


# --- nft.dsr_table --------------------------------------------------------------------------

NFT_APPLY = f"{NFT}/nft-dsr/apply"


def nft_cluster(lab: Lab, servers: tuple[str, ...]) -> str:
    services = service_toml("http", vip(lab, NFT_VIP), 80, dict.fromkeys(servers, 1))
    return cluster_toml("dsr", [NFT], "nftables", services)


def nft_fault(lab: Lab, steps: list[Step], case: str) -> tuple[str, int, tuple[str, Rule]]:
    """(step id, its index, the fault) of a case of the nftables director's phase."""
    ids = {
        "check": NFT_APPLY,
        "load": NFT_APPLY,
        "vip": f"{NFT}/director-vip:dsr:{vip(lab, NFT_VIP)}/add",
        "enable": f"{NFT}/persist-restore-enabled/enable",
        "ledger": f"{NFT}/shoal-ledger/write",
        "script": f"{NFT}/persist-restore-script/write",
    }
    if case == "drain":
        step_id = next(s.id for s in steps if s.id.startswith(f"{NFT}/nft-dsr/drain/"))
    else:
        step_id = ids[case]
    i = index_of(steps, step_id)
    step = steps[i]
    if case == "check":
        return step_id, i, command_fault(step, 0, FAIL)  # nft -c -f: nothing loaded
    if case == "drain":
        # The drain polls the flow map; a poll that hangs is stopped by the command timeout.
        return step_id, i, ("/usr/sbin/nft", Rule("list map netdev shoal_dsr", HANG, contains=True))
    if case in ("load", "vip", "enable"):
        # The table is loaded, the VIP added, the unit linked: then the call reports a failure.
        return (
            step_id,
            i,
            command_fault(step, len(step.commands) - 1 if case == "load" else 0, AFTER),
        )
    return step_id, i, write_fault(step)


async def nft_apply_failing(
    rb: RbLab, servers: tuple[str, ...], case: str, before: dict[str, str]
) -> tuple[list[Step], int, RunResult, Rule]:
    # The director's facts, and the real servers' for their MACs.
    read = [NFT, "web1", "web2", "web3"]
    planned = await rb.planned(
        f"dsr-{'-'.join(servers)}", before, lambda: nft_cluster(rb.lab, servers), read
    )
    steps = planned.steps(NFT)
    step_id, failing, (program, rule) = nft_fault(rb.lab, steps, case)
    assert steps[failing].id == step_id
    # A hung drain poll is stopped after 2 s (the others take milliseconds).
    timeout = {"command_timeout": 2} if case == "drain" else {}
    async with cleared(rb.lab, NFT):
        await inject(rb.lab, NFT, program, rule)
        result = await apply(rb.lab, planned, [NFT], **timeout)
    return steps, failing, result, rule


FUNCTIONS = {
    "check": "nft.dsr_table", "load": "nft.dsr_table", "drain": "nft.dsr_table",
    "vip": "addr.present", "enable": "service.enabled", "ledger": "file.managed",
    "script": "file.managed",
}  # fmt: skip


@pytest.mark.parametrize("case", ["check", "load", "vip", "enable", "ledger"])
async def test_nft_table_from_nothing_is_gone_again(rb: RbLab, case: str) -> None:
    """No table before: the check fails, or the table is loaded and a later step fails."""
    before = await host_state(rb.lab, NFT)
    assert "shoal_dsr" not in before["nft"], "the fresh cases run before the update cases"
    steps, failing, result, rule = await nft_apply_failing(rb, ("web1", "web2"), case, before)
    assert steps[0].id == NFT_APPLY
    assert_same(before, await host_state(rb.lab, NFT), result)
    assert_failed_at(result, NFT, steps, failing, FUNCTIONS[case], rule)


async def nft_present(rb: RbLab) -> dict[str, str]:
    """The table serves web1 and web2 (converged by shoal)."""
    state = await host_state(rb.lab, NFT)
    if rb.ready.get("dsr-present") != state:
        old = write_desired(rb.lab, rb.workdir, "dsr", nft_cluster(rb.lab, ("web1", "web2")))
        await converge_hosts(rb.lab, old, [NFT], [NFT, "web1", "web2"])
        state = rb.ready["dsr-present"] = await host_state(rb.lab, NFT)
    return state


@pytest.mark.parametrize("case", ["check", "load", "drain", "script"])
async def test_nft_table_update_gives_back_the_old_table(rb: RbLab, case: str) -> None:
    """web1 and web2 before; web2 leaves (drained), web3 joins: the old table comes back."""
    before = await nft_present(rb)
    web2 = rb.lab.hosts["web2"].mac.lower()
    assert "shoal_dsr" in before["nft"] and web2 in before["nft"]
    steps, failing, result, rule = await nft_apply_failing(rb, ("web1", "web3"), case, before)
    assert [s.id for s in steps if s.function == "nft.dsr_table"] == [
        NFT_APPLY,
        f"{NFT}/nft-dsr/drain/svc_tcp_{vip(rb.lab, NFT_VIP).replace('.', '_')}_80/{web2}",
    ]
    assert_same(before, await host_state(rb.lab, NFT), result)
    assert_failed_at(result, NFT, steps, failing, FUNCTIONS[case], rule)


# --- pkg.installed, service.running (extras on web3) ----------------------------------------

BEFORE = f"{EXTRAS}/rb-before/write"
AFTER_WRITE = f"{EXTRAS}/rb-after/write"
EXTRAS_LEDGER = f"{EXTRAS}/shoal-ledger/write"
PKG = f"{EXTRAS}/rb-pkg/install"
START, RESTART = f"{EXTRAS}/rb-svc/start", f"{EXTRAS}/rb-svc/restart"
PKG_ARGS = "install -y --no-install-recommends iputils-arping"


def extras_cluster(lab: Lab, middle: str) -> str:
    """A cluster (not applied here) with three extras on web3: a file, `middle`, a file."""
    services = service_toml("http", vip(lab, NFT_VIP), 80, {"web1": 1})
    before = f'{{ path = "{STATES_DIR}/before.conf", content = "before\\n" }}'
    first = state_toml("rb-before", "file.managed", EXTRAS, before)
    after = f'{{ path = "{STATES_DIR}/after.conf", content = "after\\n" }}'
    requires = "rb-pkg" if "pkg" in middle else "rb-svc"
    last = state_toml("rb-after", "file.managed", EXTRAS, after, require=requires)
    return cluster_toml("extras", [NFT], "nftables", services) + first + middle + last


PKG_ARGS_TOML = '{ packages = { arping = "iputils-arping" } }'
PKG_STATE = state_toml("rb-pkg", "pkg.installed", EXTRAS, PKG_ARGS_TOML, require="rb-before")
# The unit's start and, because the file it watches changed, its restart (mod_watch).
SVC_STATE = state_toml("rb-svc", "service.running", EXTRAS, '{ name = "nftables" }',
                       watch="rb-before")  # fmt: skip


async def extras_apply_failing(
    rb: RbLab,
    scenario: str,
    middle: str,
    step_id: str,
    rules: dict[str, list[Rule]],
    adjust: Callable[[HostFacts], HostFacts] | None = None,
) -> tuple[list[Step], int, RunResult]:
    state = await host_state(rb.lab, EXTRAS)
    planned = await rb.planned(
        scenario, state, lambda: extras_cluster(rb.lab, middle), [EXTRAS], adjust
    )
    steps = planned.steps(EXTRAS)
    failing = index_of(steps, step_id)
    if step_id in (BEFORE, AFTER_WRITE, EXTRAS_LEDGER):
        program, rule = write_fault(steps[failing])
        rules = {**rules, program: [rule, *rules.get(program, [])]}
    for program, program_rules in rules.items():
        await inject(rb.lab, EXTRAS, program, *program_rules)
    result = await apply(rb.lab, planned, [EXTRAS])
    return steps, failing, result


@pytest.mark.parametrize("step_id", [BEFORE, PKG, AFTER_WRITE, EXTRAS_LEDGER])
async def test_pkg_installed_failure_stops_the_phase(rb: RbLab, step_id: str) -> None:
    """arping looks missing, so the plan installs iputils-arping between two files. apt-get
    fails (nothing to undo: the file before it goes, the one after is never written), or it
    succeeds and a later step fails."""
    before = await host_state(rb.lab, EXTRAS)
    async with cleared(rb.lab, EXTRAS):
        await hide(rb.lab, EXTRAS, "/usr/bin/arping")
        # Installing would write the machine's /usr and needs the network: a stand-in succeeds.
        apt = [Rule(PKG_ARGS, FAIL if step_id == PKG else OK)]
        steps, failing, result = await extras_apply_failing(
            rb, "extras-pkg", PKG_STATE, step_id, {"/usr/bin/apt-get": apt}
        )
    assert [s.id for s in steps] == [BEFORE, PKG, AFTER_WRITE, EXTRAS_LEDGER]
    assert steps[1].commands == (("env", "DEBIAN_FRONTEND=noninteractive", "apt-get",
                                  *PKG_ARGS.split()),)  # fmt: skip
    assert_same(before, await host_state(rb.lab, EXTRAS), result)
    function = "pkg.installed" if step_id == PKG else "file.managed"
    assert_failed_at(result, EXTRAS, steps, failing, function)


@pytest.mark.parametrize("step_id", [BEFORE, START, RESTART, AFTER_WRITE, EXTRAS_LEDGER])
async def test_service_running_failure_stops_the_phase(rb: RbLab, step_id: str) -> None:
    """nftables inactive (as systemd would say): the plan writes the file it watches, starts
    it, restarts it for the change, writes another file. A failure after the start must stop
    the unit again; a failing start or restart stops the phase."""
    before = await host_state(rb.lab, EXTRAS)
    assert f"{UNITS_DIR} d" in before["shoal"] and f"{UNITS_DIR}/nftables" not in before["shoal"]
    systemctl = unit_rules("nftables")
    if step_id in (START, RESTART):
        verb = step_id.rsplit("/", 1)[-1]
        systemctl.insert(0, Rule(f"{verb} nftables", FAIL))
    async with cleared(rb.lab, EXTRAS):
        steps, failing, result = await extras_apply_failing(
            rb, "extras-svc", SVC_STATE, step_id, {"/usr/bin/systemctl": systemctl},
            with_inactive_unit("nftables"),
        )  # fmt: skip
    assert [s.id for s in steps] == [BEFORE, START, RESTART, AFTER_WRITE, EXTRAS_LEDGER]
    assert steps[1].undo == (("systemctl", "stop", "nftables"),)
    assert_same(before, await host_state(rb.lab, EXTRAS), result)
    function = "service.running" if step_id in (START, RESTART) else "file.managed"
    assert_failed_at(result, EXTRAS, steps, failing, function)


@pytest.mark.parametrize("step_id", [RESTART, AFTER_WRITE, EXTRAS_LEDGER])
async def test_running_unit_restarted_for_a_change_gets_the_old_file_back(
    rb: RbLab, step_id: str
) -> None:
    """nftables runs (as systemd would say) with the file it watches as it was; the plan
    rewrites the file and restarts it. After a failure of the restart (the unit is down) or of a
    later step, the rollback restores the file and only then restarts the unit again
    (Step.after_rollback), so it runs the old file: the stand-in restart records the file it
    started with."""
    lab = rb.lab
    unit = shlex.quote(f"{UNITS_DIR}/nftables")
    watched = shlex.quote(f"{STATES_DIR}/before.conf")
    await lab.exec(EXTRAS, ["sh", "-c", f"mkdir -p {STATES_DIR} && echo old >{watched} && "
                                        f"cp {watched} {unit}"])  # fmt: skip
    restart = f"cat {watched} >{unit}; chmod 0644 {unit}; exit 0"
    try:
        before = await host_state(lab, EXTRAS)
        assert f"== {UNITS_DIR}/nftables\nold\n" in before["shoal"], before["shoal"]
        if step_id == RESTART:
            # The first restart (with the new file) fails and takes the unit down.
            once = "/tmp/shoal-rb-failed-once"
            restart = (f"if [ -e {once} ]; then {restart}; fi; "
                       f"touch {once}; rm -f {unit}; "
                       'echo "shoal test: injected failure of $0 $*" >&2; exit 3')  # fmt: skip
        systemctl = [Rule("restart nftables", restart)]
        async with cleared(lab, EXTRAS):
            steps, failing, result = await extras_apply_failing(
                rb, "extras-svcup", SVC_STATE, step_id, {"/usr/bin/systemctl": systemctl},
                with_unit("nftables", active=True),
            )  # fmt: skip
        assert [s.id for s in steps] == [BEFORE, RESTART, AFTER_WRITE, EXTRAS_LEDGER]
        assert steps[1].after_rollback == (("systemctl", "restart", "nftables"),)
        assert_same(before, await host_state(lab, EXTRAS), result)
        function = "service.running" if step_id == RESTART else "file.managed"
        assert_failed_at(result, EXTRAS, steps, failing, function)
        (rollback,) = result.rollbacks
        assert "after the restores, ran again systemctl restart nftables: ok" in rollback.restored
    finally:
        await lab.exec(EXTRAS, ["sh", "-c", f"rm -rf {STATES_DIR} {UNITS_DIR}/nftables "
                                            "/tmp/shoal-rb-failed-once"])  # fmt: skip


# --- kmod.present ---------------------------------------------------------------------------


async def test_kmod_failure_stops_the_rollout_before_any_change(rb: RbLab) -> None:
    """An ipvsadm cluster: its directors load ip_vs in the packages phase, the first phase.
    modprobe fails on lvs1 and succeeds on lvs2 (a stand-in: this kernel has no ip_vs): lvs2's
    phase is rolled back, and no step of any later phase runs on any host."""
    lab = rb.lab
    services = service_toml("http", vip(lab, IPVS_VIP), 80, {"web1": 1, "web2": 1})
    hosts = ["lvs1", "lvs2", "web1", "web2"]
    before = {h: await host_state(lab, h) for h in hosts}
    desired = write_desired(
        lab, rb.workdir, "lb", cluster_toml("lb", ["lvs1", "lvs2"], "ipvsadm", services)
    )
    planned = await plan_now(lab, desired, hosts)
    loads = {h: f"{h}/kmod-ip_vs/load" for h in ("lvs1", "lvs2")}
    for h, load in loads.items():
        # The packages phase holds only the module load on each director.
        assert [s.id for s in planned.steps(h) if s.phase == planned.steps(h)[0].phase] == [load]
    async with cleared(lab, "lvs1", "lvs2"):
        await inject(lab, "lvs1", "/usr/sbin/modprobe", Rule("ip_vs", FAIL))
        await inject(lab, "lvs2", "/usr/sbin/modprobe", Rule("ip_vs", OK))
        result = await apply(lab, planned, [h for h in hosts if planned.steps(h)])
    for h in hosts:
        assert_same(before[h], await host_state(lab, h), result)
    assert not result.ok
    got = {s.id: s for s in result.steps()}
    failed = got[loads["lvs1"]]
    assert failed.result is False and failed.function == "kmod.present", summary(result)
    assert "shoal test: injected failure" in failed.output
    assert got[loads["lvs2"]].result is True and got[loads["lvs2"]].rolled_back
    later = [s for s in result.steps() if s.id not in loads.values()]
    assert later and all(s.result is None for s in later), summary(result)
    assert result.errors[0].step_id == loads["lvs1"]
    assert {(rb_.host, rb_.by) for rb_ in result.rollbacks} == {
        ("lvs1", "phase"),
        ("lvs2", "controller"),
    }
    assert all(rb_.proven for rb_ in result.rollbacks), summary(result)
