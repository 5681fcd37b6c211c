"""Console sign-in sessions: server-side, with a signed cookie and a CSRF token each.

Signing in with the API token creates a session held in this process's memory (a restart signs
everyone out, which is the safe failure). The cookie carries only the session id and an HMAC of
it under a per-process key: a forged or altered cookie is refused before any lookup. Each session
has an absolute expiry (`lifetime_s`) and an idle expiry (`idle_s`), both checked on the server;
signing out deletes the session, so a copied cookie stops working at once. Every POST must carry
the session's CSRF token (a form field or the X-CSRF-Token header), compared in constant time:
SameSite=Strict already keeps other sites' forms out, the token is the second lock.
"""

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

COOKIE = "garrison_console"
MAX_SESSIONS = 1000  # a flood of sign-ins cannot grow memory without bound: oldest go first


@dataclass
class Session:
    sid: str
    csrf: str
    created: float
    last_seen: float
    flash: List[Tuple[str, str]] = field(default_factory=list)  # (kind, text) shown on the next page


class Sessions:
    def __init__(self, lifetime_s: float = 12 * 3600, idle_s: float = 3600, clock=time.monotonic):
        self.lifetime_s, self.idle_s, self._clock = lifetime_s, idle_s, clock
        self._key = secrets.token_bytes(32)
        self._sessions: Dict[str, Session] = {}
        self._lock = threading.Lock()

    def _sign(self, sid: str) -> str:
        return hmac.new(self._key, sid.encode(), hashlib.sha256).hexdigest()

    def create(self) -> Tuple[Session, str]:
        """A new session and its cookie value."""
        now = self._clock()
        session = Session(secrets.token_urlsafe(24), secrets.token_urlsafe(24), now, now)
        with self._lock:
            self._expire(now)
            while len(self._sessions) >= MAX_SESSIONS:
                oldest = min(self._sessions.values(), key=lambda s: s.last_seen)
                del self._sessions[oldest.sid]
            self._sessions[session.sid] = session
        return session, f"{session.sid}.{self._sign(session.sid)}"

    def get(self, cookie: Optional[str], touch: bool = True) -> Optional[Session]:
        """The live session a cookie names, or None (unsigned, unknown, expired or ended).
        `touch`: the request is the operator's doing (the live refresh's polling is not, so an
        open tab left alone still reaches the idle expiry)."""
        if not cookie or "." not in cookie:
            return None
        sid, _, signature = cookie.rpartition(".")
        if not hmac.compare_digest(signature.encode(), self._sign(sid).encode()):
            return None
        now = self._clock()
        with self._lock:
            session = self._sessions.get(sid)
            if session is None:
                return None
            if now - session.created > self.lifetime_s or now - session.last_seen > self.idle_s:
                del self._sessions[sid]
                return None
            if touch:
                session.last_seen = now
            return session

    def end(self, session: Session) -> None:
        with self._lock:
            self._sessions.pop(session.sid, None)

    @staticmethod
    def csrf_ok(session: Session, presented: Optional[str]) -> bool:
        if not presented:
            return False
        return hmac.compare_digest(presented.encode("utf-8", "surrogatepass"), session.csrf.encode())  # as auth's

    def _expire(self, now: float) -> None:
        for sid in [
            s.sid
            for s in self._sessions.values()
            if now - s.created > self.lifetime_s or now - s.last_seen > self.idle_s
        ]:
            del self._sessions[sid]
