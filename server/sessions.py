"""S3 Express One Zone sessions: ``CreateSession`` hands out short-lived keys.

A client calls ``GET /bucket?session`` signed with its long-term key and gets
a session key pair and token valid for five minutes (as AWS's are); it then
signs requests with the session secret and sends the token in
``x-amz-s3session-token``.  Sessions live in memory: after a restart the
token is unknown, the client is told ``InvalidToken`` and creates a new one.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from server.auth import Session
from server.context import Context
from server.errors import InvalidArgument
from server.http import Response
from server import xml

SESSION_SECONDS = 300.0
MODES = ("ReadWrite", "ReadOnly")


@dataclass
class SessionStore:
    lifetime: float = SESSION_SECONDS
    clock: object = time.time
    _sessions: dict[str, tuple[Session, str, str]] = field(default_factory=dict)  # token -> (session, owner, bucket)

    def __repr__(self) -> str:
        return f"SessionStore(live={len(self._sessions)})"

    def create(self, owner: str, bucket: str) -> tuple[str, Session]:
        now = self.clock()
        self._sessions = {t: s for t, s in self._sessions.items() if s[0].expires_at > now}  # forget expired ones
        token = secrets.token_urlsafe(48)
        session = Session("TBS" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30), now + self.lifetime)
        self._sessions[token] = (session, owner, bucket)
        return token, session

    def lookup(self, token: str) -> Session | None:
        entry = self._sessions.get(token)
        return entry[0] if entry else None

    def owner_of(self, token: str) -> tuple[str, str] | None:
        """(long-term access key, bucket) a session was created by and for."""
        entry = self._sessions.get(token)
        return (entry[1], entry[2]) if entry else None


async def create_session(ctx: Context, store: SessionStore) -> Response:
    await ctx.storage.get_bucket(ctx.bucket)
    mode = ctx.request.header("x-amz-create-session-mode") or "ReadWrite"
    if mode not in MODES:
        raise InvalidArgument(f"x-amz-create-session-mode must be ReadWrite or ReadOnly, not {mode!r}")
    token, session = store.create(ctx.auth.access_key_id, ctx.bucket)
    body = xml.create_session_result(session.access_key_id, session.secret, token, session.expires_at)
    return Response(200, [("content-type", "application/xml")], body)
