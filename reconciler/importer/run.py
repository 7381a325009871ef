"""`shoal import`'s work: read the sources, combine them, write a repository that validates.

Nothing is written unless the result loads with the ordinary loader: the files are rendered into
a temporary directory beside the target, validated, and only then renamed into place. A
construct shoal cannot represent fails the import, unless the caller allows a partial import, in
which case each one is listed (and written as a comment in its cluster file).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from reconciler.desired.loader import load_inventory_file, load_repository
from reconciler.desired.models import Desired, Inventory
from reconciler.errors import ConfigIssue, DesiredStateInvalid
from reconciler.facts.hostfacts import HostFacts
from reconciler.importer.hosts_keepalived import gathered_files, keepalived_directors
from reconciler.importer.hosts_merge import merge_keepalived
from reconciler.importer.hosts_site import site_from_hosts
from reconciler.importer.keepalived_read import read_director_conf
from reconciler.importer.keepalived_site import DirectorFile, site_from_keepalived
from reconciler.importer.keepalived_syntax import parse_keepalived_conf
from reconciler.importer.lvs_cf import parse_lvs_cf, site_from_lvs_cf
from reconciler.importer.sites import Dropped, Finding, ImportedSite, ImportSourceInvalid
from reconciler.importer.write import render_site


@dataclass(frozen=True, slots=True)
class ImportRequest:
    target: Path
    known_hosts: Path
    lvs_cf: Path | None = None
    keepalived_confs: tuple[tuple[str | None, Path], ...] = ()  # (inventory name, file)
    inventory: Path | None = None
    arp_method: str = "sysctl"
    backend: str | None = None
    cluster_name: str = "lvs"
    allow_partial: bool = False
    # --from-hosts: the inventory whose hosts were read, and their facts (gathered by the
    # caller: this module does no I/O but the files it reads and writes).
    from_hosts: Path | None = None
    host_facts: Mapping[str, HostFacts] | None = None


@dataclass(slots=True)
class ImportResult:
    desired: Desired | None = None
    dropped: list[Dropped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    issues: list[ConfigIssue] = field(default_factory=list)
    written: bool = False
    findings: list[Finding] = field(default_factory=list)


class ImportRefused(Exception):
    """The import cannot be written; `issues` say why and where."""

    def __init__(self, issues: list[ConfigIssue], dropped: list[Dropped] | None = None) -> None:
        self.issues = issues
        self.dropped = dropped or []
        super().__init__("\n".join(str(i) for i in issues))


def read_sources(
    req: ImportRequest, known: Inventory | None = None, gathered: list[DirectorFile] | None = None
) -> ImportedSite:
    if req.host_facts is not None:
        if known is None:
            raise ImportRefused([ConfigIssue("shoal import", "--from-hosts needs its inventory")])
        if req.lvs_cf is not None:
            raise ImportRefused([ConfigIssue(str(req.lvs_cf), "--lvs-cf with --from-hosts is not "
                                             "supported: import one of them")])  # fmt: skip
        hosts = site_from_hosts(known, req.host_facts, req.cluster_name)
        # A keepalived director without a given file: its gathered one. An unnamed given file
        # could be any director's, so then nothing is taken from the hosts.
        given = {h for h, _ in req.keepalived_confs}
        missing = [] if None in given else [
            h for h in keepalived_directors(hosts) if h not in given]  # fmt: skip
        gathered = gathered_files(req.host_facts, missing)
        confs = None
        if req.keepalived_confs or gathered:
            confs = read_sources(replace(req, host_facts=None), gathered=gathered)
        # Without files a keepalived cluster is refused there (its VRRP settings are unknown).
        return merge_keepalived(confs or ImportedSite(), hosts)
    site = ImportedSite()
    if req.lvs_cf is not None:
        part = site_from_lvs_cf(parse_lvs_cf(req.lvs_cf, str(req.lvs_cf)), req.cluster_name)
        site.clusters += part.clusters
        site.dropped += part.dropped
        site.notes += part.notes
    if req.keepalived_confs or gathered:
        files = list(gathered or ())
        for host, path in req.keepalived_confs:
            statements = parse_keepalived_conf(path)
            files.append(DirectorFile(read_director_conf(statements, str(path)), host))
        part = site_from_keepalived(files)
        site.clusters += part.clusters
        site.dropped += part.dropped
        site.notes += part.notes
    return site


def run_import(req: ImportRequest) -> ImportResult:
    if req.lvs_cf is None and not req.keepalived_confs and req.host_facts is None:
        raise ImportRefused([ConfigIssue("shoal import", "give --lvs-cf, --keepalived-conf or "
                                         "--from-hosts")])  # fmt: skip
    if req.target.exists() and any(req.target.iterdir()):
        raise ImportRefused([ConfigIssue(str(req.target), "exists and is not empty; shoal "
                                         "import writes a new repository")])  # fmt: skip
    try:
        inventory = req.inventory or req.from_hosts
        known = load_inventory_file(inventory) if inventory is not None else None
        site = read_sources(req, known)
        files = render_site(site, known, req.arp_method, req.backend)
    except (ImportSourceInvalid, DesiredStateInvalid) as exc:
        raise ImportRefused(exc.issues) from None
    site.dropped.sort(key=lambda d: (d.origin.file, d.origin.line))
    result = ImportResult(dropped=site.dropped, notes=site.notes, findings=site.findings)
    if site.dropped and not req.allow_partial:
        lost = [ConfigIssue(d.origin.file, f"{d.construct}: {d.why}", line=d.origin.line)
                for d in site.dropped]  # fmt: skip
        summary = ConfigIssue("shoal import", "nothing written: these constructs would be "
                              "lost; --allow-partial writes the rest and lists them")  # fmt: skip
        raise ImportRefused([*lost, summary], site.dropped)
    try:
        known_hosts = req.known_hosts.read_text()
    except OSError as exc:
        raise ImportRefused([ConfigIssue(str(req.known_hosts), f"cannot read: {exc}")]) from None
    req.target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".shoal-import-", dir=req.target.parent))
    try:
        for rel, text in {**files, "known_hosts": known_hosts}.items():
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            (staging / rel).write_text(text)
        try:
            result.desired = load_repository(staging)
        except DesiredStateInvalid as exc:
            # Positions point into the staged files: name them as they would be in the target.
            raise ImportRefused([
                ConfigIssue(i.file, i.message, i.key_path, i.line, i.column) for i in exc.issues
            ]) from None  # fmt: skip
        if req.target.exists():
            req.target.rmdir()
        staging.rename(req.target)
        result.written = True
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return result
