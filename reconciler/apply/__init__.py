"""Applying a plan: the executor, the host scripts it runs, what a run did, and crash recovery."""
