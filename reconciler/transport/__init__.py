"""Talking to hosts: one `Transport` protocol, the SSH implementation and its set-up."""
