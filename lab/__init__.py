"""Real test hosts on one machine: network namespaces, a bridge, OpenSSH sshd per host."""
