"""The REST API, ``/api/v1``: sessions, the worklist and studies, reprocessing, sources and
destinations. Route functions only check, call the ledger and shape the answer; every view of a
study is audited."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import ValidationError

from cxr_node import pictures
from cxr_node.destinations import SourceRule
from cxr_node.ledger import (
    InstanceRow,
    Ledger,
    StudyAttributes,
    StudyRow,
    WorklistEntry,
    WorklistFilter,
)
from cxr_node.ledger.worklist import BANDS
from cxr_node.spool import log_ref, safe_key
from cxr_node.web import credentials
from cxr_node.web.auth import (
    SESSION_COOKIE,
    Principal,
    authenticate,
    ledger_of,
    requires,
    retry_after,
)
from cxr_node.web.credentials import Role
from cxr_node.web.problems import Problem, ProblemDocument, not_found
from cxr_node.web.schemas import (
    AI_NOTICE,
    DEMO_NOTICE,
    Accepted,
    Code,
    DeliveryOut,
    DestinationOut,
    FindingOut,
    HistoryOut,
    ImageOut,
    LoginRequest,
    Me,
    ModelOut,
    ModelSummary,
    PatientStudy,
    ResultOut,
    SessionInfo,
    SourceIn,
    SourceOut,
    StudyDetail,
    StudyItem,
    StudyPage,
)
from cxr_node.web.state import WebState, web_state

log = logging.getLogger(__name__)

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ProblemDocument, "description": description}
    for code, description in (
        (401, "not authenticated, or the token or session is not valid"),
        (403, "the caller's role does not allow it, or the CSRF token is missing"),
        (422, "invalid request: each field named"),
    )
}

router = APIRouter(prefix="/api/v1", responses=_ERRORS)

Viewer = Annotated[Principal, Depends(requires(Role.VIEWER))]
Operator = Annotated[Principal, Depends(requires(Role.OPERATOR))]
Admin = Annotated[Principal, Depends(requires(Role.ADMIN))]
LedgerDep = Annotated[Ledger, Depends(ledger_of)]
StateDep = Annotated[WebState, Depends(web_state)]


def _time(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


# --- sessions ---------------------------------------------------------------------------------


@router.post(
    "/session",
    response_model=SessionInfo,
    tags=["session"],
    responses={429: {"model": ProblemDocument, "description": "too many failed logins"}},
)
def log_in(
    body: LoginRequest, request: Request, response: Response, ledger: LedgerDep, web: StateDep
) -> SessionInfo:
    """Log in with a name and password: sets the session cookie, returns the CSRF token."""
    return open_session(body, request, response, ledger, web)


def open_session(
    body: LoginRequest, request: Request, response: Response, ledger: Ledger, web: WebState
) -> SessionInfo:
    """Check the password (slowed down after failures), open a session, set its cookie."""
    client = request.client.host if request.client else "?"
    keys = (f"user:{body.name}", f"client:{client}")
    wait = web.throttle.wait_seconds(*keys)
    if wait > 0:
        raise Problem(
            429,
            "too-many-logins",
            "Too many failed logins",
            f"try again in {wait:.0f} s",
            headers=retry_after(wait),
        )
    user = ledger.user(body.name)
    if user is None:
        credentials.burn_password_check(body.password)
    if user is None or not credentials.verify_password(user.password_hash, body.password):
        web.throttle.failed(*keys)
        log.warning("failed login for user %r from %s", body.name[:64], client)
        raise Problem(401, "login-failed", "Login failed", "wrong name or password")
    web.throttle.succeeded(*keys)
    if credentials.needs_rehash(user.password_hash):
        ledger.rehash_password(
            user.name, user.password_hash, credentials.hash_password(body.password)
        )
    cookie, csrf = credentials.new_secret(), credentials.new_secret()
    ledger.open_session(credentials.sha256_hex(cookie), user.name, csrf, web.session_seconds)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=int(web.session_seconds),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    ledger.record_audit(f"user:{user.name}", "log_in")
    log.info("user %s logged in", user.name)
    expires = datetime.fromtimestamp(ledger.now() + web.session_seconds, UTC)
    return SessionInfo(user=user.name, role=Role(user.role), csrf_token=csrf, expires_at=expires)


@router.delete("/session", status_code=204, tags=["session"])
def log_out(request: Request, response: Response, ledger: LedgerDep) -> Response:
    """End the session (its cookie is cleared); without a session, nothing to do."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        session = ledger.session(credentials.sha256_hex(cookie))
        ledger.close_session(credentials.sha256_hex(cookie))
        if session is not None:
            ledger.record_audit(f"user:{session.user_name}", "log_out")
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/me", response_model=Me, tags=["session"])
def me(principal: Viewer) -> Me:
    """Who the caller is (and, for a session, its CSRF token)."""
    kind = "user" if principal.kind == "user" else "token"
    return Me(name=principal.name, kind=kind, role=principal.role, csrf_token=principal.csrf_token)


