"""The IPVS sysctls every IPVS director gets for graceful drains (reconciler.plan.compile_director).

`net.ipv4.vs.expire_nodest_conn = 1` and `expire_quiescent_template = 1` on ipvsadm and
keepalived directors: ip_vs loaded in the packages phase when it is installed but not loaded,
the keys planned from the module's defaults then, set in the director's own phase before its
first IPVS change, persisted with a "-" in sysctl.d and after a `modprobe` in the restore
script; skipped, saying why, on a kernel without IPVS. A rollback that leaves ip_vs loaded
with an empty table still proves (the executor's stable facts).
"""

from __future__ import annotations

import pytest

from reconciler.apply.stable_facts import stable_digest
from reconciler.desired.models import IpvsSettings
from reconciler.facts.hostfacts import Fact, HostFacts, IpvsTable
from reconciler.facts.script import IPVS_MODULE_DEFAULTS
from reconciler.plan.compile import compile_directors, managed_paths
from reconciler.plan.compile_director import IPVS_SYSCTLS, KMOD_IPVS
from reconciler.plan.persistence import RESTORE_SCRIPT
from reconciler.plan.planner import plan_desired
from reconciler.plan.steps import Phase, Plan, Step
from states.sysctl import SYSCTL_CONF
from tests.statecases import HOSTS, cluster_desired, fresh_facts, gathered, set_sysctls

WANT = dict.fromkeys(IPVS_SYSCTLS, "1")  # the default: both on
EXPIRE = "net.ipv4.vs.expire_nodest_conn"
TEMPLATE = "net.ipv4.vs.expire_quiescent_template"
BACKENDS = ("ipvsadm", "keepalived")


def _facts(
    backend: str,
    ipvs: IpvsTable,
    sysctls: dict[str, str] | None = None,
    settings: IpvsSettings | None = None,
) -> Plan:
    d = cluster_desired("sysctl", director=backend)
    if settings is not None:
        d = d.model_copy(update={"settings": d.settings.model_copy(update={"ipvs": settings})})
    paths = managed_paths(d)
    facts: dict[str, HostFacts] = {}
    for h in HOSTS:
        f = fresh_facts(h)
        if h in ("lvs1", "lvs2"):
            f = f.model_copy(update={"ipvs": Fact.of(ipvs)})
            if sysctls:
                f = set_sysctls(f, sysctls)
        facts[h] = gathered(f, paths.get(h, []))
    return plan_desired(d, facts)


def _steps(plan: Plan, host: str) -> list[Step]:
    return list(plan.hosts[host].steps)


def _file(plan: Plan, host: str, path: str) -> str:
    writes = [w for s in plan.hosts[host].steps for w in s.writes if w.path == path]
    assert len(writes) == 1, [s.id for s in plan.hosts[host].steps]
    return writes[0].content


@pytest.mark.parametrize("backend", BACKENDS)
def test_fresh_director_loads_ip_vs_then_sets_the_drain_sysctls(backend: str) -> None:
    plan = _facts(backend, IpvsTable(available=True, loaded=False))
    for host, phase in (("lvs1", Phase.DIRECTOR_PRIMARY), ("lvs2", Phase.DIRECTOR_BACKUP)):
        steps = _steps(plan, host)
        ids = [s.id for s in steps]
        load = steps[ids.index(f"{host}/{KMOD_IPVS}/load")]
        assert load.phase == Phase.PACKAGES and load.commands == (("modprobe", "ip_vs"),)
        assert load.undo == ()
        sets = [s for s in steps if s.function == "sysctl.present" and ".vs." in s.id]
        assert [s.commands for s in sets] == [
            (("sysctl", "-w", f"{key}={value}"),) for key, value in WANT.items()
        ]
        for s in sets:
            key = s.commands[0][2].split("=")[0]
            # Planned from the module's default, and undone to it.
            assert s.undo == (("sysctl", "-w", f"{key}={IPVS_MODULE_DEFAULTS[key]}"),)
            assert s.change.before is not None and "not loaded yet" in s.change.before
            assert s.phase == phase
        # Before the first IPVS or keepalived change of the host.
        first_ipvs = min(
            i for i, s in enumerate(steps)
            if s.subsystem in ("ipvs", "keepalived") and s.phase == phase
        )  # fmt: skip
        assert max(ids.index(s.id) for s in sets) < first_ipvs, ids


@pytest.mark.parametrize("backend", BACKENDS)
def test_loaded_module_plans_only_what_differs(backend: str) -> None:
    loaded = IpvsTable(available=True, loaded=True)
    plan = _facts(backend, loaded, {EXPIRE: "0", TEMPLATE: "1"})
    sets = [s for s in _steps(plan, "lvs1") if ".vs." in s.id]
    assert [s.commands for s in sets] == [(("sysctl", "-w", f"{EXPIRE}=1"),)]
    assert sets[0].undo == (("sysctl", "-w", f"{EXPIRE}=0"),)
    assert not any(s.id.endswith(f"{KMOD_IPVS}/load") for s in _steps(plan, "lvs1"))
    in_sync = _facts(backend, loaded, {EXPIRE: "1", TEMPLATE: "1"})
    assert not any(".vs." in s.id for s in _steps(in_sync, "lvs1"))


