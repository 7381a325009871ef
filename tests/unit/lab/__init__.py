"""Unit tests of the lab's pure parts and the leftovers check."""
