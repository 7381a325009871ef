"""State kinds: each plans pure Steps from one low state, its typed args and the host's facts.

One module per kind (or family of kinds); each defines its args model, its plan function and its
`StateKind` object (`states.kind`), and `states.registry` lists them all.
"""
