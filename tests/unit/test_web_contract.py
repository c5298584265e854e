"""The API against its own OpenAPI document (issue 13): schemathesis generates requests for
every operation, authenticated as an admin's token, on a ledger holding studies; no answer may
be a 5xx, and every answer must match the document (status code, content type, schema)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from cxr_node.jobs import Priority
from cxr_node.ledger import Ledger
from cxr_node.settings import Settings
from cxr_node.spool import Spool
from cxr_node.uploads import Uploads
from cxr_node.web import credentials
from cxr_node.web.app import create_app
from tests.unit._studies import seed_study

TOKEN = credentials.new_token()
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]
"""What the issue asks: no 5xx, every answer as documented. Not included: schemathesis's
"positive data acceptance", which expects every request the schema allows to succeed; the
schema cannot say everything (an AE title's host must be a real IP network, a study must
exist), and such requests get a documented 4xx problem document."""


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> object:
    folder = tmp_path_factory.mktemp("contract")
    ledger = Ledger(f"sqlite:///{folder / 'ledger.sqlite'}")
    ledger.add_token("contract", TOKEN.token_id, TOKEN.secret_hash, "admin")
    for n, priority in enumerate((Priority.CRITICAL, Priority.ROUTINE, None)):
        seed_study(ledger, f"1.2.3.{n}", priority=priority, destinations=["pacs"])
    settings_ = Settings(data_dir=folder, destinations=["PACS@127.0.0.1:104"])
    app = create_app(settings_, ledger)
    app.state.queue = _AnsweringQueue(Uploads(Spool(settings_.spool_path)))
    return schemathesis.openapi.from_asgi("/api/openapi.json", app)


class _AnsweringQueue:
    """Stands in for the analysis worker of uploads (the real one answers in
    tests/integration/test_web_serve.py): answers at once, so that a generated ``wait`` never
    holds the test; every other answer the contract allows is generated anyway."""

    def __init__(self, uploads: Uploads) -> None:
        self._uploads = uploads

    def submit_upload(self, upload_id: str) -> bool:
        self._uploads.write_result(
            upload_id, {"analysed": False, "reason_code": "UNDECODABLE", "reason": "test"}
        )
        return True


def test_every_operation_answers_as_documented(api_schema: object) -> None:
    """Each operation in turn (schemathesis' pytest plugin does not run on this pytest)."""
    from hypothesis import given

    operations = [result.ok() for result in api_schema.get_all_operations()]  # type: ignore[attr-defined]
    assert len(operations) >= 10
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=40,
            deadline=None,
            derandomize=True,  # the same cases every run: CI stays reproducible
            suppress_health_check=list(HealthCheck),
        )
        def answers(case: schemathesis.Case) -> None:
            case.call_and_validate(
                headers={"Authorization": f"Bearer {TOKEN.value}"}, checks=CHECKS
            )

        try:
            answers()
        except Exception as exc:
            raise AssertionError(f"{operation.method.upper()} {operation.path}: {exc}") from exc
