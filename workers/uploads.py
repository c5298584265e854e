"""Celery task: analyse a file uploaded to ``POST /api/v1/analyze`` (not a study: no ledger row,
no results sent anywhere). The answer is ``result.json`` beside the file, with the pictures the
web app shows; refusals carry their reason code, as in ``cxr-node analyze``."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from cxr_node.errors import RejectedInput
from cxr_node.logs import traceback_frames
from cxr_node.queue import UPLOAD_TASK
from cxr_node.uploads import Uploads
from workers.offline import INTERNAL_ERROR, read_source
from workers.previews import write_pictures
from workers.runtime import context

log = logging.getLogger(__name__)


@shared_task(name=UPLOAD_TASK, acks_late=True)
def analyze_upload(upload_id: str) -> None:
    """Analyse one uploaded file and write what it says (once: a redelivered message finds the
    result there and does nothing)."""
    ctx = context()
    uploads = Uploads(ctx.spool)
    try:
        path = uploads.source(upload_id)
    except ValueError:
        log.warning("upload task with an invalid id ignored")
        return
    if path is None or uploads.result(upload_id) is not None:
        return  # removed meanwhile, or done already
    result: dict[str, Any]
    try:
        source = read_source(path)
        analysed = ctx.analyzer.analyse(source)
    except RejectedInput as exc:
        result = {"analysed": False, "reason_code": exc.reason_code, "reason": exc.reason}
    except Exception as exc:  # a bug: answered, and logged with its frames
        log.error("upload %s: unexpected error: %s", upload_id[:8], traceback_frames(exc))
        result = {
            "analysed": False,
            "reason_code": INTERNAL_ERROR,
            "reason": f"internal error while analysing ({type(exc).__name__})",
        }
    else:
        heatmaps = write_pictures(ctx.spool, uploads.folder(upload_id), analysed)
        result = {
            "analysed": True,
            "analysis": analysed.analysis.model_dump(mode="json"),
            "heatmaps": heatmaps,
        }
    uploads.write_result(upload_id, result)
    log.info("upload %s analysed: %s", upload_id[:8], result.get("reason_code") or "ok")
