"""Passwords, API tokens and session cookies: how they are made, hashed and checked.

Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106's second recommended
option); token secrets and session cookies are 256-bit random values stored as SHA-256 and
compared in constant time. An API token reads ``cxr_<id>_<secret>``: the id finds the row, the
secret proves it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_PASSWORD_LENGTH = 10
TOKEN_PREFIX = "cxr"


class Role(StrEnum):
    """What a user or token may do; each role may do everything the one before it may."""

    VIEWER = "viewer"  # worklist, studies, heatmaps
    OPERATOR = "operator"  # also reprocess, resend, upload for analysis
    ADMIN = "admin"  # also AE titles, users, tokens

    def allows(self, needed: Role) -> bool:
        """Whether this role may do what ``needed`` may."""
        order = list(Role)
        return order.index(self) >= order.index(needed)


_hasher = PasswordHasher()


def password_problem(password: str) -> str | None:
    """Why a new password is not acceptable, or None."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"a password needs at least {MIN_PASSWORD_LENGTH} characters"
    if password != password.strip() or any(ord(c) < 32 for c in password):
        return "a password may not start or end with spaces or hold control characters"
    return None


def hash_password(password: str) -> str:
    """The argon2id hash (PHC string) to store."""
    return _hasher.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    """Whether ``password`` matches the stored hash (never raises on a bad hash)."""
    try:
        return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    """The stored hash uses weaker parameters than today's defaults."""
    try:
        return _hasher.check_needs_rehash(stored_hash)
    except InvalidHashError:
        return False


_DUMMY_HASH = _hasher.hash("not a password of anyone")


def burn_password_check(password: str) -> None:
    """Spend the time of a real check when there is no such user (no user enumeration by
    timing)."""
    verify_password(_DUMMY_HASH, password)


def sha256_hex(value: str) -> str:
    """SHA-256 of a high-entropy secret, as stored."""
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class NewToken:
    """A freshly made API token: ``value`` is shown once; the rest is stored."""

    value: str
    token_id: str
    secret_hash: str


def new_token() -> NewToken:
    """A random API token."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return NewToken(f"{TOKEN_PREFIX}_{token_id}_{secret}", token_id, sha256_hex(secret))


def split_token(value: str) -> tuple[str, str] | None:
    """(token id, secret) of a presented token, or None when it is not one of ours."""
    parts = value.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def secret_matches(secret: str, stored_hash: str) -> bool:
    """Constant-time comparison of a presented secret with the stored hash."""
    return hmac.compare_digest(sha256_hex(secret), stored_hash)


def new_secret() -> str:
    """A random value for a session cookie or a CSRF token (256 bits)."""
    return secrets.token_urlsafe(32)
