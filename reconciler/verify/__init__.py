"""Verification: real traffic and real ARP from client hosts, and the judgement of what was seen."""
