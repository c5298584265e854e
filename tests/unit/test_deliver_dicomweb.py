"""STOW-RS delivery (issue 15) against a small HTTP archive of our own, answering as PS3.18
10.5.3 describes (200, 202 or 409 with Referenced and Failed SOP Sequences, 4xx, 5xx), to
check that each answer is read per instance and classified: retry the destination, refuse the
study, or refuse the destination. Orthanc itself is in tests/integration."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom.uid import generate_uid

from cxr_node.destination_kinds import DicomWebDestination
from cxr_node.embedded import write_effective_settings
from cxr_node.settings import Settings
from tests.unit._synthetic import make_dx_chest
from workers.deliver.dicomweb import send_study
from workers.deliver.policy import DeliveryRejected, DestinationUnreachable


class Archive:
    content_type = "application/dicom+json"
    redirect_to: str | None = None

    """Answers each STOW-RS POST with ``status`` and a store response naming the instances."""

    def __init__(self) -> None:
        self.status = 200
        self.fail: dict[str, int] = {}  # SOP Instance UID -> Failure Reason
        self.requests: list[dict[str, str]] = []
        archive = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                archive.requests.append(dict(self.headers))
                uids = [uid for uid in archive.sent if uid.encode() in body]
                answer = archive.answer(uids)
                payload = json.dumps(answer).encode()
                self.send_response(archive.status)
                if archive.redirect_to is not None:
                    self.send_header("Location", archive.redirect_to)
                self.send_header("Content-Type", archive.content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_args: Any) -> None:
                pass

        self.sent: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"

    def answer(self, uids: list[str]) -> dict[str, Any]:
        def item(uid: str, reason: int | None = None) -> dict[str, Any]:
            entry: dict[str, Any] = {"00081155": {"vr": "UI", "Value": [uid]}}
            if reason is not None:
                entry["00081197"] = {"vr": "US", "Value": [reason]}
            return entry

        stored = [item(uid) for uid in uids if uid not in self.fail]
        failed = [item(uid, self.fail[uid]) for uid in uids if uid in self.fail]
        answer: dict[str, Any] = {"00081199": {"vr": "SQ", "Value": stored}}
        if failed:
            answer["00081198"] = {"vr": "SQ", "Value": failed}
        return answer


@pytest.fixture
def archive() -> Iterator[Archive]:
    server = Archive()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def results(tmp_path: Path, archive: Archive) -> dict[Path, str]:
    files = {}
    for name in ("sr", "sc"):
        dataset = make_dx_chest(32, 32)
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = tmp_path / f"{name}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        files[path] = str(dataset.SOPInstanceUID)
    archive.sent = list(files.values())
    return files


def _destination(url: str, **extra: object) -> DicomWebDestination:
    return DicomWebDestination.model_validate(
        {"kind": "dicomweb", "name": "archive", "url": url, "timeout_seconds": 5} | extra
    )


def test_every_stored_instance_is_recorded_and_credentials_are_sent(
    archive: Archive, results: dict[Path, str]
) -> None:
    stored: list[str] = []
    destination = _destination(archive.url, token="t0ken")
    assert send_study(destination, results, stored.append) == 2
    assert sorted(stored) == sorted(results.values())
    (request,) = archive.requests
    assert request["Authorization"] == "Bearer t0ken"
    assert request["Content-Type"].startswith("multipart/related")


def test_failed_instances_are_reported_one_by_one(
    archive: Archive, results: dict[Path, str]
) -> None:
    sr, sc = results.values()
    archive.status, archive.fail = 202, {sc: 0xC000}
    stored: list[str] = []
    with pytest.raises(DeliveryRejected, match=r"1 instance\(s\) failed .*0xC000.*1 stored"):
        send_study(_destination(archive.url), results, stored.append)
    assert stored == [sr]  # kept: a retry of this delivery sends only the other
    archive.status, archive.fail = 409, {sr: 0xA700, sc: 0xA700}
    with pytest.raises(DestinationUnreachable, match="HTTP 409"):  # out of resources: later
        send_study(_destination(archive.url), results, stored.append)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (503, DestinationUnreachable),
        (500, DestinationUnreachable),
        (429, DestinationUnreachable),
        (408, DestinationUnreachable),
        (400, DeliveryRejected),
        (415, DeliveryRejected),
        (401, DestinationUnreachable),  # credentials to fix: the backlog waits for them
        (403, DeliveryRejected),
    ],
)
def test_http_failures_are_classified(
    archive: Archive, results: dict[Path, str], status: int, outcome: type[Exception]
) -> None:
    archive.status = status
    archive.sent = []  # an answer that names no instance
    with pytest.raises(outcome, match=f"HTTP {status}"):
        send_study(_destination(archive.url), results, lambda _uid: None)


def test_a_partial_store_is_read_whatever_parameters_the_content_type_has(
    archive: Archive, results: dict[Path, str]
) -> None:
    sr, sc = results.values()
    archive.status, archive.fail = 202, {sc: 0xC000}
    archive.content_type = "application/dicom+json; charset=utf-8"
    stored: list[str] = []
    with pytest.raises(DeliveryRejected, match="0xC000"):
        send_study(_destination(archive.url), results, stored.append)
    assert stored == [sr]


def test_a_redirect_or_a_missing_result_file_is_not_taken_for_success(
    archive: Archive, results: dict[Path, str]
) -> None:
    archive.status, archive.redirect_to = 301, "https://elsewhere/dicom-web/studies"
    with pytest.raises(DestinationUnreachable, match="HTTP 301: redirected"):
        send_study(_destination(archive.url), results, lambda _uid: None)
    next(iter(results)).unlink()
    with pytest.raises(DeliveryRejected, match="missing"):
        send_study(_destination(archive.url), results, lambda _uid: None)


def test_an_archive_that_is_down_is_retried_later(results: dict[Path, str]) -> None:
    from tests.conftest import free_port

    down = _destination(f"http://127.0.0.1:{free_port()}/dicom-web")
    with pytest.raises(DestinationUnreachable, match="ConnectionError"):
        send_study(down, results, lambda _uid: None)


def test_worker_processes_get_the_destination_credentials(tmp_path: Path) -> None:
    destination = _destination("http://pacs/dicom-web", username="cxr", password="s3cret")
    settings = Settings(data_dir=tmp_path, destinations=[destination])
    written = yaml.safe_load(write_effective_settings(settings, tmp_path, "delivery").read_text())
    assert written["destinations"][0]["password"] == "s3cret"
    assert "s3cret" not in repr(settings)
