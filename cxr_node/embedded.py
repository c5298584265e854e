"""The embedded default: ``serve`` starts and supervises its local worker processes.

Each worker (analysis, delivery) is a separate process (so the edge never imports torch),
started with the same effective settings and tied to the parent's life (Linux
PR_SET_PDEATHSIG): if ``serve`` is killed, the workers go too, and the ledger lets the next
start resume.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
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


def write_effective_settings(settings: Settings, folder: Path, role: str) -> Path:
    """Write the settings a child process must use, readable by the owner only (atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"effective-settings-{role}.yaml"
    data = settings.model_dump(mode="json", exclude_none=True)
    if settings.broker_url is not None:
        data["broker_url"] = settings.broker_url.get_secret_value()
    for index, destination in enumerate(settings.destinations):
        for field in ("password", "token"):  # a DICOMweb destination's credentials
            secret = getattr(destination, field, None)
            if secret is not None:
                data["destinations"][index][field] = secret.get_secret_value()
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        yaml.safe_dump(data, stream)
    os.replace(temporary, path)
    return path


class WorkerSupervisor:
    """Starts ``cxr-node worker --role ROLE`` and restarts it if it dies, until stopped."""

    def __init__(
        self, settings: Settings, role: str, on_exit: Callable[[str], None] | None = None
    ) -> None:
        self.role = role
        self._on_exit = on_exit
        """Told the role of a worker that exited unexpectedly (before it is restarted)."""
        self._config = write_effective_settings(settings, settings.data_dir / "run", role)
        self._process: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._supervise, name=f"{role}-worker-supervisor", daemon=True
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
        late = self._process
        if late is not None and late is not process and late.poll() is None:
            late.kill()  # spawned while we were stopping
            late.wait()

    def _spawn(self) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "cxr_node", "worker", "--config", str(self._config)]
        command += ["--role", self.role, "--exit-with-parent", str(os.getpid())]
        return subprocess.Popen(command)

    def _supervise(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                self._process = self._spawn()
            except OSError as exc:
                log.error("cannot start the %s worker (%s)", self.role, type(exc).__name__)
            else:
                log.info("%s worker started (pid %d)", self.role, self._process.pid)
                while self._process.poll() is None and not self._stop.wait(0.5):
                    pass
                if self._stop.is_set():
                    # PR_SET_PDEATHSIG fires when the *thread* that started the child ends:
                    # stay until the child has shut down gracefully (stop() sent SIGTERM).
                    self._process.wait()
                    return
                log.error("%s worker exited with %s", self.role, self._process.returncode)
                if self._on_exit is not None:
                    self._on_exit(self.role)
            log.info("restarting the %s worker in %.0f s", self.role, backoff)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 60.0)
