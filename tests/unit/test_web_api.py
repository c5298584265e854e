"""The REST API (issue 13) against the real app and ledger (FastAPI's TestClient): sessions and
tokens, CSRF, slowed-down logins, problem documents, the worklist and a study, reprocessing,
sources and destinations, the audit trail, and the whole matrix of roles x endpoints."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cxr_node.destinations import Destination
from cxr_node.jobs import Priority
from cxr_node.ledger import Ledger, ManualClock
from cxr_node.settings import Settings
from cxr_node.web import credentials
from cxr_node.web.app import create_app
from cxr_node.web.auth import CSRF_HEADER, SESSION_COOKIE, LoginThrottle
from cxr_node.web.schemas import AI_NOTICE, DEMO_NOTICE
from tests.unit._studies import seed_study

PASSWORD = "a long enough password"
PATIENT = "CANARY^PATIENT"
STUDY = "1.2.826.0.1.3680043.10.99.1"


@dataclass
class Node:
    client: TestClient
    ledger: Ledger
    clock: ManualClock
    tokens: dict[str, str]
    throttle_clock: list[float]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    clock = ManualClock(2_000_000.0)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}", clock=clock)
    settings = Settings(
        data_dir=tmp_path,
        destinations=[Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=104)],
    )
    app = create_app(settings, ledger, ageing_seconds=3600.0, session_seconds=600.0)
    throttle_clock = [0.0]
    app.state.web.throttle = LoginThrottle(clock=lambda: throttle_clock[0])
    tokens = {}
    for role in ("viewer", "operator", "admin"):
        ledger.add_user(role, role, credentials.hash_password(PASSWORD))
        made = credentials.new_token()
        ledger.add_token(f"{role}-bot", made.token_id, made.secret_hash, role)
        tokens[role] = made.value
    revoked = credentials.new_token()
    ledger.add_token("old-bot", revoked.token_id, revoked.secret_hash, "admin")
    ledger.revoke_token("old-bot")
    tokens["revoked"] = revoked.value
    with TestClient(app, base_url="https://testserver") as client:
        yield Node(client, ledger, clock, tokens, throttle_clock)
    ledger.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def log_in(node: Node, name: str, password: str = PASSWORD) -> dict[str, Any]:
    answer = node.client.post("/api/v1/session", json={"name": name, "password": password})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def assert_problem(answer: Any, status: int, kind: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    body = dict(answer.json())
    assert body["type"] == f"urn:cxr-node:problem:{kind}" and body["status"] == status
    assert body["title"]
    return body


# --- sessions ---------------------------------------------------------------------------------


def test_a_session_cookie_is_httponly_strict_secure_and_expires(node: Node) -> None:
    answer = node.client.post("/api/v1/session", json={"name": "viewer", "password": PASSWORD})
    assert answer.status_code == 200
    cookie = answer.headers["set-cookie"]
    for flag in ("HttpOnly", "SameSite=strict", "Secure", "Max-Age=600", "Path=/"):
        assert flag.lower() in cookie.lower(), cookie
    me = node.client.get("/api/v1/me").json()
    assert me == {
        "name": "viewer",
        "kind": "user",
        "role": "viewer",
        "csrf_token": answer.json()["csrf_token"],
    }
    node.clock.advance(601)
    assert_problem(node.client.get("/api/v1/me"), 401, "session-expired")


def test_log_out_ends_the_session(node: Node) -> None:
    log_in(node, "viewer")
    stolen = node.client.cookies.get(SESSION_COOKIE)
    assert node.client.delete("/api/v1/session").status_code == 204
    assert_problem(node.client.get("/api/v1/me"), 401, "not-authenticated")
    node.client.cookies.set(SESSION_COOKIE, stolen or "")
    assert_problem(node.client.get("/api/v1/me"), 401, "session-expired")  # gone server-side


def test_a_wrong_password_and_an_unknown_user_look_the_same(node: Node) -> None:
    for name in ("viewer", "nobody"):
        answer = node.client.post("/api/v1/session", json={"name": name, "password": "wrong!"})
        body = assert_problem(answer, 401, "login-failed")
        assert body["detail"] == "wrong name or password"


def test_repeated_failed_logins_are_slowed_down(node: Node) -> None:
    def attempt(password: str) -> Any:
        return node.client.post("/api/v1/session", json={"name": "admin", "password": password})

    for _ in range(5):
        assert attempt("wrong").status_code == 401
    refused = assert_problem(attempt(PASSWORD), 429, "too-many-logins")  # even the right one
    assert refused["detail"].startswith("try again in")
    assert attempt(PASSWORD).headers["retry-after"] == "1"
    node.throttle_clock[0] += 1.1
    assert attempt("wrong").status_code == 401  # the sixth failure: the next waits 2 s
    assert attempt(PASSWORD).headers["retry-after"] == "2"
    other = node.client.post("/api/v1/session", json={"name": "viewer", "password": PASSWORD})
    assert other.status_code == 429  # the same client address is slowed down too
    node.throttle_clock[0] += 2.5
    assert attempt(PASSWORD).status_code == 200  # the right password, once the wait is over


def test_a_session_must_send_its_csrf_token_to_change_anything(node: Node) -> None:
    seed_study(node.ledger, STUDY, priority=Priority.ROUTINE)
    session = log_in(node, "operator")
    path = f"/api/v1/studies/{STUDY}/reprocess"
    assert_problem(node.client.post(path), 403, "csrf-failed")
    assert_problem(node.client.post(path, headers={CSRF_HEADER: "guess"}), 403, "csrf-failed")
    answer = node.client.post(path, headers={CSRF_HEADER: session["csrf_token"]})
    assert answer.status_code == 202, answer.text


def test_a_revoked_or_unknown_token_is_refused(node: Node) -> None:
    for token in (node.tokens["revoked"], "cxr_nope_nope", "garbage"):
        answer = node.client.get("/api/v1/me", headers=bearer(token))
        assert_problem(answer, 401, "invalid-token")
        assert "invalid_token" in answer.headers["www-authenticate"]
    answer = node.client.get("/api/v1/me", headers={"Authorization": "Basic abc"})
    assert_problem(answer, 401, "not-authenticated")


# --- studies ----------------------------------------------------------------------------------


def test_the_worklist_comes_in_reading_order_with_patient_data_and_notices(node: Node) -> None:
    seed_study(node.ledger, "1.1", priority=Priority.ROUTINE, score=0.2)
    node.clock.advance(10)
    seed_study(node.ledger, "1.2", priority=Priority.CRITICAL, score=0.8, patient_name=PATIENT)
    node.clock.advance(10)
    seed_study(node.ledger, "1.3", priority=Priority.ABNORMAL, score=0.6, demo=False)
    answer = node.client.get("/api/v1/studies", headers=bearer(node.tokens["viewer"]))
    assert answer.status_code == 200, answer.text
    page = answer.json()
    assert page["total"] == 3
    assert [s["study_uid"] for s in page["items"]] == ["1.2", "1.3", "1.1"]
    critical = page["items"][0]
    assert critical["band"] == "critical" and critical["top_findings"] == ["Pneumothorax"]
    assert critical["patient"]["patient_name"] == PATIENT
    assert critical["notices"] == [AI_NOTICE, DEMO_NOTICE]
    assert page["items"][1]["notices"] == [AI_NOTICE]  # a trained model: no DEMO notice
    assert critical["waiting_seconds"] == 10.0
    filtered = node.client.get(
        "/api/v1/studies",
        params={"priority": ["critical", "abnormal"], "limit": 1, "offset": 1},
        headers=bearer(node.tokens["viewer"]),
    ).json()
    assert filtered["total"] == 2 and [s["study_uid"] for s in filtered["items"]] == ["1.3"]
    found = node.client.get(
        "/api/v1/studies", params={"q": "canary"}, headers=bearer(node.tokens["viewer"])
    ).json()
    assert [s["study_uid"] for s in found["items"]] == ["1.2"]


def test_invalid_parameters_are_named_in_the_problem(node: Node) -> None:
    answer = node.client.get(
        "/api/v1/studies", params={"limit": 0}, headers=bearer(node.tokens["viewer"])
    )
    body = assert_problem(answer, 422, "invalid-request")
    assert body["errors"][0]["field"] == "query.limit"
    huge = node.client.get(  # found by schemathesis: SQLite cannot hold it (was a 500)
        "/api/v1/studies", params={"offset": 2**63}, headers=bearer(node.tokens["viewer"])
    )
    assert assert_problem(huge, 422, "invalid-request")["errors"][0]["field"] == "query.offset"


def test_a_study_in_full_and_its_view_audited_without_patient_data_in_the_log(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seed_study(node.ledger, STUDY, priority=Priority.CRITICAL, score=0.9, patient_name=PATIENT)
    log_in(node, "viewer")
    answer = node.client.get(f"/api/v1/studies/{STUDY}")
    assert answer.status_code == 200, answer.text
    study = answer.json()
    assert study["state"] == "analysed" and study["priority"] == "critical"
    assert [i["sop_instance_uid"] for i in study["images"]] == [f"{STUDY}.1"]
    assert {f["label"]: f["present"] for f in study["findings"]} == {
        "Pneumothorax": True,
        "Effusion": False,
    }
    assert study["findings"][0]["code"] == {
        "value": "36118008",
        "scheme": "SCT",
        "meaning": "Pneumothorax",
    }
    assert sorted(r["kind"] for r in study["results"]) == ["sc", "sr"]
    assert [h["state"] for h in study["history"]][-1] == "analysed"
    assert study["model"] == {"name": "cxr-demo", "version": "0.1", "demo": True}
    trail = node.ledger.audit_trail(STUDY)
    assert [(a.actor, a.action) for a in trail] == [("user:viewer", "view_study")]
    assert_problem(node.client.get("/api/v1/studies/9.9.9"), 404, "not-found")
    assert PATIENT not in caplog.text and "CANARY" not in caplog.text


def test_reprocess_sends_the_study_back_and_a_busy_one_is_a_conflict(node: Node) -> None:
    seed_study(node.ledger, STUDY, priority=Priority.ROUTINE)
    headers = bearer(node.tokens["operator"])
    answer = node.client.post(f"/api/v1/studies/{STUDY}/reprocess", headers=headers)
    assert answer.status_code == 202 and "analysed" in answer.json()["detail"]
    study = node.ledger.study(STUDY)
    assert study is not None and study.state.value in {"received", "queued"}
    node.ledger.mark_queued(STUDY)
    assert node.ledger.claim(STUDY, lease_seconds=60)
    busy = node.client.post(f"/api/v1/studies/{STUDY}/reprocess", headers=headers)
    assert_problem(busy, 409, "study-busy")
    actions = [(a.actor, a.action) for a in node.ledger.audit_trail(STUDY)]
    assert actions == [("token:operator-bot", "reprocess")]


# --- sources and destinations ------------------------------------------------------------------


def test_sources_are_added_listed_and_removed(node: Node) -> None:
    headers = bearer(node.tokens["admin"])
    added = node.client.post(
        "/api/v1/sources",
        json={"ae_title": "MODALITY1", "destinations": ["pacs"]},
        headers=headers,
    )
    assert added.status_code == 201, added.text
    listed = node.client.get("/api/v1/sources", headers=headers).json()
    assert listed == [
        {"ae_title": "MODALITY1", "host": None, "destinations": ["pacs"], "origin": "ledger"}
    ]
    unknown = node.client.post(
        "/api/v1/sources", json={"ae_title": "X", "destinations": ["nowhere"]}, headers=headers
    )
    assert assert_problem(unknown, 422, "invalid-request")["errors"][0]["field"] == (
        "body.destinations"
    )
    bad = node.client.post("/api/v1/sources", json={"ae_title": "A\\B"}, headers=headers)
    assert_problem(bad, 422, "invalid-request")
    assert node.client.delete("/api/v1/sources/MODALITY1", headers=headers).status_code == 204
    gone = node.client.delete("/api/v1/sources/MODALITY1", headers=headers)
    assert_problem(gone, 404, "not-found")


def test_destinations_show_their_state(node: Node) -> None:
    seed_study(node.ledger, STUDY, priority=Priority.ROUTINE, destinations=["pacs"])
    assert node.ledger.acquire_destination("pacs", 60) is not None
    node.ledger.note_destination_failure("pacs")
    node.ledger.defer_destination("pacs", node.clock.now() + 30, "connection refused")
    answer = node.client.get("/api/v1/destinations", headers=bearer(node.tokens["viewer"]))
    (pacs,) = answer.json()
    assert pacs["name"] == "pacs" and pacs["address"] == "PACS@127.0.0.1:104"
    assert pacs["up"] is False and pacs["failures"] == 1 and pacs["pending"] == 1
    assert pacs["last_error"] == "connection refused"


def test_hl7_and_dicomweb_destinations_are_shown_like_dicom_ones(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {
            "data_dir": tmp_path,
            "destinations": [
                "PACS@127.0.0.1:104",
                {"kind": "hl7", "name": "ris", "host": "ris.local", "port": 2575},
                {"kind": "dicomweb", "name": "archive", "url": "https://vna.local/dicom-web",
                 "username": "cxr", "password": "s3cret"},
            ],
        }
    )  # fmt: skip
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    seed_study(ledger, STUDY, priority=Priority.ROUTINE, destinations=["ris", "archive"])
    made = credentials.new_token()
    ledger.add_token("bot", made.token_id, made.secret_hash, "viewer")
    with TestClient(create_app(settings, ledger)) as client:
        listed = client.get("/api/v1/destinations", headers=bearer(made.value)).json()
        study = client.get(f"/api/v1/studies/{STUDY}", headers=bearer(made.value)).json()
    ledger.close()
    assert [(d["name"], d["kind"], d["address"]) for d in listed] == [
        ("PACS", "dicom", "PACS@127.0.0.1:104"),
        ("ris", "hl7", "ris.local:2575"),
        ("archive", "dicomweb", "https://vna.local/dicom-web"),
    ]
    assert {d["name"]: d["pending"] for d in listed} == {"PACS": 0, "ris": 1, "archive": 1}
    assert "s3cret" not in json.dumps(listed)
    assert {d["destination"] for d in study["deliveries"]} == {"ris", "archive"}


# --- the role matrix --------------------------------------------------------------------------

ENDPOINTS: list[tuple[str, str, str, dict[str, Any] | None, int]] = [
    # method, path, least role, JSON body, status when allowed
    ("GET", "/api/v1/me", "viewer", None, 200),
    ("GET", "/api/v1/studies", "viewer", None, 200),
    ("GET", f"/api/v1/studies/{STUDY}", "viewer", None, 200),
    ("GET", "/api/v1/destinations", "viewer", None, 200),
    ("GET", "/api/v1/models", "viewer", None, 200),
    ("GET", "/metrics", "viewer", None, 200),
    ("GET", f"/api/v1/studies/{STUDY}/images/{STUDY}.1/image.png", "viewer", None, 404),
    ("GET", f"/api/v1/studies/{STUDY}/images/{STUDY}.1/heatmap.png", "viewer", None, 404),
    ("GET", "/api/v1/analyses/0123abcd", "operator", None, 404),
    ("POST", f"/api/v1/studies/{STUDY}/deliveries/pacs/retry", "operator", None, 202),
    ("POST", f"/api/v1/studies/{STUDY}/reprocess", "operator", None, 202),
    ("POST", "/api/v1/analyze", "operator", None, 422),  # allowed: then the missing file
    ("GET", "/api/v1/sources", "admin", None, 200),
    ("POST", "/api/v1/sources", "admin", {"ae_title": "MATRIX"}, 201),
    ("DELETE", "/api/v1/sources/MATRIX", "admin", None, 204),
]
ROLES = ["viewer", "operator", "admin"]
PAGES: list[tuple[str, str, str, dict[str, Any] | None, int]] = [
    # the pages: without valid credentials they send to the login page (303)
    ("GET", "/", "viewer", None, 200),
    ("GET", "/worklist/rows", "viewer", None, 200),
    ("GET", f"/studies/{STUDY}", "viewer", None, 200),
    ("GET", "/destinations", "viewer", None, 200),
    ("GET", "/models", "viewer", None, 200),
    ("POST", f"/studies/{STUDY}/reprocess", "operator", None, 303),
    ("GET", "/admin/sources", "admin", None, 200),
    ("GET", "/admin/users", "admin", None, 200),
]


@pytest.mark.parametrize("credential", ["none", "revoked", "expired", *ROLES, *(
    f"session-{role}" for role in ROLES
)])  # fmt: skip
def test_every_endpoint_checks_every_kind_of_caller(node: Node, credential: str) -> None:
    seed_study(node.ledger, STUDY, priority=Priority.ROUTINE, destinations=["pacs"])
    headers: dict[str, str] = {}
    role = None
    if credential in ROLES:
        headers, role = bearer(node.tokens[credential]), credential
    elif credential == "revoked":
        headers = bearer(node.tokens["revoked"])
    elif credential.startswith("session-") or credential == "expired":
        role = credential.removeprefix("session-") if credential != "expired" else "admin"
        headers = {CSRF_HEADER: log_in(node, role)["csrf_token"]}
        if credential == "expired":
            node.clock.advance(601)
            role = None
    for method, path, least, body, allowed in ENDPOINTS + PAGES:
        if method == "DELETE" and role is not None and ROLES.index(role) >= 2:
            node.ledger.put_source(_matrix_source())
        page = (method, path, least, body, allowed) in PAGES
        data = {"csrf_token": headers.get(CSRF_HEADER, "")} if page and method == "POST" else None
        answer = node.client.request(
            method, path, json=body, data=data, headers=headers, follow_redirects=False
        )
        if role is None:
            expected = 303 if page else 401  # a page sends to the login page
            assert answer.status_code == expected, (credential, method, path, answer.text)
        elif ROLES.index(role) < ROLES.index(least) and page:
            assert answer.status_code == 403 and "needs the" in answer.text, (credential, path)
        elif ROLES.index(role) < ROLES.index(least):
            assert_problem(answer, 403, "forbidden")
        else:
            assert answer.status_code == allowed, (credential, method, path, answer.text)
        allowed_here = role is not None and ROLES.index(role) >= ROLES.index(least)
        if method == "POST" and "reprocess" in path and allowed_here:
            _settle(node)


def _matrix_source() -> Any:
    from cxr_node.destinations import SourceRule

    return SourceRule(ae_title="MATRIX")


def _settle(node: Node) -> None:
    """Bring a reprocessed study back to ANALYSED so that the next caller may reprocess it."""
    seed_again = node.ledger.study(STUDY)
    assert seed_again is not None
    node.ledger.mark_queued(STUDY)
    token = node.ledger.claim(STUDY, lease_seconds=60)
    assert node.ledger.record_results(STUDY, [], ["pacs"], token)


def test_the_openapi_document_describes_every_endpoint(node: Node) -> None:
    document = node.client.get("/api/openapi.json").json()
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    for method, path, *_ in ENDPOINTS:
        if not path.startswith("/api/"):
            continue  # /metrics is documented too, but not under the API's paths
        template = (
            path.replace(f"{STUDY}.1", "{sop_instance_uid}")
            .replace("0123abcd", "{upload_id}")
            .replace(STUDY, "{study_uid}")
            .replace("MATRIX", "{ae_title}")
            .replace("/pacs/", "/{destination}/")
        )
        assert method.lower() in paths[template], template
    assert node.client.get("/api/docs").status_code == 200


def test_health_and_readiness(node: Node) -> None:
    assert node.client.get("/healthz").json() == {"status": "ok"}
    ready = node.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_metrics_count_studies_deliveries_and_durations_without_patient_data(
    node: Node,
) -> None:
    from cxr_node.metrics import count_store

    node.clock.advance(1)
    seed_study(node.ledger, "5.1", priority=Priority.CRITICAL, patient_name=PATIENT,
               destinations=["pacs"])  # fmt: skip
    seed_study(node.ledger, "5.2", priority=None)
    count_store(0xC003)
    assert_problem(node.client.get("/metrics"), 401, "not-authenticated")
    answer = node.client.get("/metrics", headers=bearer(node.tokens["viewer"]))
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    text = answer.text
    assert 'cxr_studies{state="analysed"} 1.0' in text
    assert 'cxr_studies{state="received"} 1.0' in text
    assert 'cxr_deliveries{destination="pacs",state="pending"} 1.0' in text
    assert "cxr_analysis_queue_depth 0.0" in text
    assert 'cxr_receipt_to_analysed_seconds_bucket{le="+Inf"} 1.0' in text
    assert "cxr_receipt_to_analysed_seconds_count 1.0" in text
    assert 'cxr_instances_received_total{status="0xC003"}' in text
    assert "cxr_spool_free_bytes" in text
    for private in (PATIENT, "CANARY", "PID-1", "ACC-1", "5.1.1"):
        assert private not in text


def test_an_operator_resends_a_failed_delivery_and_the_study_waits_for_it(node: Node) -> None:
    from cxr_node.ledger import DeliveryState, StudyState

    seed_study(node.ledger, STUDY, priority=Priority.ABNORMAL, destinations=["pacs"])
    opened = node.ledger.deliveries_of(STUDY)["pacs"].created_at
    node.ledger.record_instance_sent(STUDY, "pacs", f"{STUDY}.90", opened_at=opened)
    node.ledger.record_delivery(STUDY, "pacs", DeliveryState.FAILED, "0xA900", opened_at=opened)
    failed = node.ledger.study(STUDY)
    assert failed is not None and failed.state is StudyState.FAILED
    headers = bearer(node.tokens["operator"])
    node.clock.advance(30)
    answer = node.client.post(f"/api/v1/studies/{STUDY}/deliveries/pacs/retry", headers=headers)
    assert answer.status_code == 202, answer.text
    study = node.ledger.study(STUDY)
    assert study is not None and study.state is StudyState.ANALYSED
    assert study.reason_code is None and study.analysed_at == failed.analysed_at
    delivery = node.ledger.deliveries_of(STUDY)["pacs"]
    assert delivery.state is DeliveryState.PENDING and delivery.sent_instances == frozenset()
    assert [d.study_key for d in node.ledger.due_deliveries("pacs")] == [STUDY]
    nowhere = node.client.post(f"/api/v1/studies/{STUDY}/deliveries/archive/retry", headers=headers)
    assert_problem(nowhere, 409, "cannot-resend")
    node.ledger.reprocess(STUDY)
    busy = node.client.post(f"/api/v1/studies/{STUDY}/deliveries/pacs/retry", headers=headers)
    assert "being analysed" in assert_problem(busy, 409, "cannot-resend")["detail"]
    actions = [a.action for a in node.ledger.audit_trail(STUDY)]
    assert actions == ["resend"]


def test_models_are_listed_with_their_demo_flag(tmp_path: Path, models_dir: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    made = credentials.new_token()
    ledger.add_token("bot", made.token_id, made.secret_hash, "viewer")
    app = create_app(Settings(data_dir=tmp_path, models_dir=models_dir), ledger)
    with TestClient(app) as client:
        models = client.get("/api/v1/models", headers=bearer(made.value)).json()
    ledger.close()
    assert len(models) == 2 and all(m["demo"] for m in models)
    assert all("Pneumothorax" in m["labels"] for m in models)


def test_models_show_the_calibrated_ensemble_configuration(
    tmp_path: Path, models_dir: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(models_dir, models)
    names = sorted(p.name for p in models.iterdir())
    (models / "ensemble.json").write_text(
        json.dumps(
            {
                "version": "3",
                "members": [
                    {"bundle": names[0], "weight": 0.7},
                    {"bundle": names[1], "weight": 0.3},
                ],
                "thresholds": {"Pneumothorax": 0.42},
            }
        )
    )
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    made = credentials.new_token()
    ledger.add_token("bot", made.token_id, made.secret_hash, "viewer")
    app = create_app(Settings(data_dir=tmp_path, models_dir=models), ledger)
    with TestClient(app) as client:
        listed = client.get("/api/v1/models", headers=bearer(made.value)).json()
    ledger.close()
    weights = {m["name"]: m["ensemble_weight"] for m in listed}
    assert weights == {names[0]: 0.7, names[1]: 0.3}
    assert all(m["ensemble_version"] == "3" for m in listed)
    assert all(m["ensemble_thresholds"] == {"Pneumothorax": 0.42} for m in listed)
    assert all(m["thresholds"]["Pneumothorax"] == 0.5 for m in listed)


def test_the_web_app_never_imports_torch(tmp_path: Path, models_dir: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    script = f"""
import sys
from fastapi.testclient import TestClient
from cxr_node.ledger import Ledger
from cxr_node.settings import Settings
from cxr_node.web import credentials
from cxr_node.web.server import build_app
ledger = Ledger("sqlite:///{tmp_path / "l.sqlite"}")
made = credentials.new_token()
ledger.add_token("bot", made.token_id, made.secret_hash, "viewer")
app = build_app(Settings(data_dir="{tmp_path}", models_dir="{models_dir}"), ledger)
with TestClient(app) as client:
    for path in ("/api/v1/models", "/api/v1/studies", "/metrics", "/"):
        client.get(path, headers={{"Authorization": "Bearer " + made.value}})
