"""Shared fixtures: real peers (DCMTK, redis-server, cxr-node processes) on loopback, free ports."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Every serve a test starts (in-process or as a subprocess, which inherits this) runs no web
# server unless the test asks for one: many run at once, and port 8080 is one port. The web
# tests give their own serve an environment without this variable.
os.environ.setdefault("CXR_NODE_HTTP_PORT", "0")


def free_port() -> int:
    """A TCP port that is free on loopback now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_tool(path: str) -> str:
    """The path of a Debian tool, or skip the test saying which package provides it."""
    if not Path(path).exists():
        pytest.skip(f"{path} not installed (make test installs dcmtk, dicom3tools, redis-server)")
    return path


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The shared real-world corpus (CXR_CORPUS), or skip."""
    value = os.environ.get("CXR_CORPUS")
    if not value:
        pytest.skip("CXR_CORPUS is not set")
    path = Path(value).resolve()
    if not (path / "inventory.csv").is_file():
        pytest.skip(f"CXR_CORPUS={value} has no inventory.csv")
    return path


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The DEMO bundles, written once per test session."""
    folder = tmp_path_factory.mktemp("models")
    subprocess.run(
        [sys.executable, "-m", "cxr_node", "models", "init-demo", "--data-dir", str(folder)],
        check=True,
        env=node_env(folder / "models"),
        cwd=REPO,
        capture_output=True,
    )
    return folder / "models"


def node_env(models: Path) -> dict[str, str]:
    """Environment for a cxr-node child process."""
    env = dict(os.environ)
    env["CXR_NODE_MODELS_DIR"] = str(models)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("CXR_NODE_BROKER_URL", None)
    return env


class StoreSCP:
    """A DCMTK storescp destination writing every received object into a folder."""

    def __init__(self, folder: Path, ae_title: str = "DEST", port: int | None = None) -> None:
        self.folder = folder
        self.ae_title = ae_title
        self.port = port or free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                require_tool("/usr/bin/storescp"),
                "-aet",
                ae_title,
                "-od",
                str(folder),
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    @property
    def address(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.port}"

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    """A running DCMTK storescp destination."""
    destination = StoreSCP(tmp_path / "received")
    yield destination
    destination.stop()


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A redis-server of our own on a free port (never the machine's shared one)."""
    server = shutil.which("redis-server") or require_tool("/usr/bin/redis-server")
    port = free_port()
    process = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(10)


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    """Block until something listens on the loopback port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


def wait_until(predicate: object, timeout: float, interval: float = 0.2) -> bool:
    """Poll ``predicate()`` until true or timeout; return its last truthiness."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A ledger database URL: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.sqlite'}"
        return
    from tests.databases import fresh_postgres_database

    with fresh_postgres_database() as url:
        yield url


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say loudly when the PostgreSQL variants could not run."""
    from tests.databases import postgres_problem

    if postgres_problem.cache_info().currsize and postgres_problem():
        terminalreporter.write_sep("!", str(postgres_problem()), red=True, bold=True)


@pytest.fixture(autouse=True)
def _restore_temp_folder() -> Iterator[None]:
    """A listener started in-process points ``tempfile.tempdir`` at its spool (see
    ``cxr_node.dicom.receive``): put it back after each test."""
    import tempfile

    saved = tempfile.tempdir
    yield
    tempfile.tempdir = saved
