"""Reading a config repository into one validated `Desired`, or every problem with it at once.

The repository is a set of files (shoal.toml, inventory.toml, known_hosts, clusters/*.toml). They
are parsed with tomllib, validated per file by the models, then checked across files
(`reconciler.desired.crosscheck`).
Nothing stops at the first problem: the operator gets the whole list,
each located as `file:line:col: key path: message`.

`load_tree` takes the files as bytes, so the server can validate a git tree without a checkout;
`load_repository` reads them from a directory.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ValidationError

from reconciler.desired import messages as config_messages
from reconciler.desired.crosscheck import (
    INVENTORY_FILE,
    SETTINGS_FILE,
    ClusterParts,
    RepoParts,
    cross_check,
)
from reconciler.desired.known_hosts import has_key_for, host_token, parse_known_hosts, plain_tokens
from reconciler.desired.models import (
    Cluster,
    ClusterHeader,
    Desired,
    ExtraState,
    Host,
    Inventory,
    LoginSettings,
    Service,
    Settings,
    is_valid_name,
    quoted,
)
from reconciler.desired.tomlpos import KeyPath, TomlPositions
from reconciler.errors import ConfigIssue, DesiredStateInvalid

KNOWN_HOSTS_FILE = "known_hosts"
CLUSTERS_DIR = "clusters"

_TOML_ERROR_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_TOML_ERROR_END = re.compile(r"\s*\(at end of document\)$")


@dataclass
class _Document:
    """One TOML file: its text, its parsed data, and (lazily) the positions of its keys."""

    file: str
    text: str
    data: dict[str, Any]
    _positions: TomlPositions | None = field(default=None, repr=False)

    @property
    def positions(self) -> TomlPositions:
        if self._positions is None:
            self._positions = TomlPositions(self.text)
        return self._positions


def render_key_path(path: KeyPath, data: Mapping[str, Any] | None = None) -> str:
    """A concrete key path as an operator reads it: `service "http" > real_server 2 > host`.

    An element of an array of tables is named by its `name` or `id` when it has one, otherwise
    by its 1-based position; `hosts.<name>` reads `host "<name>"`.
    """
    words: list[str] = []
    node: Any = data
    for segment in path:
        if isinstance(segment, int):
            element = node[segment] if isinstance(node, list) and segment < len(node) else None
            label = None
            if isinstance(element, dict):
                label = next(
                    (element[k] for k in ("name", "id") if isinstance(element.get(k), str)), None
                )
            if words:
                words[-1] += f" {quoted(label)}" if label is not None else f" {segment + 1}"
            else:
                words.append(str(segment + 1))
            node = element
            continue
        if words == ["hosts"] and len(words) == 1:
            words[-1] = f"host {quoted(segment)}"
        else:
            words.append(segment)
        node = node.get(segment) if isinstance(node, dict) else None
    return " > ".join(words)


class _Collector:
    """Gathers issues; knows how to locate a key path in the file it belongs to."""

    def __init__(self) -> None:
        self.issues: list[ConfigIssue] = []
        self.documents: dict[str, _Document] = {}

    def add(
        self, file: str, path: KeyPath, message: str, anchor: config_messages.Anchor = "value"
    ) -> None:
        doc = self.documents.get(file)
        line = column = None
        if doc is not None and path:
            position = doc.positions.find(path, anchor)
            if position is not None:
                line, column = position.line, position.column
        key_path = render_key_path(path, doc.data if doc is not None else None)
        self.issues.append(ConfigIssue(file, message, key_path, line, column))

    def add_at(self, file: str, message: str, line: int | None, column: int | None) -> None:
        self.issues.append(ConfigIssue(file, message, "", line, column))

    def parse(self, file: str, raw: bytes) -> _Document | None:
        """Parse one TOML file; a syntax error becomes an issue with tomllib's line and column."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.add_at(file, f"not UTF-8 text (byte {exc.start})", None, None)
            return None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            message = str(exc)
            line = column = None
            if match := _TOML_ERROR_AT.search(message):
                line, column = int(match.group(1)), int(match.group(2))
                message = message[: match.start()]
            elif match := _TOML_ERROR_END.search(message):
                line = text.count("\n") + 1
                column = len(text) - (text.rfind("\n") + 1) + 1
                message = message[: match.start()]
            self.add_at(file, f"TOML syntax error: {message}", line, column)
            return None
        doc = _Document(file, text, data)
        self.documents[file] = doc
        return doc

    def validate(
        self, doc: _Document, model: type[BaseModel], data: Any, prefix: KeyPath = ()
    ) -> bool:
        """Report every pydantic error of `model.model_validate(data)` under `prefix`."""
        try:
            model.model_validate(data)
        except ValidationError as exc:
            for error in exc.errors():
                path, message, anchor = config_messages.describe(error, model)
                self.add(doc.file, prefix + path, message, anchor)
            return False
        return True


