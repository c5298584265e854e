"""The pictures of a study's images (``workers.previews`` writes them): the radiograph as
analysed and each explained finding's Grad-CAM overlay, for the study page and API clients."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse

from cxr_node import pictures
from cxr_node.ledger import Ledger
from cxr_node.spool import safe_key
from cxr_node.web.auth import Principal, ledger_of, requires
from cxr_node.web.credentials import Role
from cxr_node.web.problems import ProblemDocument, not_found
from cxr_node.web.state import WebState, web_state

router = APIRouter(prefix="/api/v1", tags=["studies"])
Viewer = Annotated[Principal, Depends(requires(Role.VIEWER))]
LedgerDep = Annotated[Ledger, Depends(ledger_of)]
StateDep = Annotated[WebState, Depends(web_state)]

PNG_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "a PNG"},
    404: {"model": ProblemDocument, "description": "unknown study, image or finding"},
}


def png_file(path: Path, what: str, cache: str = "private, max-age=300") -> FileResponse:
    """A picture, or 404 saying ``what`` is missing."""
    if not path.is_file():
        raise not_found(what)
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": cache})


def _folder(web: WebState, ledger: Ledger, study_uid: str, sop_uid: str) -> Path:
    key = safe_key(study_uid)
    if not any(i.sop_instance_uid == sop_uid for i in ledger.instances_of(key)):
        raise not_found(f"image {sop_uid[:80]!r} of study {study_uid[:80]!r}")
    return pictures.picture_folder(web.settings.spool_path, key, sop_uid)


@router.get(
    "/studies/{study_uid}/images/{sop_instance_uid}/image.png",
    response_class=FileResponse,
    responses=PNG_RESPONSES,
)
def image_png(
    study_uid: str, sop_instance_uid: str, principal: Viewer, ledger: LedgerDep, web: StateDep
) -> FileResponse:
    """The radiograph as the analysis displayed it (windowed), at most 1024 pixels a side."""
    folder = _folder(web, ledger, study_uid, sop_instance_uid)
    return png_file(folder / pictures.IMAGE, "the image's picture (not analysed, or purged)")


@router.get(
    "/studies/{study_uid}/images/{sop_instance_uid}/heatmap.png",
    response_class=FileResponse,
    responses=PNG_RESPONSES,
)
def heatmap_png(
    study_uid: str,
    sop_instance_uid: str,
    principal: Viewer,
    ledger: LedgerDep,
    web: StateDep,
    finding: Annotated[
        str | None, Query(max_length=64, description="the finding's label; default: the first")
    ] = None,
) -> FileResponse:
    """A finding's Grad-CAM map as a colour overlay (palette PNG with alpha) with the picture's
    aspect, at most 256 pixels a side: the page stretches it over the picture."""
    folder = _folder(web, ledger, study_uid, sop_instance_uid)
    if finding is None:
        explained = sorted(folder.glob("heatmap-*.png")) if folder.is_dir() else []
        if not explained:
            raise not_found("a heatmap of this image")
        return png_file(explained[0], "a heatmap of this image")
    return png_file(folder / pictures.heatmap_name(finding), f"a heatmap of {finding[:64]!r}")
