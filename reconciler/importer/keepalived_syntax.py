"""keepalived.conf read for an import: `states.keepalived_syntax`'s reader, errors as
ImportSourceInvalid (the keepalived state compares installed files with the same reader)."""

from __future__ import annotations

from pathlib import Path

from reconciler.importer.sites import ImportSourceInvalid
from states.keepalived_syntax import KeepalivedSyntaxInvalid, Statement
from states.keepalived_syntax import parse_keepalived_conf as _parse

__all__ = ["Statement", "parse_keepalived_conf"]


def parse_keepalived_conf(path: Path) -> list[Statement]:
    """The statements of `path` with its includes read in; ImportSourceInvalid on bad syntax."""
    try:
        return _parse(path)
    except KeepalivedSyntaxInvalid as exc:
        raise ImportSourceInvalid(exc.issues) from None
