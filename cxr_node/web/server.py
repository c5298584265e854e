"""Running the web app: in a thread of ``serve``, or alone (``cxr-node web``), with uvicorn.

uvicorn's access log is off (a query string can hold a patient's name from a search); our own
middleware logs method, path, status, the caller and the time, never the query. On the first
start without any user, an ``admin`` is made with a random password, printed once and written
to a file only the owner can read, so that ``make run`` can say how to log in.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request, Response

from cxr_node.ledger import Ledger
from cxr_node.settings import Settings
from cxr_node.web import credentials
from cxr_node.web.app import ReadinessCheck, create_app

log = logging.getLogger(__name__)

INITIAL_PASSWORD_FILE = "initial-admin-password"


def ensure_first_admin(settings: Settings, ledger: Ledger) -> Path | None:
    """With no user at all: make ``admin`` with a random password, write it to a file only its
    owner can read under the data dir, print it once; returns the file (None: users exist)."""
    if ledger.count_users():
        return None
    password = secrets.token_urlsafe(15)
    if not ledger.add_user("admin", "admin", credentials.hash_password(password)):
        return None  # another process made it first
    path = settings.data_dir / INITIAL_PASSWORD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        stream.write(password + "\n")
    os.chmod(path, 0o600)
    print(
        f"web: first start, user 'admin' created with password {password} "
        f"(also in {path}, readable by its owner only; change it: cxr-node users passwd admin)",
        flush=True,
    )
    log.info("first start: user admin created; its password is in %s", path)
    return path


def web_url(settings: Settings) -> str:
    """Where a browser on this machine finds the web app."""
    scheme = "https" if settings.http_tls else "http"
    host = settings.http_bind_address
    if host in {"0.0.0.0", "::", ""}:
        host = "localhost"
    return f"{scheme}://{host}:{settings.http_port}/"


def build_app(
    settings: Settings, ledger: Ledger, readiness: Mapping[str, ReadinessCheck] | None = None
) -> FastAPI:
    """The app with the settings' timings and a request log without query strings."""
    app = create_app(
        settings,
        ledger,
        readiness=readiness,
        ageing_seconds=settings.worklist_ageing_minutes * 60,
        session_seconds=settings.session_hours * 3600,
    )
    access = logging.getLogger("cxr_node.web.access")

    @app.middleware("http")
    async def log_requests(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        began = time.perf_counter()
        response = await call_next(request)
        principal = getattr(request.state, "principal", None)
        who = principal.actor if principal is not None else "-"
        access.info(
            "%s %s %d %s %.0f ms",
            request.method,
            request.url.path[:200],
            response.status_code,
            who,
            (time.perf_counter() - began) * 1000,
        )
        return response

    return app


def _config(settings: Settings, app: FastAPI) -> uvicorn.Config:
    tls = settings.http_tls
    return uvicorn.Config(
        app,
        host=settings.http_bind_address,
        port=settings.http_port,
        ssl_certfile=str(tls.cert_file) if tls else None,
        ssl_keyfile=str(tls.key_file) if tls else None,
        log_config=None,  # our logging configuration stands
        access_log=False,
        server_header=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
    )


class WebServer:
    """uvicorn in a thread of ``serve``."""

    def __init__(self, settings: Settings, app: FastAPI) -> None:
        self._server = uvicorn.Server(_config(settings, app))
        self._thread = threading.Thread(target=self._server.run, name="web", daemon=True)
        self.url = web_url(settings)

    def start(self, timeout: float = 10.0) -> None:
        """Start serving; raises when the port cannot be bound."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started and time.monotonic() < deadline:
            if not self._thread.is_alive():
                raise OSError("the web server did not start (port in use?)")
            time.sleep(0.05)
        if not self._server.started:
            raise OSError("the web server did not start in time")

    def stop(self) -> None:
        """Stop serving (requests in flight get a few seconds)."""
        self._server.should_exit = True
        self._thread.join(10)


def run_web(settings: Settings) -> int:
    """``cxr-node web``: the web app alone, against the configured ledger (PostgreSQL when
    other machines run serve and the workers)."""
    from cxr_node.memory import limit_malloc_arenas

    limit_malloc_arenas()
    ledger = Ledger(settings.ledger)
    try:
        ensure_first_admin(settings, ledger)
        app = build_app(settings, ledger)
        log.info("web app on %s", web_url(settings))
        uvicorn.Server(_config(settings, app)).run()
    finally:
        ledger.close()
    return 0
