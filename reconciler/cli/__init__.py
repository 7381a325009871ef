"""The `shoal` command line: one module per command, plus what their output shares."""
