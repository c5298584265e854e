"""The FastAPI application: the API under ``/api/v1`` (OpenAPI at ``/api/openapi.json``,
interactive docs at ``/api/docs``), health at ``/healthz`` and ``/readyz``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from cxr_node.ledger import Ledger
from cxr_node.settings import Settings
from cxr_node.web import api, metrics, pages, pictures_api, problems, uploads_api
from cxr_node.web.auth import Principal, requires
from cxr_node.web.credentials import Role
from cxr_node.web.state import WebState

ReadinessCheck = Callable[[], str | None]
"""A readiness check: None when ready, else what is wrong (no patient data)."""


def create_app(
    settings: Settings,
    ledger: Ledger,
    *,
    readiness: Mapping[str, ReadinessCheck] | None = None,
    ageing_seconds: float | None = None,
    session_seconds: float | None = None,
) -> FastAPI:
    """The web app over ``ledger``; ``readiness`` names what ``/readyz`` checks."""
    app = FastAPI(
        title="cxr-node",
        version="0.1.0",
        summary="Chest X-ray AI triage node: worklist, studies and administration. "
        "Results are AI-generated and not a diagnosis.",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
    )
    app.state.ledger = ledger
    app.state.web = WebState(
        settings=settings,
        ageing_seconds=ageing_seconds if ageing_seconds is not None else 3600.0,
        session_seconds=session_seconds if session_seconds is not None else 8 * 3600.0,
    )
    problems.install(app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = problems.document_problems(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    summary=app.summary,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.include_router(api.router)
    app.include_router(pictures_api.router)
    app.include_router(uploads_api.router)
    app.include_router(pages.router)

    async def to_login(request: Request, exc: Exception) -> RedirectResponse:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)

    app.add_exception_handler(pages.LoginRequired, to_login)

    async def problem_page(request: Request, exc: Exception) -> Response:
        """Problems of the pages as a page; of the API as a problem document."""
        assert isinstance(exc, problems.Problem)
        if request.url.path.startswith(("/api/", "/metrics", "/healthz", "/readyz")):
            return problems.problem_response(request, exc)
        return pages.render(request, "message.html", exc.status, message=exc.detail or exc.title)

    app.add_exception_handler(problems.Problem, problem_page)
    checks = dict(readiness or {})
    checks.setdefault("ledger", _ledger_check(ledger))

    registry = metrics.ledger_registry(ledger, settings.spool_path)

    @app.get(
        "/metrics",
        tags=["health"],
        response_class=PlainTextResponse,
        responses={401: {"model": problems.ProblemDocument, "description": "not authenticated"}},
    )
    def prometheus(_: Annotated[Principal, Depends(requires(Role.VIEWER))]) -> Response:
        """Prometheus text format (a viewer's token: ``authorization`` in the scrape config)."""
        return Response(metrics.exposition(registry), media_type=metrics.CONTENT_TYPE)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The web server is alive."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        responses={503: {"description": "not ready: names what is not"}},
    )
    def readyz() -> JSONResponse:
        """Ready when every check passes (the DICOM listener, broker, ledger, spool space)."""
        failing = {}
        for name, check in checks.items():
            try:
                problem = check()
            except Exception as exc:  # a check that fails is a reason, not a 500
                problem = f"check failed: {type(exc).__name__}"
            if problem:
                failing[name] = problem
        body = {"status": "not ready" if failing else "ready", "not_ready": failing}
        return JSONResponse(body, status_code=503 if failing else 200)

    return app


def _ledger_check(ledger: Ledger) -> ReadinessCheck:
    def check() -> str | None:
        ledger.count_users()
        return None

    return check
