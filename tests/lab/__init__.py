"""Tests on real lab hosts."""
