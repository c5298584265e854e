"""``/metrics`` in the Prometheus text format: what the ledger counts (every process's work:
studies, deliveries, durations), what the model found over the last 7 days (per finding label:
the positive rate, the mean probability; the abnormality scores), this process's C-STORE answers
by status, the spool's free space and the Python process. No label holds patient data or
UIDs."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from cxr_node.ledger import Ledger
from cxr_node.ledger.metrics import Histogram
from cxr_node.ledger.validation import FindingFigures

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _histogram(name: str, documentation: str, figures: Histogram) -> HistogramMetricFamily:
    buckets = [
        ("+Inf" if bound == float("inf") else f"{bound:g}", count)
        for bound, count in figures.buckets
    ]
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=figures.total)


class LedgerCollector(Collector):
    """Collected from the ledger at each scrape."""

    def __init__(self, ledger: Ledger, spool: Path) -> None:
        self._ledger = ledger
        self._spool = spool

    def collect(self) -> Iterator[Metric]:
        figures = self._ledger.figures()
        studies = GaugeMetricFamily(
            "cxr_studies", "studies in the ledger by state", labels=["state"]
        )
        for state, count in sorted(figures.studies_by_state.items()):
            studies.add_metric([state], count)
        yield studies
        finished = CounterMetricFamily(
            "cxr_studies_finished",
            "studies that came to rest (delivered, not eligible, failed) by reason code",
            labels=["state", "reason_code"],
        )
        for (state, reason), count in sorted(figures.finished_by_reason.items()):
            finished.add_metric([state, reason], count)
        yield finished
        deliveries = GaugeMetricFamily(
            "cxr_deliveries",
            "deliveries by destination and outcome (pending, delivered, failed)",
            labels=["destination", "state"],
        )
        for (destination, state), count in sorted(figures.deliveries.items()):
            deliveries.add_metric([destination, state], count)
        yield deliveries
        yield GaugeMetricFamily(
            "cxr_destinations_down",
            "destinations that could not be reached at their last attempt",
            value=figures.destinations_down,
        )
        yield GaugeMetricFamily(
            "cxr_analysis_queue_depth",
            "studies waiting for an analysis worker (queued in the ledger)",
            value=figures.studies_by_state.get("queued", 0),
        )
        yield _histogram(
            "cxr_receipt_to_analysed_seconds",
            "seconds from a study's first image to its analysis",
            figures.to_analysed,
        )
        yield _histogram(
            "cxr_receipt_to_delivered_seconds",
            "seconds from a study's first image to its results delivered everywhere",
            figures.to_delivered,
        )
        yield _histogram(
            "cxr_analysis_seconds",
            "seconds from a worker's claim of a study to its results",
            figures.analysis,
        )
        yield from _finding_metrics(self._ledger.finding_figures())
        where = self._spool
        while not where.exists() and where != where.parent:
            where = where.parent  # not made yet: the file system it will be on
        try:
            free = shutil.disk_usage(where).free
        except OSError:
            return
        yield GaugeMetricFamily(
            "cxr_spool_free_bytes", "free bytes on the spool's file system", value=free
        )


def _finding_metrics(figures: FindingFigures) -> Iterator[Metric]:
    """Drift at a glance, over the studies analysed in the window (7 days): per finding label
    (the only label: no patient data), and the studies' abnormality scores."""
    rate = GaugeMetricFamily(
        "cxr_finding_positive_rate_7d",
        "fraction of the studies analysed in the last 7 days positive for the finding",
        labels=["finding"],
    )
    mean = GaugeMetricFamily(
        "cxr_finding_probability_mean_7d",
        "mean probability of the finding (the study's highest) over the last 7 days",
        labels=["finding"],
    )
    count = GaugeMetricFamily(
        "cxr_finding_studies_7d",
        "studies analysed for the finding in the last 7 days",
        labels=["finding"],
    )
    for label, figure in figures.by_finding.items():
        rate.add_metric([label], figure.positive_rate)
        mean.add_metric([label], figure.mean_probability)
        count.add_metric([label], figure.studies)
    yield rate
    yield mean
    yield count
    yield _histogram(
        "cxr_abnormality_score_7d",
        "abnormality scores of the studies analysed in the last 7 days",
        figures.abnormality_score,
    )


def exposition(registry: CollectorRegistry) -> bytes:
    """This process's metrics (C-STORE answers, the Python process) and the ledger's."""
    return generate_latest(REGISTRY) + generate_latest(registry)


def ledger_registry(ledger: Ledger, spool: Path) -> CollectorRegistry:
    """A registry holding the ledger's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(ledger, spool))
    return registry
