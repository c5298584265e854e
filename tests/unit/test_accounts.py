"""Users, API tokens, sessions and the audit trail (issue 13): credentials made and checked,
the ledger's rows (SQLite and PostgreSQL), and ``cxr-node users`` / ``tokens``. Secrets never
reach the ledger in clear, the output (except the new token's one line), or the log."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from cxr_node.cli import main
from cxr_node.ledger import Ledger, ManualClock
from cxr_node.web import credentials
from cxr_node.web.credentials import Role

PASSWORD = "correct horse battery"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_000_000.0)


@pytest.fixture
def ledger(ledger_url: str, clock: ManualClock) -> Iterator[Ledger]:
    opened = Ledger(ledger_url, clock=clock)
    yield opened
    opened.close()


# --- credentials ------------------------------------------------------------------------------


def test_roles_include_the_ones_below() -> None:
    assert Role.ADMIN.allows(Role.OPERATOR) and Role.ADMIN.allows(Role.VIEWER)
    assert Role.OPERATOR.allows(Role.VIEWER) and not Role.OPERATOR.allows(Role.ADMIN)
    assert not Role.VIEWER.allows(Role.OPERATOR)


def test_passwords_are_argon2id_and_checked() -> None:
    stored = credentials.hash_password(PASSWORD)
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert credentials.verify_password(stored, PASSWORD)
    assert not credentials.verify_password(stored, PASSWORD + "x")
    assert not credentials.verify_password("not a hash", PASSWORD)  # never raises
    assert credentials.password_problem("short") is not None
    assert credentials.password_problem(" padded password ") is not None
    assert credentials.password_problem(PASSWORD) is None


def test_tokens_carry_an_id_and_a_secret_stored_as_a_hash() -> None:
    made = credentials.new_token()
    parts = credentials.split_token(made.value)
    assert parts is not None
    token_id, secret = parts
    assert token_id == made.token_id and secret not in made.secret_hash
    assert credentials.secret_matches(secret, made.secret_hash)
    assert not credentials.secret_matches(secret + "x", made.secret_hash)
    for bad in ("", "cxr_", "cxr__x", "abc_def_ghi", "Bearer"):
        assert credentials.split_token(bad) is None
    assert credentials.new_token().value != made.value


# --- the ledger -------------------------------------------------------------------------------


def test_users_are_added_once_changed_and_removed(ledger: Ledger) -> None:
    assert ledger.count_users() == 0
    assert ledger.add_user("alice", "admin", "hash-1")
    assert not ledger.add_user("alice", "viewer", "hash-2")
    assert ledger.set_password_hash("alice", "hash-3")
    user = ledger.user("alice")
    assert user is not None and (user.role, user.password_hash) == ("admin", "hash-3")
    assert not ledger.set_password_hash("bob", "hash-4")
    assert [u.name for u in ledger.list_users()] == ["alice"]
    assert ledger.remove_user("alice") and not ledger.remove_user("alice")
    assert ledger.count_users() == 0


def test_sessions_expire_follow_the_role_and_end_with_the_password(
    ledger: Ledger, clock: ManualClock
) -> None:
    ledger.add_user("alice", "viewer", "hash")
    ledger.open_session("s1", "alice", "csrf-1", lifetime_seconds=60)
    session = ledger.session("s1")
    assert session is not None and (session.role, session.csrf_token) == ("viewer", "csrf-1")
    clock.advance(61)
    assert ledger.session("s1") is None  # expired
    ledger.open_session("s2", "alice", "csrf-2", lifetime_seconds=60)
    ledger.set_password_hash("alice", "new-hash")
    assert ledger.session("s2") is None  # a new password ends every session
    ledger.open_session("s3", "alice", "csrf-3", lifetime_seconds=60)
    ledger.close_session("s3")
    assert ledger.session("s3") is None
    ledger.open_session("s4", "alice", "csrf-4", lifetime_seconds=60)
    ledger.remove_user("alice")
    assert ledger.session("s4") is None


def test_tokens_are_found_by_id_touched_and_revoked_for_good(
    ledger: Ledger, clock: ManualClock
) -> None:
    assert ledger.add_token("ci", "abc123", "secret-hash", "operator")
    assert not ledger.add_token("ci", "def456", "other", "viewer")
    token = ledger.token_by_id("abc123")
    assert token is not None
    assert (token.name, token.role, token.revoked_at) == ("ci", "operator", None)
    clock.advance(5)
    ledger.touch_token("ci")
    assert ledger.token_by_id("abc123").last_used_at == clock.now()  # type: ignore[union-attr]
    assert ledger.revoke_token("ci") and not ledger.revoke_token("ci")
    assert ledger.token_by_id("abc123").revoked_at == clock.now()  # type: ignore[union-attr]


def test_the_audit_trail_keeps_who_did_what_to_which_study(ledger: Ledger) -> None:
    ledger.record_audit("user:alice", "view_study", "1.2.3")
    ledger.record_audit("token:ci", "reprocess", "1.2.3", "requested")
    ledger.record_audit("user:bob", "add_source", None, "MODALITY")
    trail = ledger.audit_trail("1.2.3")
    assert [(a.actor, a.action) for a in trail] == [
        ("token:ci", "reprocess"),
        ("user:alice", "view_study"),
    ]
    assert len(ledger.audit_trail()) == 3


# --- the commands -----------------------------------------------------------------------------


def _cli(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    data_dir: Path,
    *args: str,
    stdin: str = "",
) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main([*args, "--data-dir", str(data_dir)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_users_command_adds_lists_changes_and_removes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    run = _cli
    code, out, _ = run(
        monkeypatch, capsys, tmp_path, "users", "add", "alice", "--role", "operator",
        "--password-stdin", stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert code == 0 and "alice" in out
    code, _, err = run(
        monkeypatch, capsys, tmp_path, "users", "add", "alice", "--role", "viewer",
        "--password-stdin", stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert code == 1 and "exists" in err
    code, _, err = run(
        monkeypatch, capsys, tmp_path, "users", "add", "bob", "--role", "viewer",
        "--password-stdin", stdin="short\n",
    )  # fmt: skip
    assert code == 1 and "at least" in err
    code, _, err = run(monkeypatch, capsys, tmp_path, "users", "add", "carol", "--role", "viewer")
    assert code == 1 and "--password-stdin" in err  # no terminal to ask at
    code, _, err = run(
        monkeypatch, capsys, tmp_path, "users", "add", "bad name", "--role", "viewer",
        "--password-stdin", stdin=PASSWORD,
    )  # fmt: skip
    assert code == 1 and "a name is" in err
    code, out, _ = run(monkeypatch, capsys, tmp_path, "users", "list", "--json")
    assert code == 0 and out.strip() == '[{"name": "alice", "role": "operator"}]'
    code, out, _ = run(
        monkeypatch, capsys, tmp_path, "users", "passwd", "alice", "--password-stdin",
        stdin="another good password\n",
    )  # fmt: skip
    assert code == 0
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    try:
        user = ledger.user("alice")
        assert user is not None
        assert credentials.verify_password(user.password_hash, "another good password")
    finally:
        ledger.close()
    code, out, _ = run(monkeypatch, capsys, tmp_path, "users", "remove", "alice")
    assert code == 0
    code, out, _ = run(monkeypatch, capsys, tmp_path, "users", "list")
    assert "no users" in out
    assert PASSWORD not in caplog.text and "another good password" not in caplog.text


def test_tokens_command_shows_the_token_once_on_its_last_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    code, out, _ = _cli(monkeypatch, capsys, tmp_path, "tokens", "add", "ci", "--role", "viewer")
    assert code == 0
    value = out.strip().splitlines()[-1]
    assert value.startswith("cxr_") and " " not in value
    code, listing, _ = _cli(monkeypatch, capsys, tmp_path, "tokens", "list")
    assert code == 0 and "ci" in listing and "live" in listing and value not in listing
    code, listing, _ = _cli(monkeypatch, capsys, tmp_path, "tokens", "list", "--json")
    assert value not in listing
    code, out, _ = _cli(monkeypatch, capsys, tmp_path, "tokens", "revoke", "ci")
    assert code == 0
    code, _, err = _cli(monkeypatch, capsys, tmp_path, "tokens", "revoke", "ci")
    assert code == 1 and "no such live token" in err
    code, listing, _ = _cli(monkeypatch, capsys, tmp_path, "tokens", "list")
    assert "revoked" in listing
    secret = value.split("_", 2)[2]
    assert secret not in caplog.text
    with sa.create_engine(f"sqlite:///{tmp_path / 'ledger.sqlite'}").connect() as db:
        stored = db.execute(sa.text("SELECT token_id, secret_hash FROM api_tokens")).one()
    assert secret not in stored.secret_hash and stored.secret_hash == credentials.sha256_hex(secret)
