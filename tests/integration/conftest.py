"""Fixtures shared by the integration tests: running nodes, the corpus inventory, a warm
analyzer."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pytest

from cxr_node.settings import load_settings
from tests.integration.node import NodeProcess
from workers.analysis import Analyzer


@pytest.fixture
def nodes() -> Iterator[list[NodeProcess]]:
    """Nodes a test starts; stopped (and their logs printed if they crashed) afterwards."""
    started: list[NodeProcess] = []
    yield started
    for node in started:
        node.stop()
    for node in started:
        if node.process is not None and node.process.returncode not in (0, -15, -9, None):
            print(node.log())


@pytest.fixture(scope="module")
def quiet_node(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[NodeProcess]:
    """One node for a whole module, with a short quiet period and no destination."""
    process = NodeProcess(
        tmp_path_factory.mktemp("node") / "node", models_dir, "--quiet-seconds", "0.3"
    ).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def analyzer(models_dir: Path) -> Analyzer:
    """The DEMO ensemble, loaded once per module."""
    return Analyzer(load_settings(data_dir=models_dir.parent, models_dir=models_dir))


def inventory(corpus: Path, role_prefix: str = "", kind: str | None = None) -> list[dict[str, str]]:
    """Rows of the corpus inventory whose role starts with ``role_prefix`` (and of ``kind``)."""
    with (corpus / "inventory.csv").open(newline="") as stream:
        return [
            row
            for row in csv.DictReader(stream)
            if row["role"].startswith(role_prefix) and (kind is None or row["kind"] == kind)
        ]
