"""The shell commands that load, replace, delete and restore one whole nftables table.

A step that replaces or deletes a table first saves its text (`nft list table`, lossless) under
SAVE_DIR, so its undo can put back exactly what was there, in one transaction. Values reach the
scripts as positional parameters ("$1"...), never spliced into the script text.

The undo also takes the saved text away again, and SAVE_DIR with it when the step created it
(a `<save>.madedir` mark says so): a rollback leaves the host as it was, not with a directory
it never had (a real server leaving the nft-arp method has no SAVE_DIR before).
"""

from __future__ import annotations

from reconciler.plan.steps import Argv

SAVE_DIR = "/var/lib/shoal/nft"

_LOAD = 'printf "%s" "$1" | nft -f -'
_MKDIR = 'if [ ! -d "$1" ]; then mkdir -p "$1"; : > "$4.madedir"; fi; '
_SAVE_THEN_LOAD = (
    "set -e; " + _MKDIR + 'nft list table "$2" "$3" > "$4"; printf "%s" "$5" | nft -f -'
)
_SAVE_THEN_DELETE = (
    "set -e; " + _MKDIR + 'nft list table "$2" "$3" > "$4"; nft delete table "$2" "$3"'
)
_RESTORE = (
    'set -e; { printf "table %s %s\\ndelete table %s %s\\n" "$1" "$2" "$1" "$2"; cat "$3"; }'
    ' | nft -f -; rm -f "$3"; '
    'if [ -e "$3.madedir" ]; then rm -f "$3.madedir"; rmdir "${3%/*}" 2>/dev/null || :; fi'
)
HEREDOC_EOF = "SHOAL_NFT_EOF"


def save_path(family: str, name: str) -> str:
    """Where a step keeps the table's previous text for its undo."""
    return f"{SAVE_DIR}/{family}-{name}.prev.nft"


def load_argv(text: str) -> Argv:
    """`nft -f -` with `text` on stdin."""
    return ("sh", "-c", _LOAD, "sh", text)


def save_then_load_argv(family: str, name: str, text: str) -> Argv:
    path = save_path(family, name)
    return ("sh", "-c", _SAVE_THEN_LOAD, "sh", SAVE_DIR, family, name, path, text)


def save_then_delete_argv(family: str, name: str) -> Argv:
    return ("sh", "-c", _SAVE_THEN_DELETE, "sh", SAVE_DIR, family, name, save_path(family, name))


def restore_argv(family: str, name: str) -> Argv:
    """Replace the table (if any) with the text the step saved, in one transaction."""
    return ("sh", "-c", _RESTORE, "sh", family, name, save_path(family, name))


def heredoc(text: str) -> list[str]:
    """Restore-script lines feeding `text` to `nft -f -` through a quoted here-document."""
    if any(line.strip() == HEREDOC_EOF for line in text.splitlines()):
        raise ValueError("nft text contains the here-document delimiter")
    return [f"nft -f - <<'{HEREDOC_EOF}'", text.rstrip("\n"), HEREDOC_EOF]
