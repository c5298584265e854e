"""The README quick start: ``make run`` from a fresh clone answers C-ECHO soon after installing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from cxr_node.check import echo
from tests.conftest import REPO, free_port, wait_until

pytestmark = pytest.mark.integration

ECHO_DEADLINE_SECONDS = 30.0  # the requirement, measured from the end of the install


def test_make_run_from_fresh_clone_answers_echo(tmp_path: Path) -> None:
    if (
        subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("not a git checkout with commits")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    port, http_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CXR_NODE_", "VIRTUAL_ENV"))}
    log_path = tmp_path / "make-run.log"
    with log_path.open("wb") as log:
        make = subprocess.Popen(
            ["make", "run", f"PORT={port}", f"HTTP_PORT={http_port}", "DATA_DIR=var"],
            cwd=clone,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stamp = clone / ".venv" / ".cxr-node-installed"
    try:
        deadline = time.monotonic() + 600
        while not stamp.exists():
            assert make.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "install took over 10 minutes"
            time.sleep(0.2)
        installed_at = time.monotonic()
        # Poll the TCP port first: pynetdicom leaks a socket warning per refused association.
        while time.monotonic() - installed_at < ECHO_DEADLINE_SECONDS and not _listening(port):
            assert make.poll() is None, log_path.read_text()
            time.sleep(0.1)
        problem = echo("127.0.0.1", port, "CXR_NODE", timeout=5.0)
        elapsed = time.monotonic() - installed_at
        assert problem is None, f"no C-ECHO {elapsed:.0f} s after install: {log_path.read_text()}"
        print(f"C-ECHO answered {elapsed:.1f} s after the install finished")
        assert "DEMO" in log_path.read_text()
        _log_in_as_printed(log_path, http_port)
    finally:
        os.killpg(make.pid, signal.SIGTERM)
        try:
            make.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait(10)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _log_in_as_printed(log_path: Path, http_port: int) -> None:
    """make run says where the web app is and how to log in; that works."""
    import re

    import httpx2 as httpx

    wait_until(lambda: _listening(http_port), timeout=30)
    text = log_path.read_text()
    assert f"http://localhost:{http_port}/" in text
    password = re.findall(r"user 'admin' created with password (\S+)", text)
    assert len(password) == 1, text
    with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=10) as client:
        answer = client.post("/api/v1/session", json={"name": "admin", "password": password[0]})
        assert answer.status_code == 200, answer.text
        assert client.get("/").status_code == 200
