"""Planning, pure: desired state to low states to per-host steps, checked by the safety rules."""
