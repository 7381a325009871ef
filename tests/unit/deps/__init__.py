"""Unit tests of the dependencies: the lock file against pyproject.toml."""
