"""Real test hosts on one machine: network namespaces, a bridge, OpenSSH sshd per host."""

from lab.lab import Lab, LabError, LabHost, prerequisites, reap_abandoned_labs
from lab.teardown import TeardownReport, destroy_lab
from lab.topology import HostSpec, Role, Topology

__all__ = [
    "HostSpec",
    "Lab",
    "LabError",
    "LabHost",
    "Role",
    "TeardownReport",
    "Topology",
    "destroy_lab",
    "prerequisites",
    "reap_abandoned_labs",
]
