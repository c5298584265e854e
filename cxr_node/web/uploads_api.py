"""``POST /api/v1/analyze``: a DICOM, PNG or JPEG file analysed by a worker and answered as
findings with links to its pictures, without a study on the worklist (the seed projects' Open
API). The web app never runs the model: it keeps the file, queues the job and waits for the
worker's answer (at most ``wait`` seconds; after that, ``GET /api/v1/analyses/{id}``)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, File, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse

from cxr_node import pictures
from cxr_node.ledger import Ledger
from cxr_node.queue import JobQueue
from cxr_node.spool import Spool
from cxr_node.uploads import Uploads
from cxr_node.web.auth import Principal, ledger_of, requires
from cxr_node.web.credentials import Role
from cxr_node.web.pictures_api import PNG_RESPONSES, png_file
from cxr_node.web.problems import Problem, ProblemDocument, not_found
from cxr_node.web.schemas import (
    AI_NOTICE,
    DEMO_NOTICE,
    Code,
    ModelSummary,
    UploadAnalysis,
    UploadFinding,
)
from cxr_node.web.state import WebState, web_state

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["analyze"])
Operator = Annotated[Principal, Depends(requires(Role.OPERATOR))]
StateDep = Annotated[WebState, Depends(web_state)]
LedgerDep = Annotated[Ledger, Depends(ledger_of)]
MAGIC = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"))


def _uploads(web: WebState) -> Uploads:
    return Uploads(Spool(web.settings.spool_path))


def _queue(request: Request, web: WebState) -> JobQueue:
    queue: JobQueue | None = getattr(request.app.state, "queue", None)
    if queue is None:
        queue = request.app.state.queue = JobQueue(web.settings)
    return queue


def _suffix(name: str | None, head: bytes) -> str:
    lowered = (name or "").lower()
    for suffix in (".dcm", ".png", ".jpg", ".jpeg"):
        if lowered.endswith(suffix):
            return suffix
    if head[128:132] == b"DICM":
        return ".dcm"
    for magic, suffix in MAGIC:
        if head.startswith(magic):
            return suffix
    raise Problem(
        415,
        "unsupported-media",
        "Unsupported file",
        "send a DICOM Part 10 file, a PNG or a JPEG",
    )


def _answer(web: WebState, upload_id: str, result: dict[str, Any] | None) -> UploadAnalysis:
    if result is None:
        return UploadAnalysis(id=upload_id, status="pending")
    if not result.get("analysed"):
        raise Problem(
            422,
            "not-analysable",
            "Not analysable",
            f"{result.get('reason_code')}: {result.get('reason')}",
        )
    analysis = result["analysis"]
    model = analysis["model"]
    base = f"/api/v1/analyses/{upload_id}"
    return UploadAnalysis(
        id=upload_id,
        status="done",
        abnormality_score=analysis["abnormality_score"],
        priority=analysis["priority"],
        findings=[
            UploadFinding(
                label=f["label"],
                code=Code(**f["code"]),
                probability=f["probability"],
                threshold=f["threshold"],
                present=f["positive"],
                region=f.get("region"),
            )
            for f in analysis["findings"]
        ],
        model=ModelSummary(name=model["name"], version=model["version"], demo=model["demo"]),
        image_url=f"{base}/image.png",
        heatmap_urls={
            label: f"{base}/heatmap.png?finding={quote(label)}" for label in result["heatmaps"]
        },
        notices=[AI_NOTICE, DEMO_NOTICE] if model["demo"] else [AI_NOTICE],
    )


_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": UploadAnalysis, "description": "not done within `wait`: ask again later"},
    404: {"model": ProblemDocument, "description": "unknown or expired analysis"},
    413: {"model": ProblemDocument, "description": "larger than max_instance_bytes"},
    415: {"model": ProblemDocument, "description": "not DICOM, PNG or JPEG"},
    422: {"model": ProblemDocument, "description": "invalid request, or not analysable (why)"},
}


@router.post("/analyze", response_model=UploadAnalysis, responses=_RESPONSES)
async def analyze(
    request: Request,
    response: Response,
    principal: Operator,
    ledger: LedgerDep,
    web: StateDep,
    file: Annotated[UploadFile, File(description="a DICOM Part 10 file, a PNG or a JPEG")],
    wait: Annotated[float, Query(ge=0, le=120, description="seconds to wait for the answer")] = 30,
) -> UploadAnalysis:
    """Analyse one file without storing it in the worklist; findings and picture links."""
    limit = web.settings.max_instance_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise Problem(413, "too-large", "Request too large", f"at most {limit} bytes")
    if not data:
        raise Problem(
            422,
            "invalid-request",
            "Invalid request",
            "the file is empty",
            errors=[{"field": "body.file", "message": "empty file"}],
        )
    uploads = _uploads(web)
    upload_id = await asyncio.to_thread(uploads.save, data, _suffix(file.filename, data[:132]))
    await asyncio.to_thread(_queue(request, web).submit_upload, upload_id)
    await asyncio.to_thread(ledger.record_audit, principal.actor, "analyze_upload", None, upload_id)
    log.info("%s uploaded a file for analysis (%s)", principal.actor, upload_id[:8])
    deadline = time.monotonic() + wait
    while True:
        result = uploads.result(upload_id)
        if result is not None or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.2)
    answer = _answer(web, upload_id, result)
    if answer.status == "pending":
        response.status_code = 202
        response.headers["Location"] = f"/api/v1/analyses/{upload_id}"
    return answer


def _known(web: WebState, upload_id: str) -> Uploads:
    uploads = _uploads(web)
    try:
        known = uploads.exists(upload_id)
    except ValueError:
        known = False
    if not known:
        raise not_found(f"analysis {upload_id[:32]!r}")
    return uploads


@router.get("/analyses/{upload_id}", response_model=UploadAnalysis, responses=_RESPONSES)
def analysis(
    upload_id: str, response: Response, principal: Operator, web: StateDep
) -> UploadAnalysis:
    """An uploaded file's analysis (202 while a worker is still on it)."""
    answer = _answer(web, upload_id, _known(web, upload_id).result(upload_id))
    if answer.status == "pending":
        response.status_code = 202
    return answer


@router.get("/analyses/{upload_id}/image.png", response_class=FileResponse, responses=PNG_RESPONSES)
def upload_image(upload_id: str, principal: Operator, web: StateDep) -> FileResponse:
    """The uploaded image as analysed."""
    path = _known(web, upload_id).folder(upload_id) / pictures.IMAGE
    return png_file(path, "the picture (not analysed yet, or not analysable)", "private")


@router.get(
    "/analyses/{upload_id}/heatmap.png", response_class=FileResponse, responses=PNG_RESPONSES
)
def upload_heatmap(
    upload_id: str,
    principal: Operator,
    web: StateDep,
    finding: Annotated[str, Query(max_length=64)],
) -> FileResponse:
    """A finding's Grad-CAM overlay of the uploaded image."""
    path = _known(web, upload_id).folder(upload_id) / pictures.heatmap_name(finding)
    return png_file(path, f"a heatmap of {finding[:64]!r}", "private")
