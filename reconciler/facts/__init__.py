"""What a host really is: the facts script, gathering it over a transport, parsing, typed facts."""
