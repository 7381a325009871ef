"""`iptables-save -t nat` (nft and legacy backends) to `IptablesNat`.

iptables normalizes rules when it stores them (`-d VIP` gains `/32`, `-p tcp` gains `-m tcp`),
so the saved spec is the canonical form to compare with; `iptables -C` accepts it back.
"""

from __future__ import annotations

import shlex

from reconciler.errors import FactParseError
from reconciler.facts.hostfacts import FirewallBackend, IptablesNat, IptablesRule
from reconciler.facts.parsers.save_format import read_saved_table

# option -> field; each takes one value.
_FIELDS = {
    "-d": "destination",
    "--destination": "destination",
    "-s": "source",
    "--source": "source",
    "-p": "protocol",
    "--protocol": "protocol",
    "-i": "in_interface",
    "--in-interface": "in_interface",
    "-o": "out_interface",
    "--out-interface": "out_interface",
    "-j": "target",
    "--jump": "target",
    "--to-ports": "to_ports",
    "--comment": "comment",
    "--dport": "dport",
    "--destination-port": "dport",
}


def parse_iptables_rule(line: str) -> IptablesRule:
    """One `-A CHAIN ...` line to an `IptablesRule` (negated matches set no field)."""
    try:
        tokens = shlex.split(line)
    except ValueError as exc:
        raise FactParseError("iptables", f"cannot split {line!r}: {exc}") from None
    if len(tokens) < 2 or tokens[0] != "-A":
        raise FactParseError("iptables", f"not a rule: {line!r}")
    chain, spec = tokens[1], tokens[2:]
    fields: dict[str, str] = {}
    i = 0
    while i < len(spec):
        tok = spec[i]
        if tok == "!":
            i += 3  # "! -d X": skip the option and its value
            continue
        name = _FIELDS.get(tok)
        if name is not None and i + 1 < len(spec):
            fields.setdefault(name, spec[i + 1])
            i += 2
            continue
        i += 1
    dport: int | None = None
    if "dport" in fields:
        raw = fields.pop("dport")
        dport = int(raw) if raw.isdigit() else None
    return IptablesRule(chain=chain, spec=tuple(spec), dport=dport, **fields)


def parse_iptables_save(
    text: str, backend: FirewallBackend | None = None, *, stderr: str = ""
) -> IptablesNat:
    """Parse the nat table of `iptables-save -t nat`; empty output means no nat table."""
    saved = read_saved_table(text, parser="iptables", table="nat", table_first=True)
    return IptablesNat(
        backend=backend,
        rules=tuple(parse_iptables_rule(line) for _, line in saved.rule_lines),
        chains=tuple(saved.chains),
        policies=saved.policies,
        legacy_tables_present="iptables-legacy tables present" in stderr,
    )