assert "torch" not in sys.modules, "the web app imported torch"
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_pictures_of_an_image_and_its_heatmaps(node: Node) -> None:
    import json

    seed_study(node.ledger, STUDY, priority=Priority.CRITICAL, score=0.9)
    sop = f"{STUDY}.1"
    spool = node.client.app.state.web.settings.spool_path  # type: ignore[attr-defined]
    folder = spool / STUDY / "previews" / sop
    folder.mkdir(parents=True)
    (folder / "image.png").write_bytes(b"\x89PNG image")
    (folder / "heatmap-pneumothorax.png").write_bytes(b"\x89PNG pneumothorax")
    (folder / "heatmap-effusion.png").write_bytes(b"\x89PNG effusion")
    (folder / "geometry.json").write_text(json.dumps({"rows": 2048, "columns": 2500}))
    headers = bearer(node.tokens["viewer"])
    detail = node.client.get(f"/api/v1/studies/{STUDY}", headers=headers).json()
    (image,) = detail["images"]
    assert image["picture"] is True and (image["rows"], image["columns"]) == (2048, 2500)
    assert image["heatmaps"] == ["Pneumothorax", "Effusion"]
    base = f"/api/v1/studies/{STUDY}/images/{sop}"
    picture = node.client.get(f"{base}/image.png", headers=headers)
    assert picture.status_code == 200 and picture.content == b"\x89PNG image"
    assert picture.headers["content-type"] == "image/png"
    assert picture.headers["cache-control"] == "private, max-age=300"
    assert "etag" in picture.headers
    chosen = node.client.get(f"{base}/heatmap.png?finding=Effusion", headers=headers)
    assert chosen.content == b"\x89PNG effusion"
    first = node.client.get(f"{base}/heatmap.png", headers=headers)
    assert first.status_code == 200
    assert_problem(
        node.client.get(f"{base}/heatmap.png?finding=Atelectasis", headers=headers),
        404,
        "not-found",
    )
    assert_problem(
        node.client.get(f"/api/v1/studies/{STUDY}/images/9.9/image.png", headers=headers),
        404,
        "not-found",
    )
    escape = node.client.get(f"{base}/heatmap.png?finding=../../../ledger", headers=headers)
    assert escape.status_code == 404  # the label is reduced to a slug: no path escapes
    assert node.client.get(f"{base}/image.png").status_code == 401


