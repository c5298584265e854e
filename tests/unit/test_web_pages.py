"""The pages (issue 13) through FastAPI's TestClient: log in with the form, the worklist in
reading order with the AI and DEMO notices, a study, reprocess, AE titles for admins only, log
out. The browser tests (Chromium) drive the same pages in tests/integration."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cxr_node.jobs import Priority
from cxr_node.ledger import Ledger, ManualClock
from cxr_node.settings import Settings
from cxr_node.web import credentials
from cxr_node.web.app import create_app
from tests.unit._studies import seed_study

PASSWORD = "a long enough password"


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}", clock=ManualClock(3_000_000.0))
    for role in ("viewer", "operator", "admin"):
        opened.add_user(role, role, credentials.hash_password(PASSWORD))
    yield opened
    opened.close()


@pytest.fixture
def client(ledger: Ledger, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(Settings(data_dir=tmp_path), ledger)
    with TestClient(app, base_url="https://testserver", follow_redirects=False) as test_client:
        yield test_client


def log_in(client: TestClient, name: str, next_page: str = "/") -> None:
    form = client.get(f"/login?next={next_page}")
    assert form.status_code == 200
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    answer = client.post(
        "/login",
        data={"name": name, "password": PASSWORD, "csrf_token": token[1], "next": next_page},
    )
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == next_page


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found is not None
    return found[1]


def test_a_page_without_a_session_sends_to_the_login_page_and_back(client: TestClient) -> None:
    answer = client.get("/?priority=critical")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/login?next=%2F%3Fpriority%3Dcritical"


def test_the_login_form_refuses_a_wrong_password_and_a_forged_form(client: TestClient) -> None:
    form = client.get("/login")
    token = csrf_of(form.text)
    wrong = client.post("/login", data={"name": "viewer", "password": "nope", "csrf_token": token})
    assert wrong.status_code == 401 and "Wrong name or password" in wrong.text
    client.cookies.clear()
    forged = client.post(
        "/login", data={"name": "viewer", "password": PASSWORD, "csrf_token": token}
    )
    assert forged.status_code == 403 and "expired" in forged.text


def test_the_worklist_shows_studies_in_reading_order_with_notices(
    client: TestClient, ledger: Ledger
) -> None:
    seed_study(ledger, "1.1", priority=Priority.ROUTINE, score=0.1, patient_name="ROUTINE^ROW")
    seed_study(ledger, "1.2", priority=Priority.CRITICAL, score=0.9, patient_name="CRITICAL^ROW")
    seed_study(ledger, "1.3", priority=Priority.ABNORMAL, score=0.6, patient_name="ABNORMAL^ROW")
    log_in(client, "viewer")
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    text = page.text
    assert "AI-generated - not a diagnosis" in text and "DEMO" in text
    order = [text.index(name) for name in ("CRITICAL, ROW", "ABNORMAL, ROW", "ROUTINE, ROW")]
    assert order == sorted(order)
    assert "CRITICAL" in text  # the band in words, not colour alone
    assert 'href="/admin/sources"' not in text  # a viewer has no admin pages
    rows = client.get("/worklist/rows?priority=critical")
    assert "CRITICAL, ROW" in rows.text and "ROUTINE, ROW" not in rows.text


def test_a_study_page_and_reprocess_for_operators_only(client: TestClient, ledger: Ledger) -> None:
    seed_study(ledger, "2.1", priority=Priority.CRITICAL, score=0.9)
    log_in(client, "viewer")
    page = client.get("/studies/2.1")
    assert page.status_code == 200
    assert "Pneumothorax" in page.text and "DEMO model - not trained" in page.text
    assert "Reprocess" not in page.text
    refused = client.post("/studies/2.1/reprocess", data={"csrf_token": csrf_of(page.text)})
    assert refused.status_code == 403
    client.cookies.clear()
    log_in(client, "operator")
    page = client.get("/studies/2.1")
    assert "Reprocess" in page.text
    forged = client.post("/studies/2.1/reprocess", data={"csrf_token": "forged"})
    assert forged.status_code == 403
    done = client.post("/studies/2.1/reprocess", data={"csrf_token": csrf_of(page.text)})
    assert done.status_code == 303 and done.headers["location"].endswith("?done=reprocess")
    assert "will be analysed again" in client.get(done.headers["location"]).text
    assert client.get("/studies/9.9").status_code == 404


def test_admins_add_and_remove_ae_titles_and_others_cannot(client: TestClient) -> None:
    log_in(client, "operator")
    assert client.get("/admin/sources").status_code == 403
    client.cookies.clear()
    log_in(client, "admin")
    page = client.get("/admin/sources")
    assert page.status_code == 200 and "No known senders" in page.text
    csrf = csrf_of(page.text)
    added = client.post("/admin/sources", data={"ae_title": "CT_ROOM_1", "csrf_token": csrf})
    assert added.status_code == 303
    page = client.get("/admin/sources")
    assert "CT_ROOM_1" in page.text
    removed = client.post("/admin/sources/CT_ROOM_1/remove", data={"csrf_token": csrf})
    assert removed.status_code == 303
    assert "CT_ROOM_1" not in client.get("/admin/sources").text


def test_log_out_ends_the_session(client: TestClient) -> None:
    log_in(client, "viewer")
    page = client.get("/")
    out = client.post("/logout", data={"csrf_token": csrf_of(page.text)})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert client.get("/").status_code == 303


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("DOE^JANE", "DOE, JANE"),
        ("DOE^JANE^Q^DR^JR", "DOE, DR JANE Q JR"),
        ("DOE", "DOE"),
        ("^JANE", "JANE"),
        ("Yamada^Tarou=山田^太郎", "Yamada, Tarou"),
        ("", "-"),
        (None, "-"),
    ],
)
def test_person_names_are_shown_as_people_write_them(value: str | None, shown: str) -> None:
    from cxr_node.web.pages import person_name

    assert person_name(value) == shown


def test_admins_manage_users_and_tokens_in_the_pages(client: TestClient, ledger: Ledger) -> None:
    log_in(client, "admin")
    page = client.get("/admin/users")
    assert page.status_code == 200 and "viewer" in page.text
    csrf = csrf_of(page.text)
    short = client.post(
        "/admin/users",
        data={"name": "dora", "role": "viewer", "password": "short", "csrf_token": csrf},
    )
    assert short.status_code == 422 and "at least" in short.text
    added = client.post(
        "/admin/users",
        data={"name": "dora", "role": "operator", "password": PASSWORD, "csrf_token": csrf},
    )
    assert added.status_code == 200 and "User dora added" in added.text
    made = client.post("/admin/tokens", data={"name": "pacs-bot", "role": "viewer",
                                              "csrf_token": csrf})  # fmt: skip
    token = re.search(r'<code id="new-token">([^<]+)</code>', made.text)
    assert token is not None
    listing = client.get("/admin/users").text
    assert token[1] not in listing  # shown once
    as_bot = {"Authorization": f"Bearer {token[1]}"}
    assert client.get("/api/v1/me", headers=as_bot).json()["name"] == "pacs-bot"
    client.post("/admin/tokens/pacs-bot/revoke", data={"csrf_token": csrf})
    assert client.get("/api/v1/me", headers=as_bot).status_code == 401
    forged = client.post("/admin/users/dora/remove", data={"csrf_token": "forged"})
    assert forged.status_code == 403
    assert client.post("/admin/users/admin/remove", data={"csrf_token": csrf}).status_code == 422
    actions = [a.action for a in ledger.audit_trail()]
    assert {"add_user", "add_token", "revoke_token"} <= set(actions)

    other = TestClient(client.app, base_url="https://testserver", follow_redirects=False)
    log_in(other, "dora")  # the new user logs in with the password the admin set
    assert other.get("/admin/users").status_code == 403  # an operator
    assert client.post("/admin/users/dora/remove", data={"csrf_token": csrf}).status_code == 200
    assert other.get("/").status_code == 303  # their session ended with them


def test_the_models_page_marks_demo_bundles(
    tmp_path: Path, ledger: Ledger, models_dir: Path
) -> None:
    app = create_app(Settings(data_dir=tmp_path, models_dir=models_dir), ledger)
    with TestClient(app, base_url="https://testserver", follow_redirects=False) as test_client:
        log_in(test_client, "viewer")
        page = test_client.get("/models")
    assert page.status_code == 200
    assert page.text.count("DEMO - not trained, no clinical meaning") == 2


def test_shadow_studies_carry_a_shadow_badge_on_the_worklist_and_the_study_page(
    client: TestClient, ledger: Ledger
) -> None:
    seed_study(ledger, "4.1", priority=Priority.CRITICAL, score=0.9, patient_name="SHADOW^ROW",
               shadow=True)  # fmt: skip
    seed_study(ledger, "4.2", priority=Priority.ROUTINE, score=0.1, patient_name="PLAIN^ROW")
    log_in(client, "viewer")
    badge = '<span class="badge shadow" title="shadow: not sent to PACS">SHADOW</span>'
    rows = client.get("/worklist/rows").text
    shadow_row = next(row for row in rows.split("</tr>") if "SHADOW, ROW" in row)
    plain_row = next(row for row in rows.split("</tr>") if "PLAIN, ROW" in row)
    assert badge in shadow_row and badge not in plain_row
    assert badge in client.get("/").text
    page = client.get("/studies/4.1").text
    assert badge in page and "results not sent to PACS" in page
    assert "badge shadow" not in client.get("/studies/4.2").text
