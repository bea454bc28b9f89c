"""Sessions, CSRF and the login rate limit of the console.

- Session: a signed cookie (itsdangerous, key kept in the users database),
  `HttpOnly`, `SameSite=Lax`, `Secure` when `[web] secure_cookies`; it holds
  the user id, the user's session version (a password change or a disable ends
  it) and the session's CSRF token. It expires after `session_hours`.
- CSRF: every form POST carries the session's token in a hidden `csrf` field;
  the login form, before there is a session, carries the token of a signed
  `gm_csrf` cookie. Requests authenticated by an API token (Authorization:
  Bearer) carry no cookie, so they need no CSRF token.
- Login rate limit: at most `login_max_failures` failures per user name and per
  client address within `login_window_s`; past that, logins are refused (429)
  until the window has moved on, whether the password is right or not.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import deque

from itsdangerous import BadSignature, URLSafeTimedSerializer

SESSION_COOKIE = "gm_session"
CSRF_COOKIE = "gm_csrf"


class Sessions:
    def __init__(self, secret: str, max_age_s: float, secure: bool) -> None:
        self._s = URLSafeTimedSerializer(secret, salt="greenmine-console-session")
        self._c = URLSafeTimedSerializer(secret, salt="greenmine-console-csrf")
        self.max_age_s = max_age_s
        self.secure = secure

    def issue(self, user) -> tuple[str, str]:
        """(cookie value, CSRF token) of a new session for `user`."""
        csrf = secrets.token_urlsafe(24)
        return self._s.dumps({"u": user.id, "v": user.session_version, "c": csrf}), csrf

    def read(self, cookie: str | None) -> dict | None:
        if not cookie:
            return None
        try:
            doc = self._s.loads(cookie, max_age=self.max_age_s)
        except BadSignature:
            return None
        return doc if isinstance(doc, dict) and {"u", "v", "c"} <= doc.keys() else None

    def pre_csrf(self) -> tuple[str, str]:
        """(cookie value, token) for the login form."""
        tok = secrets.token_urlsafe(24)
        return self._c.dumps(tok), tok

    def check_pre_csrf(self, cookie: str | None, token: str | None) -> bool:
        if not cookie or not token:
            return False
        try:
            expected = self._c.loads(cookie, max_age=3600)
        except BadSignature:
            return False
        return same(expected, token)

    def set_cookie(self, response, name: str, value: str, max_age: float | None = None) -> None:
        response.set_cookie(name, value, max_age=int(max_age or self.max_age_s), httponly=True, samesite="lax",
                            secure=self.secure, path="/")


def same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a).encode(), str(b).encode())


class LoginLimiter:
    def __init__(self, max_failures: int, window_s: float, clock=time.monotonic) -> None:
        self.max = max_failures
        self.window = window_s
        self.clock = clock
        self._fails: dict[str, deque] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque:
        q = self._fails.setdefault(key, deque())
        while q and now - q[0] > self.window:
            q.popleft()
        return q

    def blocked(self, *keys: str) -> bool:
        now = self.clock()
        with self._lock:
            return any(len(self._recent(k, now)) >= self.max for k in keys)

    def failed(self, *keys: str) -> None:
        now = self.clock()
        with self._lock:
            for k in keys:
                self._recent(k, now).append(now)
            if len(self._fails) > 10_000:  # bound memory under a spray of names
                for k in [k for k, q in self._fails.items() if not q]:
                    del self._fails[k]

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._fails.pop(key, None)
