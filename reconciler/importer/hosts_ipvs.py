"""What an import says about an IPVS director's drain sysctls (ipvsadm and keepalived backends).

shoal sets `net.ipv4.vs.expire_nodest_conn` and `expire_quiescent_template` to 1 on every IPVS
director (reconciler.plan.compile_director: without them a drained real server keeps the
clients that reuse a source port, and after its removal their SYNs are dropped) and keeps them
in its boot form. A cluster built by hand almost never has them: the import names them, and the
first plan contains exactly that correction (the two `sysctl -w` and shoal's boot form), which
an operator expects to be told about rather than find in a plan that should change nothing.
A key the facts do not show (ip_vs not loaded, an old kernel) is not named: the plan loads the
module and sets them, or says the kernel has no such key.
"""

from __future__ import annotations

from reconciler.facts.hostfacts import HostFacts
from reconciler.importer.sites import Finding
from reconciler.plan.compile_director import IPVS_SYSCTLS

PATTERN = "IPVS drain sysctls off"


def drain_sysctl_finding(host: str, hf: HostFacts) -> Finding | None:
    """A finding when the director's live drain sysctls are known and not 1."""
    values = hf.sysctls.value if hf.sysctls.known and hf.sysctls.value is not None else {}
    off = [f"{k} = {values[k]}" for k in IPVS_SYSCTLS if k in values and values[k] != "1"]
    if not off:
        return None
    return Finding(host, PATTERN, (
        f"{', '.join(off)}: a client reusing a source port keeps reaching a drained real "
        "server, and after its removal its SYNs are dropped; the first plan sets them to 1 and "
        "writes them to shoal's boot form (/etc/sysctl.d/90-shoal-lvs-dr.conf, "
        "/usr/local/sbin/shoal-restore); shoal.toml's [ipvs] turns either off"
    ))  # fmt: skip
