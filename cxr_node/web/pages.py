"""The pages: log in, the worklist (live, keyboard-driven), a study, destinations and AE titles.

Server-rendered (Jinja2) with a little plain JavaScript; they use the same functions as the API,
so they show exactly what it returns, and the same checks: a page needs a session (or a
token), forms carry the session's CSRF token, every study view is audited.
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from cxr_node.ledger import Ledger
from cxr_node.web import api, credentials
from cxr_node.web.auth import (
    CSRF_HEADER,
    SESSION_COOKIE,
    Principal,
    authenticate,
    ledger_of,
    requires,
)
from cxr_node.web.credentials import Role
from cxr_node.web.problems import Problem
from cxr_node.web.schemas import LoginRequest, SourceIn
from cxr_node.web.state import WebState, web_state

log = logging.getLogger(__name__)

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def person_name(value: str | None) -> str:
    """A DICOM PN (PS3.5 6.2: family^given^middle^prefix^suffix, alphabetic group) as people
    write it: "Family, Given Middle"."""
    if not value:
        return "-"
    family, given, middle, prefix, suffix = (value.split("=")[0].split("^") + [""] * 5)[:5]
    first = " ".join(part for part in (prefix, given, middle) if part)
    name = ", ".join(part for part in (family, first) if part)
    return f"{name} {suffix}".strip() or "-"


TEMPLATES.env.filters["person"] = person_name
LOGIN_CSRF_COOKIE = "cxr_login_csrf"
BAND_LABELS = {"critical": "CRITICAL", "abnormal": "Abnormal", "routine": "Routine"}
STATE_LABELS = {
    "received": "Receiving",
    "queued": "Waiting for analysis",
    "analysing": "Analysing",
    "analysed": "Analysed",
    "delivered": "Analysed, results delivered",
    "not_eligible": "Not analysed",
    "failed": "Failed",
}
RESULT_LABELS = {
    "sr": "Structured report",
    "sc": "Heatmap (Secondary Capture)",
    "notice": "Not analysed report",
}


class LoginRequired(Exception):
    """A page was asked for without a valid session."""


router = APIRouter(include_in_schema=False)
LedgerDep = Annotated[Ledger, Depends(ledger_of)]
StateDep = Annotated[WebState, Depends(web_state)]


def page_principal(request: Request) -> Principal:
    """Dependency: the caller of a page, or a redirect to the login page."""
    try:
        principal = authenticate(request)
    except Problem:
        principal = None
    if principal is None:
        raise LoginRequired
    request.state.principal = principal
    return principal


PagePrincipal = Annotated[Principal, Depends(page_principal)]


def _form_checked(role: Role) -> Any:
    """Dependency for a page's form: the role, and the session's CSRF token in the form."""
    check = requires(role)

    async def checked(request: Request, principal: PagePrincipal) -> Principal:
        return await check(request, principal)

    return checked


def _waited(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A page with what every page needs."""
    context.setdefault("principal", getattr(request.state, "principal", None))
    context.update(
        roles=Role,
        band_labels=BAND_LABELS,
        state_labels=STATE_LABELS,
        result_labels=RESULT_LABELS,
        waited=_waited,
    )
    response = TEMPLATES.TemplateResponse(request, name, context, status_code=status_code)
    response.headers["Cache-Control"] = "no-store"  # patient data: never cached
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; frame-ancestors 'none'"
    )
    return response


# --- log in and out ---------------------------------------------------------------------------


@router.get("/login")
def login_page(request: Request, next: str = "/") -> HTMLResponse:
    """The login form (with a CSRF token bound to a cookie of its own)."""
    token = secrets.token_urlsafe(24)
    response = render(request, "login.html", login_csrf=token, next=_local(next), error=None)
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=3600,
    )
    return response


