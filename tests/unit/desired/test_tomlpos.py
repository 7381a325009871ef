"""Locating key paths in TOML text (for file:line:col in validation errors)."""

from __future__ import annotations

import tomllib

from reconciler.desired.tomlpos import Position, TomlPositions

TEXT = '''# a comment with [brackets] and "quotes"
[cluster]
name = "web"   # trailing comment
directors = ["lvs1", "lvs2"]
vrrp = { virtual_router_id = 5, priority_primary = 200 }

[[service]]
name = "http"
check.type = "http"
note = """
a ""\\" [x] = y
b"""""
literal = 'C:\\path'
  [[service.real_server]]
  host = "web1"
  [[service.real_server]]
  host = 'web2'
[[service]]
"quoted key" = 1
ports = [
  1, # one
  [2, 3],
]
when = 1979-05-27 07:32:00Z
'''


def test_text_is_valid_toml() -> None:
    # The scanner may assume valid input; make sure the test input is.
    data = tomllib.loads(TEXT)
    assert data["service"][0]["real_server"][1]["host"] == "web2"


def test_values_and_keys() -> None:
    p = TomlPositions(TEXT)
    assert p.find(("cluster", "name")) == Position(3, 8)
    assert p.find(("cluster", "name"), "key") == Position(3, 1)
    assert p.find(("cluster", "directors", 1)) == Position(4, 22)
    assert p.find(("cluster", "vrrp", "priority_primary")) == Position(5, 52)
    assert p.find(("cluster", "vrrp", "priority_primary"), "key") == Position(5, 33)
    assert p.find(("service", 0, "check", "type")) == Position(9, 14)
    assert p.find(("service", 0, "check", "type"), "key") == Position(9, 7)


def test_array_of_tables_and_strings_spanning_lines() -> None:
    p = TomlPositions(TEXT)
    assert p.find(("service", 0, "real_server", 0, "host")) == Position(15, 10)
    assert p.find(("service", 0, "real_server", 1, "host")) == Position(17, 10)
    assert p.find(("service", 1)) == Position(18, 1)
    assert p.find(("service", 1, "quoted key"), "key") == Position(19, 1)
    assert p.find(("service", 1, "ports", 1, 0)) == Position(22, 4)
    assert p.find(("service", 1, "when")) == Position(24, 8)


def test_missing_keys_fall_back_to_their_table() -> None:
    p = TomlPositions(TEXT)
    # A key that is not written points at the header of the table it belongs in.
    assert p.find(("service", 0, "real_server", 1, "weight")) == Position(16, 3)
    assert p.find(("service", 0, "vip")) == Position(7, 1)
    assert p.find(("nothing",)) is None
    assert p.find(()) is None
