"""API tokens as text: how one is made, how its id is read back, and how it is hashed.

Only the hash is stored; the token text is shown once, when it is made.
"""

from __future__ import annotations

import hashlib
import secrets

TOKEN_PREFIX = "shoal"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh (token id, token text); the id is the text's second field."""
    token_id = secrets.token_hex(6)
    return token_id, f"{TOKEN_PREFIX}_{token_id}_{secrets.token_urlsafe(32)}"


def token_id_of(token: str) -> str | None:
    """The id inside a token's text, or None when the text has not the token's form."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        return None
    return parts[1]