def test_keepalived_without_ipvs_skips_the_sysctls_and_plans_no_modprobe() -> None:
    plan = _facts("keepalived", IpvsTable(available=False, detail="no ip_vs module"))
    steps = _steps(plan, "lvs1")
    assert not any("modprobe" in c for s in steps for c in s.commands), [s.id for s in steps]
    skipped = {s.state_id: s.reason for s in plan.hosts["lvs1"].skipped}
    for key in WANT:
        assert "no ip_vs module" in skipped[f"ipvs-sysctl:{key}"], skipped


def test_ipvsadm_without_ipvs_still_plans_the_failing_modprobe() -> None:
    plan = _facts("ipvsadm", IpvsTable(available=False, detail="no ip_vs module"))
    load = [s for s in _steps(plan, "lvs1") if s.id.endswith(f"{KMOD_IPVS}/load")]
    assert len(load) == 1 and "will fail" in load[0].description


@pytest.mark.parametrize("backend", BACKENDS)
def test_persisted_for_boot_after_the_module_loads(backend: str) -> None:
    plan = _facts(backend, IpvsTable(available=True, loaded=False))
    conf = _file(plan, "lvs1", SYSCTL_CONF)
    for key, value in WANT.items():
        assert f"-{key} = {value}\n" in conf, conf
    script = _file(plan, "lvs1", RESTORE_SCRIPT)
    for key, value in WANT.items():
        assert f"modprobe ip_vs && sysctl -q -w {key}={value}\n" in script, script
    # Real servers' sysctl.d files stay what they were: no IPVS keys, the old header.
    web = _file(plan, "web1", SYSCTL_CONF)
    assert ".vs." not in web and web.startswith("# Managed by shoal: ARP suppression")


def test_an_empty_table_proves_the_same_loaded_or_not() -> None:
    unloaded = fresh_facts("lvs1").model_copy(
        update={"ipvs": Fact.of(IpvsTable(available=True, loaded=False, detail="not loaded"))}
    )
    loaded = set_sysctls(
        unloaded.model_copy(update={"ipvs": Fact.of(IpvsTable(available=True, loaded=True))}),
        IPVS_MODULE_DEFAULTS,
    )
    assert stable_digest(loaded) == stable_digest(unloaded)
    # A key left at a value other than its default is a difference the proof must show.
    changed = set_sysctls(loaded, {EXPIRE: "1"})
    assert stable_digest(changed) != stable_digest(unloaded)


@pytest.mark.parametrize("backend", BACKENDS)
def test_shoal_toml_can_turn_them_off(backend: str) -> None:
    off = IpvsSettings(expire_nodest_conn=False)
    # Not loaded yet: the module's default is what is wanted, nothing to set.
    fresh = _facts(backend, IpvsTable(available=True, loaded=False), settings=off)
    sets = [s.commands for s in _steps(fresh, "lvs1") if ".vs." in s.id]
    assert sets == [(("sysctl", "-w", f"{TEMPLATE}=1"),)]
    # Set to 1 earlier (by hand or by shoal): back to the kernel's default.
    loaded = _facts(backend, IpvsTable(available=True, loaded=True), {EXPIRE: "1", TEMPLATE: "1"},
                    settings=off)  # fmt: skip
    sets = [s.commands for s in _steps(loaded, "lvs1") if ".vs." in s.id]
    assert sets == [(("sysctl", "-w", f"{EXPIRE}=0"),)]
    assert f"-{EXPIRE} = 0\n" in _file(fresh, "lvs1", SYSCTL_CONF)


def test_a_director_of_an_ipvsadm_and_a_keepalived_cluster_gets_them_once() -> None:
    ka = cluster_desired("sysctl", director="keepalived")
    adm = cluster_desired("sysctl", director="ipvsadm").clusters["web"]
    other = adm.model_copy(update={"cluster": adm.cluster.model_copy(update={"name": "web2"})})
    both = ka.model_copy(update={"clusters": {"web": ka.clusters["web"], "web2": other}})
    facts = {h: fresh_facts(h) for h in HOSTS}
    lows = [lw for lw in compile_directors(both, facts) if lw.host == "lvs1"]
    ids = [lw.id for lw in lows]
    assert ids.count(KMOD_IPVS) == 1 and all(ids.count(f"ipvs-sysctl:{k}") == 1 for k in WANT)
    kmod = next(lw for lw in lows if lw.id == KMOD_IPVS)
    assert kmod.args["required"] is True  # the ipvsadm cluster needs IPVS
