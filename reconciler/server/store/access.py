"""Store queries of API tokens: make one, authenticate a request's token, revoke, list."""

from __future__ import annotations

import hmac

from reconciler.server.store.connection import Connection, as_record
from reconciler.server.store.records import ROLES, Role, TokenRecord, utcnow
from reconciler.server.store.tokens import hash_token, new_token, token_id_of


class AccessQueries(Connection):
    def create_token(self, role: Role, name: str = "") -> tuple[TokenRecord, str]:
        """Make a token; returns its record and the token text, which is never stored."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
        token_id, token = new_token()
        now = utcnow()
        with self._tx() as db:
            db.execute(
                "INSERT INTO tokens (id, name, role, sha256, created_at) VALUES (?, ?, ?, ?, ?)",
                (token_id, name or token_id, role, hash_token(token), now),
            )
        return TokenRecord(token_id, name or token_id, role, now, None), token

    def authenticate(self, token: str) -> TokenRecord | None:
        """The token's record if `token` is valid and not revoked."""
        token_id = token_id_of(token)
        if token_id is None:
            return None
        rows = self._query("SELECT * FROM tokens WHERE id = ?", (token_id,))
        # Compare even when the id is unknown, so timing does not tell which ids exist.
        stored = rows[0]["sha256"] if rows else "0" * 64
        if not hmac.compare_digest(stored, hash_token(token)) or not rows:
            return None
        r = rows[0]
        if r["revoked_at"] is not None:
            return None
        return as_record(TokenRecord, r)

    def revoke_token(self, token_id: str) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (utcnow(), token_id),
            )
            return cur.rowcount == 1

    def list_tokens(self) -> list[TokenRecord]:
        rows = self._query("SELECT * FROM tokens ORDER BY created_at")
        return [as_record(TokenRecord, r) for r in rows]
