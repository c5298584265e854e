"""Errors as problem documents (RFC 9457, ``application/problem+json``), each with a stable
``type`` URI; validation errors name the fields."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "urn:cxr-node:problem:"


class ProblemDocument(BaseModel):
    """RFC 9457 problem details, as every error of the API is answered."""

    type: str = Field(description="stable URI naming the kind of problem")
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[dict[str, str]] | None = Field(
        default=None, description="for invalid requests: each field and what is wrong with it"
    )


class Problem(Exception):
    """An error answered as a problem document."""

    def __init__(
        self,
        status: int,
        kind: str,
        title: str,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        errors: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.kind = kind
        self.title = title
        self.detail = detail
        self.headers = headers or {}
        self.errors = errors


def not_found(what: str) -> Problem:
    """404 with type ``not-found``."""
    return Problem(404, "not-found", "Not found", f"{what} is not known here")


def problem_response(request: Request, problem: Problem) -> JSONResponse:
    """The problem document for ``problem``."""
    body: dict[str, Any] = {
        "type": TYPE_BASE + problem.kind,
        "title": problem.title,
        "status": problem.status,
        "instance": request.url.path,
    }
    if problem.detail:
        body["detail"] = problem.detail
    if problem.errors is not None:
        body["errors"] = problem.errors
    return JSONResponse(
        body, status_code=problem.status, media_type=MEDIA_TYPE, headers=problem.headers
    )


_HTTP_KINDS = {
    401: ("not-authenticated", "Not authenticated"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("too-large", "Request too large"),
}


def _field(location: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in location)


def install(app: FastAPI) -> None:
    """Answer every error of ``app`` with a problem document."""

    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return problem_response(request, exc)

    async def on_invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"field": _field(tuple(error.get("loc", ()))), "message": str(error.get("msg"))}
            for error in exc.errors()
        ]
        names = ", ".join(e["field"] for e in errors)
        problem = Problem(
            422, "invalid-request", "Invalid request", f"invalid: {names}", errors=errors
        )
        return problem_response(request, problem)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kind, title = _HTTP_KINDS.get(exc.status_code, ("http-error", "HTTP error"))
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail != title else None
        problem = Problem(exc.status_code, kind, title, detail, headers=dict(exc.headers or {}))
        return problem_response(request, problem)

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(StarletteHTTPException, on_http)


def document_problems(openapi: dict[str, Any]) -> dict[str, Any]:
    """Make the OpenAPI document say what the app does: every 4xx and 5xx answer is a problem
    document in ``application/problem+json`` (FastAPI documents its own 422 shape and
    ``application/json`` otherwise)."""
    components = openapi.setdefault("components", {}).setdefault("schemas", {})
    components["ProblemDocument"] = ProblemDocument.model_json_schema(
        ref_template="#/components/schemas/{model}"
    )
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    reference = {"$ref": "#/components/schemas/ProblemDocument"}
    for operations in openapi.get("paths", {}).values():
        for operation in operations.values():
            for code, response in operation.get("responses", {}).items():
                if str(code)[:1] in {"4", "5"}:
                    response["content"] = {MEDIA_TYPE: {"schema": reference}}
    return openapi
