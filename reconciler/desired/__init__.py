"""The desired state: the config repository read, validated and cross-checked into `Desired`."""
