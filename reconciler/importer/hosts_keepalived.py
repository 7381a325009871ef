"""`--from-hosts` on keepalived directors: their keepalived.conf as the facts gathered it.

The facts script reports /etc/keepalived/keepalived.conf of every host with its content (up to
`FILE_CONTENT_MAX`), so a keepalived director's VRRP settings and checks need no
`--keepalived-conf`: its gathered file is read with the same reader, its places named
`HOST:/etc/keepalived/keepalived.conf:LINE`. A file given with `--keepalived-conf NAME=FILE`
wins for that director. A gathered file with `include` lines is refused (the included files
are not gathered): give that director's file. A file whose content was not gathered is left to
the merge, which then asks for `--keepalived-conf`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from reconciler.facts.hostfacts import HostFacts
from reconciler.facts.script import KEEPALIVED_CONF
from reconciler.importer.keepalived_read import read_director_conf
from reconciler.importer.keepalived_site import DirectorFile
from reconciler.importer.sites import ImportedSite, ImportSourceInvalid, issue_at
from states.keepalived_syntax import KeepalivedSyntaxInvalid, parse_keepalived_text


def keepalived_directors(site: ImportedSite) -> list[str]:
    """The directors of the keepalived clusters the hosts show."""
    return sorted({d.name for c in site.clusters if c.backend == "keepalived"
                   for d in c.directors if d.name})  # fmt: skip


def gathered_files(facts: Mapping[str, HostFacts], hosts: Iterable[str]) -> list[DirectorFile]:
    """Each of `hosts`' keepalived.conf from its facts (hosts without a gathered text: none)."""
    out = []
    for host in hosts:
        hf = facts.get(host)
        files = hf.files.value if hf is not None and hf.files.known else None
        info = (files or {}).get(KEEPALIVED_CONF)
        if info is None or not info.exists or info.content is None:
            continue
        name = f"{host}:{KEEPALIVED_CONF}"
        try:
            parsed = parse_keepalived_text(info.content, name)
        except KeepalivedSyntaxInvalid as exc:
            raise ImportSourceInvalid(exc.issues) from None
        if parsed.includes:
            pattern, origin = parsed.includes[0]
            why = (f"include {pattern}: included files are not read from the hosts; give "
                   f"this director's file with --keepalived-conf {host}=FILE")
            raise ImportSourceInvalid([issue_at(origin, why)])
        out.append(DirectorFile(read_director_conf(parsed.statements, name), host))
    return out
