"""Foundations with real peers: serve with its broker down, workers through a Redis restart,
PostgreSQL as the ledger end to end, and spool retention in a running node."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, StoreSCP, free_port, node_env, require_tool, wait_until
from tests.databases import fresh_postgres_database
from tests.integration.node import NodeProcess, storescu
from tests.integration.sending import echo

pytestmark = pytest.mark.integration

CHEST = "dwv/gdcm-CR-MONO1-10-chest.dcm"


@pytest.fixture
def chest(corpus: Path) -> Path:
    require_tool("/usr/bin/storescu")
    return corpus / CHEST


class Redis:
    """A redis-server of our own on a fixed port, that a test can stop and start again."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        server = shutil.which("redis-server") or require_tool("/usr/bin/redis-server")
        options = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [server, "--port", str(self.port), *options, "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        from tests.conftest import wait_for_port

        wait_for_port(self.port)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Redis]:
    server = Redis(tmp_path)
    yield server
    server.kill()


def cli_json(node: NodeProcess, *args: str) -> object:
    """A ``cxr-node ... --json`` command's answer about a node (its --config, if it has one)."""
    config = list(node.args[:2]) if node.args[:1] == ["--config"] else []
    command = [sys.executable, "-m", "cxr_node", *args, "--json"]
    out = subprocess.run(
        [*command, "--data-dir", str(node.data_dir), *config],
        cwd=REPO,
        env=node_env(node.models),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def node_studies(node: NodeProcess) -> list[dict[str, object]]:
    result = cli_json(node, "studies")
    assert isinstance(result, list)
    return result


def test_serve_answers_with_its_broker_down_and_catches_up_when_it_returns(
    tmp_path: Path,
    models_dir: Path,
    storescp: StoreSCP,
    chest: Path,
    redis: Redis,
    nodes: list[NodeProcess],
) -> None:
    data = tmp_path / "shared"
    serve = NodeProcess(
        data, models_dir, "--destination", storescp.address, "--broker", redis.url
    ).start()  # Redis is not running
    nodes.append(serve)
    assert echo(serve.port), serve.log()
    sent = storescu(serve.port, chest)
    assert (sent.returncode == 0 and "Success" in sent.stderr + sent.stdout) or sent.returncode == 0
    assert wait_until(lambda: node_studies(serve)[0]["state"] == "queued", timeout=30), serve.log()
    assert serve.process is not None and serve.process.poll() is None
    redis.start()
    worker = NodeProcess(
        data, models_dir, "--broker", redis.url, "--destination", storescp.address, command="worker"
    ).start()
    nodes.append(worker)
    assert wait_until(lambda: len(storescp.files()) >= 2, timeout=120), serve.log() + worker.log()
    assert "Traceback" not in serve.log()


def test_workers_live_through_a_redis_restart(
    tmp_path: Path,
    models_dir: Path,
    storescp: StoreSCP,
    chest: Path,
    redis: Redis,
    nodes: list[NodeProcess],
) -> None:
    redis.start()
    data = tmp_path / "shared"
    args = ("--broker", redis.url, "--destination", storescp.address)
    serve = NodeProcess(data, models_dir, *args).start()
    analysis = NodeProcess(data, models_dir, *args, "--role", "analysis", command="worker")
    delivery = NodeProcess(data, models_dir, *args, "--role", "delivery", command="worker")
    nodes.extend([serve, analysis.start(), delivery.start()])
    assert wait_until(lambda: "delivery worker ready" in delivery.log(), timeout=60)
    assert wait_until(lambda: "analysis worker ready" in analysis.log(), timeout=120)
    for _ in range(2):
        redis.kill()
        assert not wait_until(
            lambda: analysis.process.poll() is not None or delivery.process.poll() is not None,  # type: ignore[union-attr]
            timeout=4,
        ), analysis.log() + delivery.log()
        redis.start()
    sent = storescu(serve.port, chest)
    assert sent.returncode == 0, sent.stderr
    assert wait_until(lambda: len(storescp.files()) >= 2, timeout=120), (
        serve.log() + analysis.log() + delivery.log()
    )
    assert analysis.process is not None and analysis.process.poll() is None
    assert delivery.process is not None and delivery.process.poll() is None


def test_a_postgresql_ledger_end_to_end_with_findings_in_the_ledger(
    tmp_path: Path, models_dir: Path, storescp: StoreSCP, chest: Path, nodes: list[NodeProcess]
) -> None:
    with fresh_postgres_database() as url:
        config = tmp_path / "config.yaml"
        config.write_text(f"ledger_url: '{url}'\n")
        node = NodeProcess(
            tmp_path / "node",
            models_dir,
            "--config",
            str(config),
            "--destination",
            storescp.address,
        ).start()
        nodes.append(node)
        sent = storescu(node.port, chest)
        assert sent.returncode == 0, sent.stderr
        assert wait_until(lambda: len(storescp.files()) >= 2, timeout=120), node.log()
        assert wait_until(lambda: node_studies(node)[0]["state"] == "delivered", timeout=20)
        study = node_studies(node)[0]
        assert isinstance(study["abnormality_score"], float)
        assert study["priority"] in {"routine", "abnormal", "critical"}
        findings = study["findings"]
        assert isinstance(findings, list) and len(findings) >= 5
        assert {"label", "code", "probability", "threshold", "present"} <= set(findings[0])
        model = study["model"]
        assert isinstance(model, dict) and model["demo"] is True
        detail = cli_json(node, "status", str(study["study_uid"]))
        assert isinstance(detail, dict)
        assert detail["findings"] == findings and "attributes" not in detail
        node.stop()


def test_a_running_node_purges_finished_studies_after_the_retention_period(
    tmp_path: Path, models_dir: Path, storescp: StoreSCP, chest: Path, nodes: list[NodeProcess]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("spool_retention_hours: 0.001\n")  # 3.6 s
    node = NodeProcess(
        tmp_path / "node", models_dir, "--config", str(config), "--destination", storescp.address
    ).start()
    nodes.append(node)
    assert storescu(node.port, chest).returncode == 0
    assert wait_until(lambda: node_studies(node)[0]["state"] == "delivered", timeout=120)
    spool = tmp_path / "node" / "spool"
    assert any(p.suffix == ".dcm" for p in spool.rglob("*") if ".tmp" not in p.parts)
    assert wait_until(lambda: node_studies(node)[0]["purged_at"] is not None, timeout=30), (
        node.log()
    )
    assert [p for p in spool.rglob("*.dcm") if ".tmp" not in p.parts] == []
    study = node_studies(node)[0]
    assert study["state"] == "delivered" and study["findings"]  # the ledger keeps its rows
    assert "purged study" in node.log()
