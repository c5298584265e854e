"""The ledger's read model for local validation and drift (issue 14): per analysed study and
label the image with the highest probability; per ISO week and finding the rates, means and
quantiles; the last 7 days for ``/metrics`` (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from cxr_node.jobs import CodedConcept, Finding, ImageAnalysis, ModelInfo, Priority
from cxr_node.ledger import Ledger, ManualClock, StudyAttributes
from cxr_node.ledger.validation import drift_rows, iso_week, quantile, week_start
from tests.unit._studies import CHEST, seed_study

DAY = 86400.0
MONDAY_W49 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC).timestamp()
"""Monday 30 November 2026, 09:00 UTC: ISO week 2026-W49."""

Probabilities = dict[str, float]
"""Label -> probability for one image; positive at 0.5 and over."""


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(MONDAY_W49)


@pytest.fixture
def ledger(ledger_url: str, clock: ManualClock) -> Iterator[Ledger]:
    opened = Ledger(ledger_url, clock=clock)
    yield opened
    opened.close()


def _finding(label: str, probability: float, threshold: float = 0.5) -> Finding:
    return Finding(
        label=label,
        code=CodedConcept(value="0", scheme="99TEST", meaning=label),
        probability=probability,
        threshold=threshold,
        positive=probability >= threshold,
    )


def analyse(
    ledger: Ledger,
    key: str,
    images: list[Probabilities],
    *,
    accession: str | None = "ACC-1",
    version: str = "1.0",
    shadow: bool = False,
) -> None:
    """Receive a study of ``len(images)`` images and record its analysis, each image's findings
    from ``images`` (threshold 0.5, or 0.6 for the second image, to tell them apart)."""
    for n in range(len(images)):
        ledger.record_instance(
            study_key=key,
            study_uid=key,
            sop_instance_uid=f"{key}.{n + 1}",
            sop_class_uid=CHEST,
            path=f"{key}/{n + 1}.dcm",
            size=10,
            eligible=True,
            reason_code=None,
            reason=None,
            calling_ae="MODALITY",
            destinations=[],
            attributes=StudyAttributes(accession_number=accession, patient_name="DOE^JOHN"),
            shadow=shadow,
        )
    ledger.mark_queued(key)
    token = ledger.claim(key, lease_seconds=60)
    model = ModelInfo(name="cxr", version=version, demo=False, members=[], device_uid="1.2")
    analyses = [
        ImageAnalysis(
            sop_instance_uid=f"{key}.{n + 1}",
            findings=[_finding(label, p, 0.5 + 0.1 * n) for label, p in image.items()],
            abnormality_score=max(image.values()),
            priority=Priority.ABNORMAL if max(image.values()) >= 0.5 else Priority.ROUTINE,
            model=model,
        )
        for n, image in enumerate(images)
    ]
    assert ledger.record_results(key, [], [], token, analyses=analyses)


def test_each_label_takes_the_image_with_the_highest_probability(ledger: Ledger) -> None:
    analyse(
        ledger,
        "1.1",
        [{"Effusion": 0.7, "Nodule": 0.2}, {"Effusion": 0.55, "Nodule": 0.65}],
        accession="ACC-11",
        version="2.3",
        shadow=True,
    )
    (study,) = ledger.analysed_findings()
    assert study.study_key == "1.1" and study.study_uid == "1.1"
    assert study.accession_number == "ACC-11"
    assert (study.model_name, study.model_version, study.model_demo) == ("cxr", "2.3", False)
    assert study.shadow is True
    assert (study.abnormality_score, study.priority) == (0.7, "abnormal")
    assert study.analysed_at == MONDAY_W49
    assert study.findings == {
        "Effusion": (0.7, 0.5, True),  # the first image's
        "Nodule": (0.65, 0.6, True),  # the second image's, with its threshold
    }
    assert "ACC-11" not in repr(study)  # patient data stays out of reprs (and so of logs)


def test_only_analysed_studies_since_the_given_time_oldest_first(
    ledger: Ledger, clock: ManualClock
) -> None:
    seed_study(ledger, "2.0", priority=None)  # received, not analysed: left out
    analyse(ledger, "2.1", [{"Effusion": 0.1}], accession=None)
    clock.advance(DAY)
    analyse(ledger, "2.2", [{"Effusion": 0.9}])
    keys = [s.study_key for s in ledger.analysed_findings()]
    assert keys == ["2.1", "2.2"]
    assert ledger.analysed_findings()[0].accession_number is None
    assert ledger.analysed_findings()[0].shadow is False
    assert [s.study_key for s in ledger.analysed_findings(since=MONDAY_W49 + DAY)] == ["2.2"]


def test_weekly_drift_groups_studies_by_iso_week_and_finding(
    ledger: Ledger, clock: ManualClock
) -> None:
    clock.advance(-7 * DAY)  # week 48
    analyse(ledger, "3.1", [{"Effusion": 0.2}])
    clock.advance(7 * DAY)  # week 49
    analyse(ledger, "3.2", [{"Effusion": 0.1, "Nodule": 0.8}])
    analyse(ledger, "3.3", [{"Effusion": 0.3}, {"Effusion": 0.9}])  # positive by its 2nd image
    analyse(ledger, "3.4", [{"Effusion": 0.5}])
    clock.advance(6 * DAY + 14 * 3600)  # Sunday 23:00, still week 49
    analyse(ledger, "3.5", [{"Effusion": 0.7}])
    clock.advance(3600)  # Monday 00:00: week 50
    analyse(ledger, "3.6", [{"Effusion": 0.4}])
    rows = ledger.weekly_drift(weeks=2)
    assert [(r.week, r.label, r.studies, r.positives) for r in rows] == [
        ("2026-W49", "Effusion", 4, 3),
        ("2026-W49", "Nodule", 1, 1),
        ("2026-W50", "Effusion", 1, 0),
    ]
    effusion = rows[0]  # per-study maxima 0.1, 0.9, 0.5, 0.7
    assert effusion.positive_rate == 0.75
    assert effusion.mean_probability == pytest.approx(0.55)
    assert effusion.score_quantiles == pytest.approx((0.22, 0.6, 0.84))
    everything = ledger.weekly_drift(weeks=3)
    assert [r.week for r in everything] == ["2026-W48", "2026-W49", "2026-W49", "2026-W50"]
    earlier = ledger.weekly_drift(weeks=1, now=MONDAY_W49)
    assert [(r.week, r.studies) for r in earlier] == [
        ("2026-W49", 3),  # analysed by 09:00 on Monday, as the clock said then
        ("2026-W49", 1),
    ]
    with pytest.raises(ValueError):
        ledger.weekly_drift(weeks=0)


def test_finding_figures_cover_the_last_seven_days_only(ledger: Ledger, clock: ManualClock) -> None:
    analyse(ledger, "4.1", [{"Effusion": 0.95}])
    clock.advance(8 * DAY)
    analyse(ledger, "4.2", [{"Effusion": 0.6, "Nodule": 0.1}])
    analyse(ledger, "4.3", [{"Effusion": 0.2}])
    figures = ledger.finding_figures()
    assert figures.window_seconds == 7 * DAY
    effusion = figures.by_finding["Effusion"]
    assert (effusion.studies, effusion.positives, effusion.positive_rate) == (2, 1, 0.5)
    assert effusion.mean_probability == pytest.approx(0.4)
    assert figures.by_finding["Nodule"].positive_rate == 0.0
    assert figures.abnormality_score.count == 2
    assert figures.abnormality_score.total == pytest.approx(0.8)
    assert dict(figures.abnormality_score.buckets)[0.2] == 1


def test_weeks_quantiles_and_their_edges() -> None:
    assert iso_week(datetime(2027, 1, 1, tzinfo=UTC).timestamp()) == "2026-W53"
    assert iso_week(datetime(2027, 1, 4, tzinfo=UTC).timestamp()) == "2027-W01"
    sunday_night = datetime(2026, 12, 6, 23, 59, tzinfo=UTC).timestamp()
    assert week_start(sunday_night) == datetime(2026, 11, 30, tzinfo=UTC).timestamp()
    assert quantile([0.4], 0.9) == 0.4
    assert quantile([0.0, 1.0], 0.1) == pytest.approx(0.1)
    assert drift_rows([]) == []
