"""Unit tests (a package: modules import their helpers as tests.unit.*, one name each)."""
