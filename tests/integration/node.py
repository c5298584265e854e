"""Start and stop real ``cxr-node`` processes for integration tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, free_port, node_env, wait_for_port


class NodeProcess:
    """A ``cxr-node serve`` (or ``worker``) subprocess with its own data dir and log file."""

    def __init__(
        self,
        data_dir: Path,
        models: Path,
        *args: str,
        command: str = "serve",
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.extra_env = env or {}
        self.models = models
        self.port = free_port()
        self.args = list(args)
        self.command = command
        self.log_path = data_dir / f"{command}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> NodeProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        arguments = [
            sys.executable,
            "-m",
            "cxr_node",
            self.command,
            "--data-dir",
            str(self.data_dir),
        ]
        if self.command == "serve":
            arguments += ["--port", str(self.port), "--bind-address", "127.0.0.1"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                arguments + self.args,
                cwd=REPO,
                env=node_env(self.models) | self.extra_env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        if self.command == "serve":
            wait_for_port(self.port, timeout=60)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def studies(self) -> list[dict[str, object]]:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "cxr_node",
                "studies",
                "--json",
                "--data-dir",
                str(self.data_dir),
            ],
            cwd=REPO,
            env=node_env(self.models),
            capture_output=True,
            check=True,
            text=True,
        )
        result: list[dict[str, object]] = json.loads(out.stdout)
        return result


def storescu(
    port: int,
    *files: Path,
    called: str = "CXR_NODE",
    extra: tuple[str, ...] = (),
    calling: str = "MODALITY",
) -> subprocess.CompletedProcess[str]:
    """Send files with DCMTK's storescu (the real one, not pynetdicom's shadowing script)."""
    return subprocess.run(
        [
            "/usr/bin/storescu",
            "-aec",
            called,
            "-aet",
            calling,
            *extra,
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