def _local(target: str) -> str:
    """Only a path on this site (no open redirect)."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


@router.post("/login")
def login_submit(
    request: Request,
    ledger: LedgerDep,
    web: StateDep,
    name: Annotated[str, Form(max_length=64)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    csrf_token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    """Check the form; on success a session cookie and the page asked for."""
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not secrets.compare_digest(expected, csrf_token):
        return render(
            request,
            "login.html",
            403,
            login_csrf=expected or secrets.token_urlsafe(24),
            next=_local(next),
            error="The form expired; please log in again.",
        )
    redirect = RedirectResponse(_local(next), status_code=303)
    try:
        api.open_session(
            LoginRequest(name=name or "-", password=password or "-"),
            request,
            redirect,
            ledger,
            web,
        )
    except Problem as problem:
        return render(
            request,
            "login.html",
            problem.status,
            login_csrf=expected,
            next=_local(next),
            error=problem.detail if problem.status == 429 else "Wrong name or password.",
        )
    redirect.delete_cookie(LOGIN_CSRF_COOKIE)
    return redirect


@router.post("/logout")
def logout_submit(
    request: Request,
    principal: Annotated[Principal, Depends(_form_checked(Role.VIEWER))],
    ledger: LedgerDep,
) -> Response:
    """End the session."""
    response = RedirectResponse("/login", status_code=303)
    api.log_out(request, response, ledger)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# --- worklist and studies ---------------------------------------------------------------------


def _filters(request: Request) -> dict[str, str]:
    keys = ("priority", "state", "source", "since", "q")
    return {key: request.query_params.get(key, "").strip() for key in keys}


def _page(principal: Principal, ledger: Ledger, web: WebState, filters: dict[str, str]) -> Any:
    since = None
    if filters["since"]:
        try:
            since = datetime.fromisoformat(filters["since"]).replace(tzinfo=UTC)
        except ValueError:
            since = None
    return api.list_studies(
        principal,
        ledger,
        web,
        state=[filters["state"]] if filters["state"] else None,
        priority=[filters["priority"]] if filters["priority"] else None,
        since=since,
        source=filters["source"][:16] or None,
        q=filters["q"][:64] or None,
        limit=200,
        offset=0,
    )


@router.get("/")
def worklist_page(
    request: Request, principal: PagePrincipal, ledger: LedgerDep, web: StateDep
) -> HTMLResponse:
    """The worklist, in reading order."""
    filters = _filters(request)
    page = _page(principal, ledger, web, filters)
    query = urlencode({k: v for k, v in filters.items() if v})
    return render(
        request,
        "worklist.html",
        items=page.items,
        total=page.total,
        filters=filters,
        query=query,
        ageing_minutes=round(web.ageing_seconds / 60),
    )


@router.get("/worklist/rows")
def worklist_rows(
    request: Request, principal: PagePrincipal, ledger: LedgerDep, web: StateDep
) -> HTMLResponse:
    """The worklist's rows alone, for the page's live update."""
    page = _page(principal, ledger, web, _filters(request))
    return render(
        request,
        "worklist_rows.html",
        items=page.items,
        ageing_minutes=round(web.ageing_seconds / 60),
    )


@router.get("/studies/{study_uid}")
def study_page(
    request: Request,
    study_uid: str,
    principal: PagePrincipal,
    ledger: LedgerDep,
    web: StateDep,
    done: str = "",
) -> HTMLResponse:
    """One study: findings, regions, images, results, deliveries, history."""
    try:
        study = api.study_detail(study_uid, principal, ledger, web)
    except Problem as problem:
        return render(request, "message.html", problem.status, message=problem.detail)
    message = {"reprocess": "The study will be analysed again."}.get(done)
    return render(
        request,
        "study.html",
        study=study,
        can_operate=principal.role.allows(Role.OPERATOR),
        message=message,
    )


@router.post("/studies/{study_uid}/reprocess")
def reprocess_submit(
    request: Request,
    study_uid: str,
    principal: Annotated[Principal, Depends(_form_checked(Role.OPERATOR))],
    ledger: LedgerDep,
) -> Response:
    """Analyse the study again, then back to its page."""
    try:
        api.reprocess(study_uid, principal, ledger)
    except Problem as problem:
        return render(request, "message.html", problem.status, message=problem.detail)
    target = f"/studies/{study_uid}?done=reprocess"
    return RedirectResponse(target, status_code=303)


# --- destinations and AE titles ---------------------------------------------------------------


@router.get("/destinations")
def destinations_page(
    request: Request, principal: PagePrincipal, ledger: LedgerDep, web: StateDep
) -> HTMLResponse:
    """Each destination's state."""
    return render(
        request,
        "destinations.html",
        destinations=api.list_destinations(principal, ledger, web),
    )


