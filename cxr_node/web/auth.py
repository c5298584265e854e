"""Who is asking: a Bearer API token or a session cookie, checked on every request server-side.

Sessions: a random cookie (HttpOnly, SameSite=Strict, Secure over HTTPS, expiring), stored as a
hash with its CSRF token; a request that changes something with the cookie must carry that
token (``X-CSRF-Token``, or the ``csrf_token`` form field of the pages). Bearer requests carry
no ambient credentials, so they need none. Failed logins are slowed down per user name and per
client address.
"""

from __future__ import annotations

import hmac
import logging
import math
import threading
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from cxr_node.ledger import Ledger
from cxr_node.web import credentials
from cxr_node.web.credentials import Role
from cxr_node.web.problems import Problem

log = logging.getLogger(__name__)

SESSION_COOKIE = "cxr_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOKEN_USE_RESOLUTION = 60.0
"""A token's ``last_used_at`` is kept to this many seconds."""


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a user (by session) or a machine (by token)."""

    name: str
    kind: str  # "user" or "token"
    role: Role
    csrf_token: str | None = None  # sessions only

    @property
    def actor(self) -> str:
        """How the audit trail and the log name the caller."""
        return f"{self.kind}:{self.name}"


@dataclass
class LoginThrottle:
    """Failed logins slow the next ones down: after ``free`` failures within ``window``
    seconds (per user name and per client address), each further attempt waits 2^(n-free)
    seconds from the last failure, at most ``ceiling``."""

    free: int = 5
    window: float = 900.0
    ceiling: float = 300.0
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _recent(self, key: str, now: float) -> deque[float]:
        failures = self._failures[key]
        while failures and failures[0] < now - self.window:
            failures.popleft()
        return failures

    def wait_seconds(self, *keys: str) -> float:
        """How long before another attempt is heard (0: now)."""
        now = self.clock()
        wait = 0.0
        with self._lock:
            for key in keys:
                failures = self._recent(key, now)
                extra = len(failures) - self.free
                if extra >= 0:
                    delay = min(2.0**extra, self.ceiling)
                    wait = max(wait, failures[-1] + delay - now)
        return max(0.0, wait)

    def failed(self, *keys: str) -> None:
        """One more failed attempt for each key."""
        now = self.clock()
        with self._lock:
            for key in keys:
                self._recent(key, now).append(now)

    def succeeded(self, *keys: str) -> None:
        """A successful login clears the keys' failures."""
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)


def ledger_of(request: Request) -> Ledger:
    """The app's ledger."""
    ledger: Ledger = request.app.state.ledger
    return ledger


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Problem(
            401,
            "not-authenticated",
            "Not authenticated",
            "use Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return value.strip()


def _from_token(ledger: Ledger, value: str) -> Principal:
    parts = credentials.split_token(value)
    row = ledger.token_by_id(parts[0]) if parts else None
    if parts is None or row is None or not credentials.secret_matches(parts[1], row.secret_hash):
        raise Problem(
            401,
            "invalid-token",
            "Invalid token",
            "the token is not known here",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    if row.revoked_at is not None:
        raise Problem(
            401,
            "invalid-token",
            "Invalid token",
            "the token was revoked",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    if row.last_used_at is None or ledger.now() - row.last_used_at >= TOKEN_USE_RESOLUTION:
        ledger.touch_token(row.name)  # not a write on every request of a busy client
    return Principal(row.name, "token", Role(row.role))


def authenticate(request: Request) -> Principal | None:
    """The caller, or None when the request carries no credentials; a credential that is
    wrong, revoked or expired is a 401 problem."""
    ledger = ledger_of(request)
    token = _bearer(request)
    if token is not None:
        return _from_token(ledger, token)
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    session = ledger.session(credentials.sha256_hex(cookie))
    if session is None:
        raise Problem(
            401, "session-expired", "Session expired", "log in again", headers=_challenge()
        )
    return Principal(session.user_name, "user", Role(session.role), session.csrf_token)


def _challenge() -> dict[str, str]:
    return {"WWW-Authenticate": "Bearer"}


def current_principal(request: Request) -> Principal:
    """Dependency: the authenticated caller (401 otherwise)."""
    principal = authenticate(request)
    if principal is None:
        raise Problem(
            401,
            "not-authenticated",
            "Not authenticated",
            "log in, or send Authorization: Bearer <token>",
            headers=_challenge(),
        )
    request.state.principal = principal
    return principal


async def _form_csrf(request: Request) -> str | None:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        return None
    form = await request.form()
    value = form.get("csrf_token")
    return value if isinstance(value, str) else None


def requires(role: Role) -> Callable[..., Awaitable[Principal]]:
    """Dependency factory: the caller must hold ``role`` (or one above); a session's unsafe
    request must carry its CSRF token."""

    async def check(
        request: Request, principal: Annotated[Principal, Depends(current_principal)]
    ) -> Principal:
        if not principal.role.allows(role):
            raise Problem(403, "forbidden", "Forbidden", f"needs the {role.value} role or above")
        if principal.kind == "user" and request.method not in SAFE_METHODS:
            presented = request.headers.get(CSRF_HEADER) or await _form_csrf(request)
            if not presented or not _same(presented, principal.csrf_token or ""):
                raise Problem(
                    403,
                    "csrf-failed",
                    "CSRF check failed",
                    f"send the session's CSRF token in {CSRF_HEADER}",
                )
        return principal

    return check


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def retry_after(seconds: float) -> dict[str, str]:
    """The Retry-After header for a wait."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}
