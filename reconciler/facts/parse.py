"""The facts script's output to `HostFacts` (pure): split the sections, parse each one.

Each section goes to its parser in `reconciler.facts.parsers`. A section that is missing, whose
command failed, or whose output the parser does not understand becomes `Fact.unknown(reason)`,
never an empty value (see `reconciler.facts.script` for what the script prints).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import ValidationError

from reconciler.errors import FactParseError
from reconciler.facts.hostfacts import (
    NOT_GATHERED,
    ArptablesRules,
    Fact,
    FileInfo,
    HostFacts,
    IptablesNat,
    IpvsTable,
    KeepalivedInfo,
    Ledger,
    Login,
)
from reconciler.facts.parsers.arptables import parse_arptables_list
from reconciler.facts.parsers.backend import parse_xtables_version
from reconciler.facts.parsers.ip_addr import parse_ip_addr
from reconciler.facts.parsers.iptables import parse_iptables_save
from reconciler.facts.parsers.ipvsadm import ipvs_table
from reconciler.facts.parsers.keepalived import parse_keepalived_version
from reconciler.facts.parsers.nft import parse_nft_ruleset, parse_nft_table_comments
from reconciler.facts.parsers.stat import parse_file_lines
from reconciler.facts.parsers.sysctl import parse_sysctls
from reconciler.facts.parsers.systemctl import parse_systemctl_show
from reconciler.facts.script import DENIED, KEEPALIVED_CONF, LEDGER_PATH, MARKER, SCRIPT_VERSION


@dataclass(frozen=True, slots=True)
class Section:
    name: str
    stdout: str
    exit_status: int
    stderr: str

    def reason(self, what: str) -> str:
        detail = self.stderr.strip().splitlines()
        tail = f": {detail[-1]}" if detail else ""
        if self.exit_status == 127:
            return f"{what}: not installed{tail}"
        if self.exit_status == DENIED and detail:
            return detail[-1]  # the script's own "PATH: Permission denied"
        return f"{what} exited {self.exit_status}{tail}"


_SECTION_RE = re.compile(
    rf"^{re.escape(MARKER)} begin (?P<name>[\w-]+)\n(?P<out>.*?)\n"
    rf"{re.escape(MARKER)} end (?P=name) (?P<rc>\d+)\n(?P<err>.*?)"
    rf"(?=^{re.escape(MARKER)} (?:begin|done))",
    re.DOTALL | re.MULTILINE,
)


def split_sections(stdout: str) -> dict[str, Section]:
    """The sections of a facts script's output, by name."""
    if not stdout.startswith(f"{MARKER} facts v{SCRIPT_VERSION}\n"):
        raise FactParseError("facts", "output does not start with the facts header")
    sections: dict[str, Section] = {}
    for m in _SECTION_RE.finditer(stdout):
        sections[m.group("name")] = Section(
            name=m.group("name"),
            stdout=m.group("out"),
            exit_status=int(m.group("rc")),
            stderr=m.group("err"),
        )
    return sections


T = TypeVar("T")


def _fact(
    sections: dict[str, Section],
    name: str,
    what: str,
    parse: Callable[[Section], T],
) -> Fact[T]:
    section = sections.get(name)
    if section is None:
        return Fact[T].unknown(f"{what}: no output (script cut short?)")
    if section.exit_status != 0:
        return Fact[T].unknown(section.reason(what))
    try:
        return Fact[T].of(parse(section))
    except FactParseError as exc:
        return Fact[T].unknown(str(exc))
    except (ValueError, KeyError, ValidationError) as exc:
        return Fact[T].unknown(f"cannot parse {what}: {exc}")


