"""shoal's engine: the desired-state model, facts, planning, applying and the watch loop."""
