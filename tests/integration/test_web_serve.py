"""The web app as people meet it (issue 13): ``cxr-node serve`` with its web server, the first
admin's password printed once and kept in a file only its owner reads, a study sent with DCMTK
that appears on the worklist and in the API within seconds, ``cxr-node web`` alone on the same
ledger, and made-up patient data viewed in the pages and the API that never reaches the log."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pydicom
import pytest

from tests.conftest import REPO, free_port, node_env, require_tool, wait_for_port, wait_until
from tests.integration.node import NodeProcess, storescu

pytestmark = pytest.mark.integration

CHEST = "dwv/gdcm-CR-MONO1-10-chest.dcm"
CANARIES = {
    "PatientName": "Webcanary^Wilhelmina",
    "PatientID": "WEB-CANARY-0815",
    "AccessionNumber": "ACC-WEBCANARY-9",
}


def _with_canaries(source: Path, folder: Path) -> Path:
    dataset = pydicom.dcmread(source)
    for keyword, value in CANARIES.items():
        setattr(dataset, keyword, value)
    path = folder / "canary.dcm"
    dataset.save_as(path)
    return path


def _studies(client: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    answer = client.get("/api/v1/studies", params=params)
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


@pytest.mark.timeout(600)
def test_serve_with_its_web_app_from_first_start_to_a_study_on_the_worklist(
    tmp_path: Path, models_dir: Path, corpus: Path, nodes: list[NodeProcess]
) -> None:
    require_tool("/usr/bin/storescu")
    http_port = free_port()
    node = NodeProcess(
        tmp_path / "node", models_dir, "--quiet-seconds", "0.5", "--http-port", str(http_port)
    ).start()
    nodes.append(node)
    wait_for_port(http_port, timeout=30)
    printed = re.findall(r"user 'admin' created with password (\S+)", node.log())
    assert len(printed) == 1, node.log()
    password_file = node.data_dir / "initial-admin-password"
    assert password_file.read_text().strip() == printed[0]
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    base = f"http://127.0.0.1:{http_port}"
    with httpx.Client(base_url=base, timeout=10) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert client.get("/api/v1/studies").status_code == 401
        login = client.post("/api/v1/session", json={"name": "admin", "password": printed[0]})
        assert login.status_code == 200, login.text
        sent = storescu(node.port, _with_canaries(corpus / CHEST, tmp_path))
        assert sent.returncode == 0, sent.stderr
        assert wait_until(lambda: len(_studies(client)) == 1, timeout=15), node.log()
        assert wait_until(
            lambda: _studies(client)[0]["state"] in {"analysed", "delivered"}, timeout=120
        ), node.log()
        (study,) = _studies(client, q="webcanary")
        assert study["patient"]["patient_name"] == CANARIES["PatientName"]
        assert "DEMO model - not trained, no clinical meaning" in study["notices"]
        detail = client.get(f"/api/v1/studies/{study['study_uid']}").json()
        assert detail["findings"] and detail["priority"] in {"routine", "abnormal", "critical"}
        (image,) = detail["images"]
        assert image["picture"] and image["heatmaps"], image  # the worker kept its pictures
        base = f"/api/v1/studies/{study['study_uid']}/images/{image['sop_instance_uid']}"
        picture = client.get(f"{base}/image.png")
        assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")
        overlay = client.get(f"{base}/heatmap.png", params={"finding": image["heatmaps"][-1]})
        assert overlay.status_code == 200 and overlay.content.startswith(b"\x89PNG")
        # a file analysed by the embedded worker without becoming a study (the Open API)
        analysed = client.post(
            "/api/v1/analyze",
            files={"file": ("chest.dcm", (corpus / CHEST).read_bytes())},
            headers={"X-CSRF-Token": login.json()["csrf_token"]},
            params={"wait": 120},
        )
        assert analysed.status_code == 200, analysed.text
        upload = analysed.json()
        assert upload["status"] == "done" and upload["findings"] and upload["heatmap_urls"]
        assert "DEMO model - not trained, no clinical meaning" in upload["notices"]
        assert client.get(upload["image_url"]).content.startswith(b"\x89PNG")
        first_heatmap = next(iter(upload["heatmap_urls"].values()))
        assert client.get(first_heatmap).content.startswith(b"\x89PNG")
        assert len(_studies(client)) == 1  # still one study on the worklist
        page = client.get("/")
        assert page.status_code == 200 and "Webcanary, Wilhelmina" in page.text
        assert client.get(f"/studies/{study['study_uid']}").status_code == 200

    # `cxr-node web` alone, on the same ledger, with a token made by `cxr-node tokens add`
    env = node_env(models_dir)
    env.pop("CXR_NODE_HTTP_PORT", None)
    made = subprocess.run(
        [sys.executable, "-m", "cxr_node", "tokens", "add", "monitor", "--role", "viewer",
         "--data-dir", str(node.data_dir)],
        cwd=REPO, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    token = made.stdout.strip().splitlines()[-1]
    alone_port = free_port()
    alone = NodeProcess(node.data_dir, models_dir, "--http-port", str(alone_port), command="web")
    alone.log_path = tmp_path / "web.log"
    alone.start()
    nodes.append(alone)
    wait_for_port(alone_port, timeout=30)
    with httpx.Client(
        base_url=f"http://127.0.0.1:{alone_port}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    ) as client:
        (seen,) = _studies(client)
        assert seen["study_uid"] == study["study_uid"]
        assert client.post(f"/api/v1/studies/{seen['study_uid']}/reprocess").status_code == 403
    assert "created with password" not in alone.log()  # users exist: no second admin

    for log in (node.log(), alone.log()):
        for value in CANARIES.values():
            assert value not in log and value.split("^")[0] not in log
        assert printed[0] not in log.replace(f"password {printed[0]}", "")  # printed once
        assert token.split("_", 2)[2] not in log


@pytest.mark.timeout(300)
def test_the_web_app_over_https_sets_a_secure_cookie(
    tmp_path: Path, models_dir: Path, nodes: list[NodeProcess]
) -> None:
    import ssl

    from tests.pki import make_pki

    pki = make_pki(tmp_path / "pki")
    data = tmp_path / "node"
    data.mkdir()
    port = free_port()
    config = tmp_path / "web.yaml"
    config.write_text(
        f"http_tls: {{cert_file: {pki.server_cert}, key_file: {pki.server_key}}}\n"
        "http_bind_address: 127.0.0.1\n"
    )
    web = NodeProcess(
        data, models_dir, "--config", str(config), "--http-port", str(port), command="web"
    ).start()
    nodes.append(web)
    wait_for_port(port, timeout=30)
    password = (data / "initial-admin-password").read_text().strip()
    trusted = ssl.create_default_context(cafile=str(pki.ca_cert))
    with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=trusted, timeout=10) as client:
        answer = client.post("/api/v1/session", json={"name": "admin", "password": password})
        assert answer.status_code == 200, answer.text
        cookie = answer.headers["set-cookie"].lower()
        assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie
        assert client.get("/api/v1/me").json()["name"] == "admin"
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)  # no plain HTTP beside it
