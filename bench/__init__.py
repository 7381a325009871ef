"""Side-by-side benchmarks (see issue 7)."""
