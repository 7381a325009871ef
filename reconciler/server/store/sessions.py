"""Store queries of web sign-in sessions: open one for a token, read it back, end it.

A session is what a person's browser holds after signing in with an API token: a random
secret in a cookie, of which only the sha256 is stored (a copy of the database lets nobody
sign in). It ends at its expiry, at sign-out, or when its token is revoked, whichever comes
first; the CSRF token of its forms is kept with it.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from reconciler.server.store.connection import Connection, as_record
from reconciler.server.store.records import SessionRecord, TokenRecord
from reconciler.server.store.tokens import hash_token


def _stamp(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds")


class SessionQueries(Connection):
    def open_session(
        self, token: TokenRecord, lifetime: timedelta, *, now: datetime | None = None
    ) -> tuple[SessionRecord, str]:
        """A new session for `token`; returns it and the cookie's secret (never stored)."""
        at = now or datetime.now(UTC)
        secret = secrets.token_urlsafe(32)
        record = SessionRecord(
            id=hash_token(secret),
            token_id=token.id,
            csrf=secrets.token_urlsafe(32),
            created_at=_stamp(at),
            expires_at=_stamp(at + lifetime),
        )
        with self._tx() as db:
            # Expired sessions are of no use to anyone: forgotten whenever one is opened.
            db.execute("DELETE FROM web_sessions WHERE expires_at <= ?", (record.created_at,))
            db.execute(
                "INSERT INTO web_sessions (id, token_id, csrf, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (record.id, record.token_id, record.csrf, record.created_at, record.expires_at),
            )
        return record, secret

    def session_of(
        self, secret: str, *, now: datetime | None = None
    ) -> tuple[SessionRecord, TokenRecord] | None:
        """The live session whose cookie holds `secret`, and its token; None when there is
        none, it expired, or its token was revoked."""
        at = _stamp(now or datetime.now(UTC))
        rows = self._query(
            "SELECT s.id, s.token_id, s.csrf, s.created_at, s.expires_at, "
            "t.name, t.role, t.created_at AS token_created_at, t.revoked_at "
            "FROM web_sessions s JOIN tokens t ON t.id = s.token_id "
            "WHERE s.id = ? AND s.expires_at > ? AND t.revoked_at IS NULL",
            (hash_token(secret), at),
        )
        if not rows:
            return None
        r = rows[0]
        token = TokenRecord(r["token_id"], r["name"], r["role"], r["token_created_at"], None)
        return as_record(SessionRecord, r), token

    def end_session(self, secret: str) -> bool:
        with self._tx() as db:
            cur = db.execute("DELETE FROM web_sessions WHERE id = ?", (hash_token(secret),))
            return cur.rowcount == 1
