"""Per-process worker state: settings, ledger, spool, queue and the warm models."""

from __future__ import annotations

from dataclasses import dataclass

from cxr_node.ledger import Ledger
from cxr_node.queue import JobQueue
from cxr_node.settings import Settings
from cxr_node.spool import Spool
from workers.analysis import Analyzer


@dataclass
class WorkerContext:
    """Everything a task needs, built once when the worker starts."""

    settings: Settings
    ledger: Ledger
    spool: Spool
    queue: JobQueue
    analyzer: Analyzer


_context: WorkerContext | None = None


def configure(settings: Settings, queue: JobQueue) -> WorkerContext:
    """Build the context (loads the models: they stay warm for the process's life)."""
    global _context
    _context = WorkerContext(
        settings=settings,
        ledger=Ledger(settings.ledger),
        spool=Spool(settings.spool_path),
        queue=queue,
        analyzer=Analyzer(settings),
    )
    return _context


def context() -> WorkerContext:
    """The context of this worker process."""
    if _context is None:
        raise RuntimeError("worker context used before configure()")
    return _context