@router.get("/admin/sources")
def sources_page(
    request: Request,
    principal: Annotated[Principal, Depends(_form_checked(Role.ADMIN))],
    ledger: LedgerDep,
    web: StateDep,
    error: str = "",
) -> HTMLResponse:
    """Known senders (AE titles) and their routes; add and remove."""
    return render(
        request,
        "sources.html",
        sources=api.list_sources(principal, ledger, web),
        destinations=[d.name for d in web.settings.destinations],
        error=error,
    )


@router.post("/admin/sources")
def add_source_submit(
    principal: Annotated[Principal, Depends(_form_checked(Role.ADMIN))],
    ledger: LedgerDep,
    web: StateDep,
    ae_title: Annotated[str, Form(max_length=64)] = "",
    host: Annotated[str, Form(max_length=64)] = "",
    destinations: Annotated[list[str] | None, Form()] = None,
) -> Response:
    """Add (or replace) a known sender."""
    try:
        api.add_source(
            SourceIn(
                ae_title=ae_title[:16] or "-", host=host or None, destinations=destinations or []
            ),
            principal,
            ledger,
            web,
        )
    except Problem as problem:
        return RedirectResponse(
            "/admin/sources?" + urlencode({"error": problem.detail or problem.title}),
            status_code=303,
        )
    return RedirectResponse("/admin/sources", status_code=303)