# --- studies ----------------------------------------------------------------------------------


def _model(row: StudyRow) -> ModelSummary | None:
    if row.model is None:
        return None
    return ModelSummary(
        name=row.model.get("name"), version=row.model.get("version"), demo=bool(row.model["demo"])
    )


def _notices(row: StudyRow) -> list[str]:
    model = _model(row)
    return [AI_NOTICE, DEMO_NOTICE] if model is not None and model.demo else [AI_NOTICE]


def _patient(attributes: StudyAttributes | None) -> PatientStudy | None:
    if attributes is None:
        return None
    return PatientStudy(
        patient_name=attributes.patient_name,
        patient_id=attributes.patient_id,
        patient_sex=attributes.patient_sex,
        patient_birth_date=attributes.patient_birth_date,
        accession_number=attributes.accession_number,
        study_date=attributes.study_date,
        study_description=attributes.study_description,
        modality=attributes.modality,
    )


def _item(entry: WorklistEntry, top: list[str], now: float) -> dict[str, Any]:
    row = entry.study
    received = _time(row.created_at)
    assert received is not None
    return {
        "study_uid": row.study_uid,
        "state": row.state.value,
        "reason_code": row.reason_code,
        "reason": row.reason,
        "received_at": received,
        "waiting_seconds": round(max(0.0, now - row.created_at), 1),
        "calling_ae": row.calling_ae,
        "priority": row.priority,
        "band": BANDS[entry.band],
        "aged": entry.aged,
        "abnormality_score": row.abnormality_score,
        "top_findings": top,
        "model": _model(row),
        "patient": _patient(entry.attributes),
        "notices": _notices(row),
        "shadow": row.shadow,
    }