def _try(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError:
        return None


def _load_settings(collector: _Collector, files: Mapping[str, bytes]) -> Settings | None:
    if SETTINGS_FILE not in files:
        return Settings()  # every setting has a default
    doc = collector.parse(SETTINGS_FILE, files[SETTINGS_FILE])
    if doc is None or not collector.validate(doc, Settings, doc.data):
        return None
    return Settings.model_validate(doc.data)


def _load_inventory(
    collector: _Collector, files: Mapping[str, bytes]
) -> tuple[frozenset[str] | None, dict[str, Host], bool]:
    """Host names (all keys; None if unreadable), the hosts that validated, whether all did."""
    if INVENTORY_FILE not in files:
        collector.add_at(INVENTORY_FILE, "missing file (the repository lists no hosts)", None, None)
        return None, {}, False
    doc = collector.parse(INVENTORY_FILE, files[INVENTORY_FILE])
    if doc is None:
        return None, {}, False
    ok = True
    for key in doc.data:
        if key != "hosts":
            collector.add(INVENTORY_FILE, (key,), "unknown key; allowed keys: hosts", "key")
            ok = False
    tables = doc.data.get("hosts", {})
    if not isinstance(tables, dict):
        collector.add(
            INVENTORY_FILE,
            ("hosts",),
            f"must be a table of [hosts.<name>] tables, got {config_messages.toml_kind(tables)}",
        )
        return None, {}, False
    hosts: dict[str, Host] = {}
    for name, table in tables.items():
        prefix: KeyPath = ("hosts", name)
        if not isinstance(table, dict):
            collector.add(
                INVENTORY_FILE,
                prefix,
                f"must be a table, got {config_messages.toml_kind(table)}",
            )
            ok = False
            continue
        if "name" in table and table["name"] != name:
            collector.add(
                INVENTORY_FILE,
                (*prefix, "name"),
                f"differs from the table key {quoted(name)} (the key is the host's name; "
                "leave `name` out)",
            )
            ok = False
            continue
        data = {**table, "name": name}
        try:
            hosts[name] = Host.model_validate(data)
        except ValidationError as exc:
            ok = False
            for error in exc.errors():
                path, message, anchor = config_messages.describe(error, Host)
                if path == ("name",) and "name" not in table:
                    path = ()  # the name is the table key, not a key inside the table
                collector.add(INVENTORY_FILE, prefix + path, message, anchor)
    return frozenset(tables), hosts, ok


def _host_refs(data: Mapping[str, Any]) -> tuple[tuple[KeyPath, str], ...]:
    """Every string in a raw cluster file that names a host, with its key path."""
    refs: list[tuple[KeyPath, str]] = []

    def strings(container: Any, path: KeyPath) -> None:
        if isinstance(container, list):
            refs.extend(((*path, i), v) for i, v in enumerate(container) if isinstance(v, str))
        elif isinstance(container, str):
            refs.append((path, container))

    def tables(value: Any) -> list[tuple[int, dict[str, Any]]]:
        items = value if isinstance(value, list) else []
        return [(i, item) for i, item in enumerate(items) if isinstance(item, dict)]

    header = data.get("cluster")
    if isinstance(header, dict):
        strings(header.get("directors"), ("cluster", "directors"))
    for si, service in tables(data.get("service")):
        for ri, real in tables(service.get("real_server")):
            strings(real.get("host"), ("service", si, "real_server", ri, "host"))
    for k, state in tables(data.get("state")):
        strings(state.get("hosts"), ("state", k, "hosts"))
    return tuple(refs)


def _load_cluster(collector: _Collector, file: str, raw: bytes) -> tuple[ClusterParts, Any]:
    """The cluster's parts that validated (for cross checks) and the Cluster, or None."""
    stem = PurePosixPath(file).stem
    empty = ClusterParts(file, stem, None, (), ())
    if not is_valid_name(stem):
        collector.add_at(file, f"file name {quoted(stem)} is not a valid cluster name", None, None)
    doc = collector.parse(file, raw)
    if doc is None:
        return empty, None
    refs = _host_refs(doc.data)
    if collector.validate(doc, Cluster, doc.data):
        cluster = Cluster.model_validate(doc.data)
        parts = ClusterParts(
            file,
            stem,
            cluster.cluster,
            tuple(enumerate(cluster.services)),
            tuple(enumerate(cluster.states)),
            refs,
        )
        return parts, cluster
    # Validate the pieces one by one, so cross checks still see every piece that is fine.
    data = doc.data
    header = _try(ClusterHeader, data.get("cluster"))
    services: list[tuple[int, Service]] = []
    states: list[tuple[int, ExtraState]] = []
    for pieces, model, key in ((services, Service, "service"), (states, ExtraState, "state")):
        items = data.get(key, [])
        for index, item in enumerate(items if isinstance(items, list) else []):
            valid = _try(model, item)
            if valid is not None:
                pieces.append((index, valid))
    return ClusterParts(file, stem, header, tuple(services), tuple(states), refs), None


def _check_known_hosts(
    collector: _Collector, files: Mapping[str, bytes], hosts: dict[str, Host]
) -> str:
    """Validate known_hosts and that it pins a key for every inventory host; returns its text."""
    raw = files.get(KNOWN_HOSTS_FILE)
    if raw is None:
        collector.add_at(
            KNOWN_HOSTS_FILE, "missing file (every host's key must be pinned)", None, None
        )
        return ""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        collector.add_at(KNOWN_HOSTS_FILE, f"not UTF-8 text (byte {exc.start})", None, None)
        return ""
    entries, problems = parse_known_hosts(text)
    for problem in problems:
        collector.add_at(KNOWN_HOSTS_FILE, problem.message, problem.line, problem.column)
    plain = plain_tokens(entries)
    for name, host in hosts.items():
        token = host_token(host.address, host.port)
        if not has_key_for(entries, token, plain):
            collector.add_at(
                KNOWN_HOSTS_FILE,
                f"no key for host {quoted(name)} ({token})",
                None,
                None,
            )
    return text


def _file_rank(file: str) -> tuple[int, str]:
    order = {SETTINGS_FILE: 0, INVENTORY_FILE: 1, KNOWN_HOSTS_FILE: 2}
    return order.get(file, 3), file


def cluster_files(files: Mapping[str, bytes]) -> list[str]:
    """The cluster files of a tree: `clusters/*.toml`, sorted (subdirectories are not read)."""
    return sorted(
        name
        for name in files
        if PurePosixPath(name).parent == PurePosixPath(CLUSTERS_DIR) and name.endswith(".toml")
    )


def load_tree(files: Mapping[str, bytes], revision: str = "") -> Desired:
    """Validate a repository given as {relative posix path: content}; raise with every issue."""
    collector = _Collector()
    settings = _load_settings(collector, files)
    host_names, hosts, inventory_ok = _load_inventory(collector, files)
    known_hosts = _check_known_hosts(collector, files, hosts)
    parts: list[ClusterParts] = []
    clusters: dict[str, Cluster] = {}
    for file in cluster_files(files):
        cluster_parts, cluster = _load_cluster(collector, file, files[file])
        parts.append(cluster_parts)
        if cluster is not None:
            clusters[cluster.cluster.name] = cluster
    cross_check(RepoParts(settings, host_names, hosts, tuple(parts)), collector.add)
    if collector.issues or settings is None or not inventory_ok:
        issues = sorted(
            collector.issues,
            key=lambda i: (_file_rank(i.file), i.line or 0, i.column or 0),
        )
        raise DesiredStateInvalid(issues)
    return Desired(
        settings=settings,
        inventory=Inventory(hosts=with_login_defaults(hosts, settings.login)),
        clusters=dict(sorted(clusters.items())),
        known_hosts=known_hosts,
        revision=revision,
    )


_LOGIN_KEYS = ("user", "become", "become_user")


def with_login_defaults(hosts: Mapping[str, Host], login: LoginSettings) -> dict[str, Host]:
    """Every host with shoal.toml's [login] values for the login keys its inventory entry lacks."""
    out: dict[str, Host] = {}
    for name, host in hosts.items():
        unset = {key for key in _LOGIN_KEYS if key not in host.model_fields_set}
        out[name] = host.model_copy(update={key: getattr(login, key) for key in unset})
    return out


def read_tree(path: Path) -> dict[str, bytes]:
    """The files of a repository directory that `load_tree` reads."""
    files: dict[str, bytes] = {}
    for name in (SETTINGS_FILE, INVENTORY_FILE, KNOWN_HOSTS_FILE):
        if (path / name).is_file():
            files[name] = (path / name).read_bytes()
    clusters = path / CLUSTERS_DIR
    if clusters.is_dir():
        for file in sorted(clusters.glob("*.toml")):
            if file.is_file():
                files[f"{CLUSTERS_DIR}/{file.name}"] = file.read_bytes()
    return files


def load_repository(path: Path, revision: str = "") -> Desired:
    """Validate the repository checked out at `path`; raise DesiredStateInvalid with every issue."""
    if not path.is_dir():
        raise DesiredStateInvalid([ConfigIssue(str(path), "not a directory")])
    return load_tree(read_tree(path), revision)


def load_inventory_file(path: Path) -> Inventory:
    """One inventory.toml on its own (as `shoal import --inventory` reads it), issues named by
    `path`; DesiredStateInvalid with every issue."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DesiredStateInvalid([ConfigIssue(str(path), f"cannot read: {exc}")]) from None
    collector = _Collector()
    _names, hosts, ok = _load_inventory(collector, {INVENTORY_FILE: raw})
    if collector.issues or not ok:
        raise DesiredStateInvalid([
            ConfigIssue(str(path), i.message, i.key_path, i.line, i.column)
            for i in collector.issues
        ])  # fmt: skip
    return Inventory(hosts=hosts)
