"""State functions: each plans pure Steps from one low state and one host's facts."""