@router.get("/studies", response_model=StudyPage, tags=["studies"])
def list_studies(
    principal: Viewer,
    ledger: LedgerDep,
    web: StateDep,
    state: Annotated[list[str] | None, Query(description="any of these states")] = None,
    priority: Annotated[list[str] | None, Query(description="any of these priorities")] = None,
    since: Annotated[datetime | None, Query(description="received at or after")] = None,
    source: Annotated[str | None, Query(max_length=16, description="calling AE title")] = None,
    q: Annotated[
        str | None, Query(max_length=64, description="text in accession number or patient")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> StudyPage:
    """The worklist in reading order: critical, abnormal, the rest; by score, then waiting
    time; a study waiting past the ageing time climbs one band."""
    wanted = WorklistFilter(
        states=state or (),
        priorities=priority or (),
        since=None if since is None else _epoch(since),
        calling_ae=source,
        text=q,
    )
    page = ledger.worklist(wanted, ageing_seconds=web.ageing_seconds, limit=limit, offset=offset)
    top = ledger.top_findings([e.study.study_key for e in page.entries])
    now = ledger.now()
    ledger.record_audit(
        principal.actor, "view_worklist", detail=f"{len(page.entries)} of {page.total}"
    )
    items = [StudyItem(**_item(e, top.get(e.study.study_key, []), now)) for e in page.entries]
    return StudyPage(items=items, total=page.total, limit=limit, offset=offset)


def _epoch(when: datetime) -> float:
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _image_out(image: InstanceRow, folder: Path, labels: list[str]) -> ImageOut:
    """An image, with what the worker left of it in ``folder`` for the pages."""
    return ImageOut(
        sop_instance_uid=image.sop_instance_uid,
        sop_class_uid=image.sop_class_uid,
        eligible=image.eligible,
        reason_code=image.reason_code,
        reason=image.reason,
        picture=(folder / pictures.IMAGE).is_file(),
        heatmaps=pictures.heatmap_labels(folder, labels),
        **pictures.geometry(folder),
    )


@router.get(
    "/studies/{study_uid}",
    response_model=StudyDetail,
    tags=["studies"],
    responses={404: {"model": ProblemDocument, "description": "unknown study"}},
)
def study_detail(
    study_uid: str, principal: Viewer, ledger: LedgerDep, web: StateDep
) -> StudyDetail:
    """Everything about one study: state and reason, images, findings, score and priority,
    model, results, deliveries, history. The view is audited."""
    key = safe_key(study_uid)
    page = ledger.worklist(
        WorklistFilter(), ageing_seconds=web.ageing_seconds, limit=1, offset=0, study_key=key
    )
    if not page.entries:
        raise not_found(f"study {study_uid[:80]!r}")
    entry = page.entries[0]
    ledger.record_audit(principal.actor, "view_study", key)
    now = ledger.now()
    base = _item(entry, ledger.top_findings([key]).get(key, []), now)
    found = ledger.findings_of(key)
    return StudyDetail(
        **base,
        images=[
            _image_out(
                image,
                pictures.picture_folder(web.settings.spool_path, key, image.sop_instance_uid),
                [f.label for f in found if f.sop_instance_uid == image.sop_instance_uid],
            )
            for image in ledger.instances_of(key)
        ],
        findings=[
            FindingOut(
                sop_instance_uid=f.sop_instance_uid,
                label=f.label,
                code=Code(**f.code),
                probability=f.probability,
                threshold=f.threshold,
                present=f.present,
                region=f.region,
            )
            for f in found
        ],
        results=[
            ResultOut(
                sop_instance_uid=r.sop_instance_uid,
                source_sop_instance_uid=r.source_sop_instance_uid,
                kind=r.kind,
            )
            for r in ledger.results_of(key)
        ],
        deliveries=[
            DeliveryOut(
                destination=name,
                state=d.state.value,
                attempts=d.attempts,
                last_error=d.last_error,
                next_attempt_at=_time(d.next_attempt_at),
            )
            for name, d in sorted(ledger.deliveries_of(key).items())
        ],
        history=[
            HistoryOut(at=_time(at), state=state, detail=detail)
            for at, state, detail in ledger.events_of(key)
        ],
        patient_conflicts=ledger.patient_conflict_counts([key]).get(key, 0),
    )


@router.post(
    "/studies/{study_uid}/reprocess",
    response_model=Accepted,
    status_code=202,
    tags=["studies"],
    responses={
        404: {"model": ProblemDocument, "description": "unknown study"},
        409: {"model": ProblemDocument, "description": "being analysed now, or purged"},
    },
)
def reprocess(study_uid: str, principal: Operator, ledger: LedgerDep) -> Accepted:
    """Analyse the study again; its results are sent again."""
    key = safe_key(study_uid)
    if ledger.study(key) is None:
        raise not_found(f"study {study_uid[:80]!r}")
    previous = ledger.reprocess(key)
    if previous is None:
        raise Problem(
            409,
            "study-busy",
            "Cannot reprocess now",
            "the study is being analysed now, or its images were purged",
        )
    ledger.record_audit(principal.actor, "reprocess", key, f"from {previous.value}")
    log.info("%s asked to reprocess study %s", principal.actor, log_ref(key))
    return Accepted(detail=f"the study ({previous.value}) will be analysed again")


@router.post(
    "/studies/{study_uid}/deliveries/{destination}/retry",
    response_model=Accepted,
    status_code=202,
    tags=["studies"],
    responses={
        404: {"model": ProblemDocument, "description": "unknown study"},
        409: {"model": ProblemDocument, "description": "nothing to send to that destination now"},
    },
)
def retry_delivery(
    study_uid: str, destination: str, principal: Operator, ledger: LedgerDep
) -> Accepted:
    """Send the study's results to the destination again (every result object)."""
    key = safe_key(study_uid)
    if ledger.study(key) is None:
        raise not_found(f"study {study_uid[:80]!r}")
    problem = ledger.retry_delivery(key, destination)
    if problem is not None:
        raise Problem(409, "cannot-resend", "Cannot resend now", problem)
    ledger.record_audit(principal.actor, "resend", key, f"to {destination}")
    log.info("%s asked to resend study %s to %s", principal.actor, log_ref(key), destination)
    return Accepted(detail=f"the results will be sent to {destination} again")


@router.get("/models", response_model=list[ModelOut], tags=["models"])
def list_models(principal: Viewer, web: StateDep) -> list[ModelOut]:
    """The installed model bundles; DEMO ones are untrained and say so."""
    from workers.bundles import list_bundles  # metadata only: no torch
    from workers.ensemble_config import read_ensemble_config

    config = None if web.settings.ensemble else read_ensemble_config(web.settings.models_path)
    members = web.settings.ensemble or (config.members if config is not None else [])
    weights = {member.bundle: member.weight for member in members}
    return [
        ModelOut(
            name=bundle.metadata.name,
            version=bundle.metadata.version,
            description=bundle.metadata.description,
            demo=bundle.metadata.demo,
            architecture=bundle.metadata.architecture,
            labels=[label.name for label in bundle.metadata.labels],
            thresholds={label.name: label.threshold for label in bundle.metadata.labels},
            ensemble_weight=weights.get(bundle.path.name),
            ensemble_version=config.version if config is not None else None,
            ensemble_thresholds=config.thresholds if config is not None else {},
        )
        for bundle in list_bundles(web.settings.models_path)
    ]


# --- sources and destinations -----------------------------------------------------------------


@router.get("/sources", response_model=list[SourceOut], tags=["sources"])
def list_sources(principal: Admin, ledger: LedgerDep, web: StateDep) -> list[SourceOut]:
    """Known senders: those managed here (``cxr-node aet``) and those in the configuration."""
    rows = [(rule, "ledger") for rule in ledger.list_sources()]
    rows += [(rule, "config") for rule in web.settings.sources]
    return [SourceOut(**rule.model_dump(), origin=origin) for rule, origin in rows]


@router.post(
    "/sources",
    response_model=SourceOut,
    status_code=201,
    tags=["sources"],
    responses={422: {"model": ProblemDocument, "description": "invalid AE title or route"}},
)
def add_source(body: SourceIn, principal: Admin, ledger: LedgerDep, web: StateDep) -> SourceOut:
    """Add a known sender (or replace the one with its AE title and host)."""
    known = {d.name for d in web.settings.destinations}
    unknown = sorted(set(body.destinations) - known)
    if unknown:
        raise Problem(
            422,
            "invalid-request",
            "Invalid request",
            f"unknown destination(s): {', '.join(unknown)}",
            errors=[{"field": "body.destinations", "message": "unknown destination"}],
        )
    try:
        rule = SourceRule(ae_title=body.ae_title, host=body.host, destinations=body.destinations)
    except ValidationError as exc:
        errors = [
            {
                "field": "body." + ".".join(str(part) for part in error["loc"]),
                "message": str(error["msg"]),
            }
            for error in exc.errors()
        ]
        raise Problem(
            422, "invalid-request", "Invalid request", errors[0]["message"], errors=errors
        ) from None
    new = ledger.put_source(rule)
    ledger.record_audit(
        principal.actor, "add_source" if new else "replace_source", detail=rule.ae_title
    )
    log.info("%s %s source %s", principal.actor, "added" if new else "replaced", rule.ae_title)
    return SourceOut(**rule.model_dump(), origin="ledger")


@router.delete(
    "/sources/{ae_title}",
    status_code=204,
    tags=["sources"],
    responses={404: {"model": ProblemDocument, "description": "no such source"}},
)
def remove_source(
    ae_title: str,
    principal: Admin,
    ledger: LedgerDep,
    host: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """Remove a sender managed here (those in the configuration stay)."""
    if not ledger.remove_source(ae_title.strip(), host):
        raise not_found(f"source {ae_title[:16]!r}")
    ledger.record_audit(principal.actor, "remove_source", detail=ae_title.strip())
    log.info("%s removed source %s", principal.actor, ae_title.strip())
    return Response(status_code=204)


@router.get("/destinations", response_model=list[DestinationOut], tags=["destinations"])
def list_destinations(principal: Viewer, ledger: LedgerDep, web: StateDep) -> list[DestinationOut]:
    """Each configured destination: up or down, backoff, pending deliveries, last error."""
    states = ledger.destination_states()
    answer = []
    for destination in web.settings.destinations:
        state = states.get(destination.name)
        answer.append(
            DestinationOut(
                name=destination.name,
                kind=destination.kind,
                address=destination.address,
                up=state is None or state.down_since is None,
                down_since=_time(state.down_since) if state else None,
                retry_at=_time(state.retry_at) if state else None,
                failures=state.failures if state else 0,
                pending=state.pending if state else 0,
                last_error=state.last_error if state else None,
            )
        )
    return answer


__all__ = ["authenticate", "router"]
