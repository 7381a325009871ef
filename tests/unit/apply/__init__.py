"""Unit tests of applying: executor decisions, host scripts, recovery."""
