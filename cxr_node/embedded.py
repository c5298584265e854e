"""The embedded default: ``serve`` starts and supervises one local worker process.

The worker is a separate process (so the edge never imports torch), started with the same
effective settings and tied to the parent's life (Linux PR_SET_PDEATHSIG): if ``serve`` is
killed, the worker goes too, and the ledger lets the next start resume.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import yaml

from cxr_node.settings import Settings

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def exit_with_parent(parent_pid: int) -> None:
    """Called in the worker itself: die when ``parent_pid`` dies (Linux PR_SET_PDEATHSIG).

    Set in the child rather than with ``preexec_fn`` (unsafe in a parent that has threads);
    if the parent is already gone by then, exit at once.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        log.warning("cannot tie the worker to its parent on this system")
    if os.getppid() != parent_pid:
        raise SystemExit("cxr-node: the serve process that started this worker is gone")


def write_effective_settings(settings: Settings, folder: Path) -> Path:
    """Write the settings a child process must use, readable by the owner only."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "effective-settings.yaml"
    data = settings.model_dump(mode="json", exclude_none=True)
    if settings.broker_url is not None:
        data["broker_url"] = settings.broker_url.get_secret_value()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        yaml.safe_dump(data, stream)
    return path


class WorkerSupervisor:
    """Starts ``cxr-node worker`` and restarts it if it dies, until stopped."""

    def __init__(self, settings: Settings) -> None:
        self._config = write_effective_settings(settings, settings.data_dir / "run")
        self._process: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._supervise, name="worker-supervisor", daemon=True
        )

    def start(self) -> None:
        """Start the worker and its watchdog thread."""
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Ask the worker to finish its current task and exit; kill it if it will not."""
        self._stop.set()
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._thread.join(timeout)

    def _spawn(self) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "cxr_node", "worker", "--config", str(self._config)]
        return subprocess.Popen([*command, "--exit-with-parent", str(os.getpid())])

    def _supervise(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                self._process = self._spawn()
            except OSError as exc:
                log.error("cannot start the embedded worker (%s)", type(exc).__name__)
            else:
                log.info("embedded worker started (pid %d)", self._process.pid)
                while self._process.poll() is None and not self._stop.wait(0.5):
                    pass
                if self._stop.is_set():
                    return
                log.error("embedded worker exited with %s", self._process.returncode)
            log.info("restarting the embedded worker in %.0f s", backoff)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 60.0)
