"""Unit tests of planning, compile and the safety rules."""
