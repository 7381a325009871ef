"""Unit tests of the state functions."""
