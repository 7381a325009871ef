"""Adopting a running cluster: lvs.cf and keepalived.conf read into a shoal config repository."""