class _QueueThatNobodyServes:
    """No worker has taken the job yet (the real path is in tests/integration)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def submit_upload(self, upload_id: str) -> bool:
        self.sent.append(upload_id)
        return True


def test_an_upload_is_kept_queued_and_answered_later(node: Node) -> None:
    from cxr_node.spool import Spool
    from cxr_node.uploads import Uploads

    queue = _QueueThatNobodyServes()
    app = node.client.app
    app.state.queue = queue  # type: ignore[attr-defined]
    headers = bearer(node.tokens["operator"])
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    pending = node.client.post(
        "/api/v1/analyze", params={"wait": 0}, files={"file": ("x.png", png)}, headers=headers
    )
    assert pending.status_code == 202, pending.text
    upload_id = pending.json()["id"]
    assert queue.sent == [upload_id]
    assert pending.headers["location"] == f"/api/v1/analyses/{upload_id}"
    assert node.client.get(f"/api/v1/analyses/{upload_id}", headers=headers).status_code == 202
    uploads = Uploads(Spool(app.state.web.settings.spool_path))  # type: ignore[attr-defined]
    uploads.write_result(upload_id, {"analysed": False, "reason_code": "CONSTANT_IMAGE",
                                     "reason": "the image is one value"})  # fmt: skip
    refused = node.client.get(f"/api/v1/analyses/{upload_id}", headers=headers)
    assert "CONSTANT_IMAGE" in assert_problem(refused, 422, "not-analysable")["detail"]
    assert [a.action for a in node.ledger.audit_trail()][:1] == ["analyze_upload"]
    assert node.ledger.study(upload_id) is None  # not a study


def test_uploads_that_cannot_be_analysed_are_refused_with_a_reason(node: Node) -> None:
    node.client.app.state.queue = _QueueThatNobodyServes()  # type: ignore[attr-defined]
    headers = bearer(node.tokens["operator"])
    text = node.client.post(
        "/api/v1/analyze", files={"file": ("notes.txt", b"hello")}, headers=headers
    )
    assert_problem(text, 415, "unsupported-media")
    empty = node.client.post("/api/v1/analyze", files={"file": ("x.dcm", b"")}, headers=headers)
    assert_problem(empty, 422, "invalid-request")
    assert node.client.post("/api/v1/analyze", headers=headers).status_code == 422  # no file
    viewer = node.client.post(
        "/api/v1/analyze",
        files={"file": ("x.png", b"\x89PNG")},
        headers=bearer(node.tokens["viewer"]),
    )
    assert_problem(viewer, 403, "forbidden")
    for unknown in ("0123abcd", "../etc", "ZZZ"):
        answer = node.client.get(f"/api/v1/analyses/{unknown}", headers=headers)
        assert answer.status_code == 404, unknown


def test_old_uploads_are_swept(tmp_path: Path) -> None:
    import os
    import time

    from cxr_node.spool import Spool
    from cxr_node.uploads import Uploads

    uploads = Uploads(Spool(tmp_path / "spool"))
    old, new = uploads.save(b"a", ".png"), uploads.save(b"b", ".dcm")
    stale = time.time() - 2 * 86400
    os.utime(uploads.folder(old), (stale, stale))
    assert uploads.sweep() == 1
    assert not uploads.exists(old) and uploads.exists(new)
    assert uploads.source(new) is not None and uploads.source(new).suffix == ".dcm"  # type: ignore[union-attr]


def test_shadow_studies_are_marked_in_the_worklist_and_the_study(node: Node) -> None:
    seed_study(node.ledger, "6.1", priority=Priority.CRITICAL, score=0.9, shadow=True)
    seed_study(node.ledger, "6.2", priority=Priority.ROUTINE, score=0.1)
    answer = node.client.get("/api/v1/studies", headers=bearer(node.tokens["viewer"]))
    assert answer.status_code == 200, answer.text
    shadow = {s["study_uid"]: s["shadow"] for s in answer.json()["items"]}
    assert shadow == {"6.1": True, "6.2": False}
    study = node.client.get("/api/v1/studies/6.1", headers=bearer(node.tokens["viewer"]))
    assert study.status_code == 200 and study.json()["shadow"] is True
    assert study.json()["priority"] == "critical"  # analysed and recorded like any other


def test_metrics_show_findings_and_scores_of_the_last_seven_days(node: Node) -> None:
    seed_study(node.ledger, "7.0", priority=Priority.CRITICAL, score=0.95)  # 8 days before
    node.clock.advance(8 * 86400)
    seed_study(node.ledger, "7.1", priority=Priority.CRITICAL, score=0.8, patient_name=PATIENT)
    seed_study(node.ledger, "7.2", priority=Priority.ROUTINE, score=0.2)
    seed_study(node.ledger, "7.3", priority=Priority.ROUTINE, score=0.3)
    seed_study(node.ledger, "7.4", priority=Priority.ABNORMAL, score=0.7, shadow=True)
    seed_study(node.ledger, "7.5", priority=None)  # not analysed: not counted
    answer = node.client.get("/metrics", headers=bearer(node.tokens["viewer"]))
    assert answer.status_code == 200
    text = answer.text
    # Pneumothorax is positive at 0.5 and over (tests/unit/_studies.py): 7.1 and 7.4 of four
    assert 'cxr_finding_positive_rate_7d{finding="Pneumothorax"} 0.5' in text
    assert 'cxr_finding_positive_rate_7d{finding="Effusion"} 0.0' in text
    assert 'cxr_finding_studies_7d{finding="Pneumothorax"} 4.0' in text
    assert 'cxr_finding_probability_mean_7d{finding="Pneumothorax"} 0.5' in text
    assert 'cxr_finding_probability_mean_7d{finding="Effusion"} 0.1' in text
    assert 'cxr_abnormality_score_7d_bucket{le="0.2"} 1.0' in text
    assert 'cxr_abnormality_score_7d_bucket{le="0.5"} 2.0' in text
    assert 'cxr_abnormality_score_7d_bucket{le="1"} 4.0' in text
    assert 'cxr_abnormality_score_7d_bucket{le="+Inf"} 4.0' in text
    assert "cxr_abnormality_score_7d_count 4.0" in text
    assert "cxr_abnormality_score_7d_sum 2.0" in text
    for private in (PATIENT, "CANARY", "PID-1", "ACC-1", "7.1.1"):
        assert private not in text
