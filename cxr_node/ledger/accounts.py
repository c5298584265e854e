"""Users, API tokens, web sessions and the audit trail (tables since migration 0005).

The ledger keeps only hashes: argon2id for passwords, SHA-256 for token secrets and session
cookies (both 256-bit random values, so a fast hash is enough to make a stolen database useless
for logging in). Hashing and checking live in :mod:`cxr_node.web.credentials`; this part stores
and finds rows. The audit trail names users and studies, never patient data.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from cxr_node.ledger.base import LedgerBase
from cxr_node.ledger.schema import api_tokens, audit, changes, users, web_sessions


@dataclass(frozen=True)
class UserRow:
    """A person who logs in to the pages (or the API with a session)."""

    name: str
    role: str
    password_hash: str
    created_at: float
    password_changed_at: float


@dataclass(frozen=True)
class TokenRow:
    """An API token for a machine; only the hash of its secret is stored."""

    name: str
    token_id: str
    secret_hash: str
    role: str
    created_at: float
    last_used_at: float | None
    revoked_at: float | None


@dataclass(frozen=True)
class SessionRow:
    """A logged-in browser: the user, the role they have now, the CSRF token and the expiry."""

    user_name: str
    role: str
    csrf_token: str
    created_at: float
    expires_at: float


@dataclass(frozen=True)
class AuditRow:
    """One audited view or change."""

    at: float
    actor: str
    action: str
    study_key: str | None
    detail: str | None


class AccountsLedger(LedgerBase):
    """Users, tokens, sessions and the audit trail."""

    # --- users ---------------------------------------------------------------------------------

    def add_user(self, name: str, role: str, password_hash: str) -> bool:
        """A new user; False when the name is taken."""
        now = self.now()
        with self._begin() as db:
            if db.execute(sa.select(users.c.name).where(users.c.name == name)).first():
                return False
            db.execute(
                users.insert().values(
                    name=name,
                    role=role,
                    password_hash=password_hash,
                    created_at=now,
                    password_changed_at=now,
                )
            )
            db.execute(changes.insert().values(at=now, what=f"user added: {name} role={role}"))
        return True

    def user(self, name: str) -> UserRow | None:
        """One user by name."""
        with self._begin() as db:
            row = db.execute(sa.select(users).where(users.c.name == name)).first()
        return None if row is None else UserRow(**row._mapping)

    def list_users(self) -> list[UserRow]:
        """Every user, by name."""
        with self._begin() as db:
            rows = db.execute(sa.select(users).order_by(users.c.name)).all()
        return [UserRow(**row._mapping) for row in rows]

    def count_users(self) -> int:
        """How many users there are (none: serve creates the first admin)."""
        with self._begin() as db:
            return int(db.execute(sa.select(sa.func.count()).select_from(users)).scalar_one())

    def set_password_hash(self, name: str, password_hash: str) -> bool:
        """A new password; the user's sessions end. False when there is no such user."""
        now = self.now()
        with self._begin() as db:
            changed = db.execute(
                users.update()
                .where(users.c.name == name)
                .values(password_hash=password_hash, password_changed_at=now)
            ).rowcount
            if changed:
                db.execute(web_sessions.delete().where(web_sessions.c.user_name == name))
                db.execute(changes.insert().values(at=now, what=f"password changed: {name}"))
        return bool(changed)

    def rehash_password(self, name: str, old_hash: str, new_hash: str) -> None:
        """Store a stronger hash of the same password (argon2 parameters raised); sessions stay."""
        with self._begin() as db:
            db.execute(
                users.update()
                .where(users.c.name == name, users.c.password_hash == old_hash)
                .values(password_hash=new_hash)
            )

    def remove_user(self, name: str) -> bool:
        """Remove a user and end their sessions; False when there is no such user."""
        with self._begin() as db:
            removed = db.execute(users.delete().where(users.c.name == name)).rowcount
            db.execute(web_sessions.delete().where(web_sessions.c.user_name == name))
            if removed:
                db.execute(changes.insert().values(at=self.now(), what=f"user removed: {name}"))
        return bool(removed)

    # --- API tokens ----------------------------------------------------------------------------

    def add_token(self, name: str, token_id: str, secret_hash: str, role: str) -> bool:
        """A new token; False when the name is taken (revoked tokens keep their name)."""
        now = self.now()
        with self._begin() as db:
            if db.execute(sa.select(api_tokens.c.name).where(api_tokens.c.name == name)).first():
                return False
            db.execute(
                api_tokens.insert().values(
                    name=name,
                    token_id=token_id,
                    secret_hash=secret_hash,
                    role=role,
                    created_at=now,
                )
            )
            db.execute(changes.insert().values(at=now, what=f"token added: {name} role={role}"))
        return True

    def token_by_id(self, token_id: str) -> TokenRow | None:
        """A token by the public part of its value."""
        with self._begin() as db:
            row = db.execute(sa.select(api_tokens).where(api_tokens.c.token_id == token_id)).first()
        return None if row is None else TokenRow(**row._mapping)

    def list_tokens(self) -> list[TokenRow]:
        """Every token, revoked ones too, by name."""
        with self._begin() as db:
            rows = db.execute(sa.select(api_tokens).order_by(api_tokens.c.name)).all()
        return [TokenRow(**row._mapping) for row in rows]

    def touch_token(self, name: str) -> None:
        """The token was just used."""
        with self._begin() as db:
            db.execute(
                api_tokens.update().where(api_tokens.c.name == name).values(last_used_at=self.now())
            )

    def revoke_token(self, name: str) -> bool:
        """Revoke a token for good; False when there is no such live token."""
        now = self.now()
        with self._begin() as db:
            revoked = db.execute(
                api_tokens.update()
                .where(api_tokens.c.name == name, api_tokens.c.revoked_at.is_(None))
                .values(revoked_at=now)
            ).rowcount
            if revoked:
                db.execute(changes.insert().values(at=now, what=f"token revoked: {name}"))
        return bool(revoked)

    # --- web sessions --------------------------------------------------------------------------

    def open_session(
        self, session_hash: str, user_name: str, csrf_token: str, lifetime_seconds: float
    ) -> None:
        """A browser logged in; expired sessions are cleared on the way."""
        now = self.now()
        with self._begin() as db:
            db.execute(web_sessions.delete().where(web_sessions.c.expires_at <= now))
            db.execute(
                web_sessions.insert().values(
                    session_hash=session_hash,
                    user_name=user_name,
                    csrf_token=csrf_token,
                    created_at=now,
                    expires_at=now + lifetime_seconds,
                )
            )

    def session(self, session_hash: str) -> SessionRow | None:
        """A live session with its user's current role; None when unknown, expired or the user
        was removed."""
        with self._begin() as db:
            row = db.execute(
                sa.select(
                    web_sessions.c.user_name,
                    users.c.role,
                    web_sessions.c.csrf_token,
                    web_sessions.c.created_at,
                    web_sessions.c.expires_at,
                )
                .join(users, users.c.name == web_sessions.c.user_name)
                .where(
                    web_sessions.c.session_hash == session_hash,
                    web_sessions.c.expires_at > self.now(),
                )
            ).first()
        return None if row is None else SessionRow(**row._mapping)

    def close_session(self, session_hash: str) -> None:
        """Log out."""
        with self._begin() as db:
            db.execute(web_sessions.delete().where(web_sessions.c.session_hash == session_hash))

    # --- audit ---------------------------------------------------------------------------------

    def record_audit(
        self, actor: str, action: str, study_key: str | None = None, detail: str | None = None
    ) -> None:
        """Who viewed or changed what (``actor`` user:NAME or token:NAME; no patient data)."""
        with self._begin() as db:
            db.execute(
                audit.insert().values(
                    at=self.now(), actor=actor, action=action, study_key=study_key, detail=detail
                )
            )

    def audit_trail(self, study_key: str | None = None, limit: int = 200) -> list[AuditRow]:
        """The newest audit rows, of one study or of all."""
        query = sa.select(audit).order_by(audit.c.id.desc()).limit(limit)
        if study_key is not None:
            query = query.where(audit.c.study_key == study_key)
        with self._begin() as db:
            rows = db.execute(query).all()
        return [
            AuditRow(
                at=row.at,
                actor=row.actor,
                action=row.action,
                study_key=row.study_key,
                detail=row.detail,
            )
            for row in rows
        ]
