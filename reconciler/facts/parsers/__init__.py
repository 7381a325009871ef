"""Pure parsers from a tool's raw output to the typed facts of `reconciler.facts.hostfacts`."""