@router.post("/admin/sources/{ae_title}/remove")
def remove_source_submit(
    ae_title: str,
    principal: Annotated[Principal, Depends(_form_checked(Role.ADMIN))],
    ledger: LedgerDep,
    host: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    """Remove a known sender managed here."""
    try:
        api.remove_source(ae_title, principal, ledger, host=host or None)
    except Problem as problem:
        return RedirectResponse(
            "/admin/sources?" + urlencode({"error": problem.detail or problem.title}),
            status_code=303,
        )
    return RedirectResponse("/admin/sources", status_code=303)


__all__ = ["CSRF_HEADER", "LoginRequired", "router"]


# --- users, tokens and models -----------------------------------------------------------------

Admin = Annotated[Principal, Depends(_form_checked(Role.ADMIN))]


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M")


def _users_page(
    request: Request, ledger: Ledger, status_code: int = 200, **context: Any
) -> HTMLResponse:
    context.setdefault("error", "")
    context.setdefault("message", "")
    return render(
        request,
        "users.html",
        status_code,
        users=ledger.list_users(),
        tokens=ledger.list_tokens(),
        role_names=[role.value for role in Role],
        min_password=credentials.MIN_PASSWORD_LENGTH,
        when=_when,
        **context,
    )


@router.get("/admin/users")
def users_page(request: Request, principal: Admin, ledger: LedgerDep) -> HTMLResponse:
    """Users and API tokens (the same as ``cxr-node users`` and ``tokens``)."""
    return _users_page(request, ledger)


def _checked_name(name: str) -> str | None:
    from cxr_node.accounts_cli import NAME_PATTERN

    return None if NAME_PATTERN.match(name) else "a name is 1 to 64 letters, digits, . _ @ -"


@router.post("/admin/users")
def add_user_submit(
    request: Request,
    principal: Admin,
    ledger: LedgerDep,
    name: Annotated[str, Form(max_length=64)] = "",
    role: Annotated[str, Form(max_length=16)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
) -> HTMLResponse:
    """Add a user."""
    problem = _checked_name(name) or credentials.password_problem(password)
    if role not in {r.value for r in Role}:
        problem = "choose a role"
    if problem is None and not ledger.add_user(name, role, credentials.hash_password(password)):
        problem = f"user {name} exists"
    if problem:
        return _users_page(request, ledger, 422, error=problem)
    ledger.record_audit(principal.actor, "add_user", detail=f"{name} ({role})")
    log.info("%s added user %s with role %s", principal.actor, name, role)
    return _users_page(request, ledger, message=f"User {name} added.")


@router.post("/admin/users/{name}/remove")
def remove_user_submit(
    request: Request, name: str, principal: Admin, ledger: LedgerDep
) -> HTMLResponse:
    """Remove a user (not oneself); their sessions end."""
    if name == principal.name:
        return _users_page(request, ledger, 422, error="you cannot remove yourself")
    if not ledger.remove_user(name):
        return _users_page(request, ledger, 404, error=f"no user {name[:64]}")
    ledger.record_audit(principal.actor, "remove_user", detail=name)
    log.info("%s removed user %s", principal.actor, name)
    return _users_page(request, ledger, message=f"User {name} removed.")


@router.post("/admin/users/{name}/password")
def password_submit(
    request: Request,
    name: str,
    principal: Admin,
    ledger: LedgerDep,
    password: Annotated[str, Form(max_length=1024)] = "",
) -> HTMLResponse:
    """Set a user's password; their sessions end (one's own too: log in again)."""
    problem = credentials.password_problem(password)
    if problem:
        return _users_page(request, ledger, 422, error=problem)
    if not ledger.set_password_hash(name, credentials.hash_password(password)):
        return _users_page(request, ledger, 404, error=f"no user {name[:64]}")
    ledger.record_audit(principal.actor, "set_password", detail=name)
    log.info("%s set the password of user %s", principal.actor, name)
    return _users_page(request, ledger, message=f"Password of {name} set; their sessions ended.")


@router.post("/admin/tokens")
def add_token_submit(
    request: Request,
    principal: Admin,
    ledger: LedgerDep,
    name: Annotated[str, Form(max_length=64)] = "",
    role: Annotated[str, Form(max_length=16)] = "",
) -> HTMLResponse:
    """Make an API token; shown once on the page that answers."""
    problem = _checked_name(name)
    if role not in {r.value for r in Role}:
        problem = "choose a role"
    made = credentials.new_token()
    if problem is None and not ledger.add_token(name, made.token_id, made.secret_hash, role):
        problem = f"token name {name} in use"
    if problem:
        return _users_page(request, ledger, 422, error=problem)
    ledger.record_audit(principal.actor, "add_token", detail=f"{name} ({role})")
    log.info("%s made token %s with role %s", principal.actor, name, role)
    return _users_page(request, ledger, new_token=made.value, new_token_name=name)


@router.post("/admin/tokens/{name}/revoke")
def revoke_token_submit(
    request: Request, name: str, principal: Admin, ledger: LedgerDep
) -> HTMLResponse:
    """Revoke a token for good."""
    if not ledger.revoke_token(name):
        return _users_page(request, ledger, 404, error=f"no live token {name[:64]}")
    ledger.record_audit(principal.actor, "revoke_token", detail=name)
    log.info("%s revoked token %s", principal.actor, name)
    return _users_page(request, ledger, message=f"Token {name} revoked.")


@router.get("/models")
def models_page(request: Request, principal: PagePrincipal, web: StateDep) -> HTMLResponse:
    """The installed model bundles, DEMO ones marked."""
    return render(request, "models.html", models=api.list_models(principal, web))
