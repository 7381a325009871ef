"""shoal tests (a package, so tests/lab never shadows the top-level lab package)."""