def _kv(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value
    return out


def _arptables(sections: dict[str, Section]) -> Fact[ArptablesRules]:
    version = _fact(sections, "arptables-version", "arptables -V", lambda s: s.stdout)
    if not version.known or version.value is None:
        return Fact[ArptablesRules].unknown(version.unknown_reason or "arptables -V")
    backend = parse_xtables_version(version.value)
    return _fact(
        sections,
        "arptables-list",
        "arptables -L -n",
        lambda s: parse_arptables_list(s.stdout, backend, stderr=s.stderr),
    )


def _nat(sections: dict[str, Section], tool: str) -> Fact[IptablesNat]:
    """`iptables-save -t nat` or `ip6tables-save -t nat`, read with the backend `-V` names."""
    version = _fact(sections, f"{tool}-version", f"{tool} -V", lambda s: s.stdout)
    if not version.known or version.value is None:
        return Fact[IptablesNat].unknown(version.unknown_reason or f"{tool} -V")
    backend = parse_xtables_version(version.value)
    return _fact(
        sections,
        f"{tool}-save",
        f"{tool}-save -t nat",
        lambda s: parse_iptables_save(s.stdout, backend, stderr=s.stderr),
    )


def _iptables(sections: dict[str, Section]) -> Fact[IptablesNat]:
    return _nat(sections, "iptables")


def _ip6tables(sections: dict[str, Section]) -> Fact[IptablesNat]:
    if "ip6tables-save" not in sections and "iptables-save" in sections:
        # Output of a facts script from before IPv6 (a stored sample): never asked.
        return Fact[IptablesNat].unknown(NOT_GATHERED)
    return _nat(sections, "ip6tables")


def _nft(section: Section) -> Any:
    text, _, comments = section.stdout.partition(f"\n{MARKER} comments\n")
    return parse_nft_ruleset(text, parse_nft_table_comments(comments))


def _ipvs(sections: dict[str, Section]) -> Fact[IpvsTable]:
    state = _fact(sections, "ipvs", "ipvs module", lambda s: _kv(s.stdout.replace(" ", "\n")))
    if not state.known or state.value is None:
        return Fact[IpvsTable].unknown(state.unknown_reason or "ipvs")
    module = state.value.get("module") == "1"
    if state.value.get("loaded") != "1":
        detail = "ip_vs is not loaded" if module else "this kernel has no ip_vs module"
        return Fact.of(IpvsTable(available=module, loaded=False, detail=detail))
    listing = sections.get("ipvs-list")
    list_text = listing.stdout if listing is not None and listing.exit_status == 0 else None
    return _fact(sections, "ipvs-save", "ipvsadm -Sn", lambda s: ipvs_table(s.stdout, list_text))


def _keepalived(
    sections: dict[str, Section], files: Fact[dict[str, FileInfo]]
) -> Fact[KeepalivedInfo]:
    def parse(section: Section) -> KeepalivedInfo:
        kv = _kv(section.stdout)
        if kv.get("installed") != "1":
            return KeepalivedInfo(installed=False)
        if files.value is None:
            raise FactParseError("keepalived", f"config digest unknown: {files.unknown_reason}")
        conf = files.value.get(KEEPALIVED_CONF)
        return KeepalivedInfo(
            installed=True,
            version=parse_keepalived_version(kv.get("version", "")),
            config_sha256=conf.sha256 if conf is not None else None,
            running=kv.get("running") == "1",
        )

    return _fact(sections, "keepalived", "keepalived", parse)


def _tools(section: Section) -> dict[str, bool]:
    return {k: v == "1" for k, v in _kv(section.stdout).items()}


def _ledger(section: Section) -> Ledger:
    head, _, body = section.stdout.partition("\n")
    if head == "absent":
        return Ledger()
    if head != "present":
        raise FactParseError("ledger", f"unexpected {head!r}")
    return Ledger.model_validate_json(body)


def _login(section: Section) -> Login:
    kv = _kv(section.stdout)
    uid = kv.get("uid", "")
    if not uid.isdigit() or "user" not in kv:
        raise FactParseError("login", f"expected uid= and user=, got {section.stdout!r}")
    return Login(uid=int(uid), user=kv["user"])


def _one_line(section: Section) -> str:
    value = section.stdout.strip()
    if not value or "\n" in value:
        raise FactParseError(section.name, f"expected one line, got {section.stdout!r}")
    return value


def parse_facts_output(host: str, stdout: str) -> HostFacts:
    """Every fact of `host` from the facts script's stdout (pure)."""
    try:
        sections = split_sections(stdout)
    except FactParseError as exc:
        return HostFacts.all_unknown(host, str(exc))
    files = _fact(sections, "files", "file digests", lambda s: parse_file_lines(s.stdout))
    services = _fact(
        sections, "services", "systemctl show", lambda s: parse_systemctl_show(s.stdout)
    )
    return HostFacts(
        host=host,
        hostname=_fact(sections, "hostname", "hostname", _one_line),
        kernel_release=_fact(sections, "kernel", "kernel release", _one_line),
        interfaces=_fact(sections, "addr", "ip -j addr", lambda s: parse_ip_addr(s.stdout)),
        sysctls=_fact(sections, "sysctl", "sysctls", lambda s: parse_sysctls(s.stdout)),
        arptables=_arptables(sections),
        iptables_nat=_iptables(sections),
        ip6tables_nat=_ip6tables(sections),
        nft=_fact(sections, "nft", "nft -j list ruleset", _nft),
        ipvs=_ipvs(sections),
        keepalived=_keepalived(sections, files),
        files=files,
        tools=_fact(sections, "tools", "command -v", _tools),
        services=_split(services, 0),
        services_enabled=_split(services, 1),
        ledger=_fact(sections, "ledger", LEDGER_PATH, _ledger),
        login=_fact(sections, "login", "id -u", _login),
    )


def _split(
    pair: Fact[tuple[dict[str, bool], dict[str, bool]]], index: int
) -> Fact[dict[str, bool]]:
    if pair.value is None:
        return Fact[dict[str, bool]].unknown(pair.unknown_reason or "unknown")
    return Fact.of(pair.value[index])
