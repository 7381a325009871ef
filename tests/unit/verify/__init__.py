"""Unit tests of verification's parsing and judgement."""
