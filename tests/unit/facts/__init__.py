"""Unit tests of facts: the script, its parsers, unknown facts."""
