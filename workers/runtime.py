"""Per-process worker state: settings, ledger, spool, queue, and the role's own resources.

An analysis worker holds the warm models; a delivery worker holds the association pool and
never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cxr_node.ledger import Ledger
from cxr_node.queue import JobQueue
from cxr_node.settings import Settings
from cxr_node.spool import Spool
from workers.deliver.dicom import AssociationPool

if TYPE_CHECKING:
    from workers.analysis import Analyzer
    from workers.pipeline import Stage


@dataclass
class WorkerContext:
    """Everything a task needs, built once when the worker starts."""

    settings: Settings
    ledger: Ledger
    spool: Spool
    queue: JobQueue
    analyzer_instance: Analyzer | None = None
    pool_instance: AssociationPool | None = None
    worker_id: str | None = None
    """This worker's name in the ledger's ``workers`` table (its Celery hostname)."""
    pipeline_stages: list[Stage] | None = None

    @property
    def pipeline(self) -> list[Stage]:
        """The analysis pipeline's stages over this worker's models and spool (composed once)."""
        if self.pipeline_stages is None:
            from workers.pipeline import compose  # torch: analysis workers only

            self.pipeline_stages = compose(self.analyzer, self.spool)
        return self.pipeline_stages

    @property
    def analyzer(self) -> Analyzer:
        """The warm models (analysis workers only)."""
        if self.analyzer_instance is None:
            raise RuntimeError("this worker has no models: it is not an analysis worker")
        return self.analyzer_instance

    @property
    def pool(self) -> AssociationPool:
        """Open associations to destinations (delivery workers only)."""
        if self.pool_instance is None:
            raise RuntimeError("this worker has no association pool: it is not a delivery worker")
        return self.pool_instance


_context: WorkerContext | None = None


def configure(
    settings: Settings,
    queue: JobQueue,
    *,
    analyzer: Analyzer | None = None,
    pool: AssociationPool | None = None,
    worker_id: str | None = None,
) -> WorkerContext:
    """Build this process's context once, at worker start."""
    global _context
    _context = WorkerContext(
        settings=settings,
        ledger=Ledger(settings.ledger),
        spool=Spool(settings.spool_path),
        queue=queue,
        analyzer_instance=analyzer,
        pool_instance=pool,
        worker_id=worker_id,
    )
    return _context


def context() -> WorkerContext:
    """The context of this worker process."""
    if _context is None:
        raise RuntimeError("worker context used before configure()")
    return _context
