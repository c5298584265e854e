"""The one table of allowed state changes of a study and of a delivery, and its enforcement.

Every change of a study's state goes through :func:`move_study`, which checks the table, writes
the new state and its event row in the caller's transaction, and raises
:class:`IllegalTransition` (logged) for a change the table does not allow. A change that is
allowed but does not apply now (the study has moved on) is not an error: it returns None.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cxr_node.errors import CxrNodeError
from cxr_node.ledger.schema import deliveries, events, studies

log = logging.getLogger(__name__)


class StudyState(StrEnum):
    """States of a study, in the order it normally passes through them."""

    RECEIVED = "received"
    QUEUED = "queued"
    ANALYSING = "analysing"
    ANALYSED = "analysed"
    DELIVERED = "delivered"
    NOT_ELIGIBLE = "not_eligible"
    FAILED = "failed"


class DeliveryState(StrEnum):
    """States of the delivery of one study's results to one destination."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


S = StudyState
STUDY_TRANSITIONS: Mapping[StudyState | None, frozenset[StudyState]] = {
    # a study's first instance
    None: frozenset({S.RECEIVED}),
    # another image; assembled and queued; nothing in it can be analysed
    S.RECEIVED: frozenset({S.RECEIVED, S.QUEUED, S.NOT_ELIGIBLE}),
    # re-sent (message lost); claimed; out of attempts
    S.QUEUED: frozenset({S.QUEUED, S.ANALYSING, S.FAILED}),
    # re-claimed (lease expired); results; failed; an image arrived meanwhile; released or
    # re-sent (transient error, worker gone)
    S.ANALYSING: frozenset({S.ANALYSING, S.ANALYSED, S.FAILED, S.RECEIVED, S.QUEUED}),
    # every delivery done; a delivery failed for good; a new image or a reprocess request
    S.ANALYSED: frozenset({S.DELIVERED, S.FAILED, S.RECEIVED}),
    # a new image or a reprocess request; an operator resends a delivery (results kept)
    S.DELIVERED: frozenset({S.RECEIVED, S.ANALYSED}),
    S.NOT_ELIGIBLE: frozenset({S.RECEIVED}),
    # reprocess; an operator resends a delivery that failed for good (DELIVERY_FAILED only)
    S.FAILED: frozenset({S.RECEIVED, S.ANALYSED}),
}
"""From state (None: no row yet) -> the states it may change to."""

D = DeliveryState
DELIVERY_TRANSITIONS: Mapping[DeliveryState | None, frozenset[DeliveryState]] = {
    None: frozenset({D.PENDING}),  # opened when results (or a notice) are recorded
    D.PENDING: frozenset({D.PENDING, D.DELIVERED, D.FAILED}),  # retry later, done, given up
    D.DELIVERED: frozenset({D.PENDING}),  # reopened: the study was analysed again
    D.FAILED: frozenset({D.PENDING}),
}

FINAL_STUDY_STATES = frozenset({S.DELIVERED, S.NOT_ELIGIBLE, S.FAILED})
"""States in which nothing more happens to a study unless something new arrives."""

_ENTERED_AT: Mapping[StudyState, str] = {
    S.QUEUED: "queued_at",
    S.ANALYSED: "analysed_at",
    S.DELIVERED: "delivered_at",
}
"""The time column stamped when a study enters a state."""


class IllegalTransition(CxrNodeError):
    """A state change that the transition table does not allow (a bug, never data)."""

    def __init__(self, kind: str, source: str | None, target: str) -> None:
        super().__init__(f"illegal {kind} transition: {source or '(new)'} -> {target}")
        self.source = source
        self.target = target


def check_study_transition(source: StudyState | None, target: StudyState) -> None:
    """Raise (and log) IllegalTransition unless ``source -> target`` is in the table."""
    if target not in STUDY_TRANSITIONS.get(source, frozenset()):
        error = IllegalTransition("study", source, target)
        log.error("%s", error)
        raise error


def check_delivery_transition(source: DeliveryState | None, target: DeliveryState) -> None:
    """Raise (and log) IllegalTransition unless ``source -> target`` is in the table."""
    if target not in DELIVERY_TRANSITIONS.get(source, frozenset()):
        error = IllegalTransition("delivery", source, target)
        log.error("%s", error)
        raise error


def move_study(
    db: Connection,
    now: float,
    study_key: str,
    target: StudyState,
    *,
    when: Collection[StudyState],
    where: Collection[sa.ColumnElement[bool]] = (),
    values: Mapping[str, Any] | None = None,
    detail: str | None = None,
    final: bool | None = None,
) -> StudyState | None:
    """Change a study to ``target`` if it is in one of ``when`` (and matches ``where``).

    Every state in ``when`` must be allowed to reach ``target`` (else IllegalTransition).
    Writes the event row; stamps the time of entering QUEUED, ANALYSED, DELIVERED; sets
    ``finished_at`` when the study comes to rest (``final``, default: a final state).
    Returns the state it left, or None when the study is not in ``when`` now.
    """
    for source in when:
        check_study_transition(source, target)
    selector = [studies.c.study_key == study_key, *where]
    row = db.execute(sa.select(studies.c.state).where(*selector).with_for_update()).first()
    if row is None or row.state not in when:
        return None
    previous = StudyState(row.state)
    update: dict[str, Any] = {"state": target, "updated_at": now}
    if target in _ENTERED_AT:
        update[_ENTERED_AT[target]] = now
    rests = target in FINAL_STUDY_STATES if final is None else final
    update["finished_at"] = now if rests else None
    update.update(values or {})
    changed = db.execute(
        studies.update().where(*selector, studies.c.state == previous).values(**update)
    ).rowcount
    if not changed:
        return None
    note(db, now, study_key, target, detail, previous)
    return previous


def note(
    db: Connection,
    now: float,
    study_key: str,
    state: StudyState,
    detail: str | None,
    previous: StudyState | None = None,
) -> None:
    """An event row in a study's history (a state change, or something that happened in one)."""
    db.execute(
        events.insert().values(
            study_key=study_key,
            at=now,
            state=state,
            from_state=previous,
            detail=detail,
        )
    )


def move_delivery(
    db: Connection,
    study_key: str,
    destination: str,
    target: DeliveryState,
    *,
    when: Collection[DeliveryState],
    where: Collection[sa.ColumnElement[bool]] = (),
    values: Mapping[str, Any],
) -> DeliveryState | None:
    """Change one delivery to ``target`` if it is in one of ``when``; the state it left, or None."""
    for source in when:
        check_delivery_transition(source, target)
    selector = [
        deliveries.c.study_key == study_key,
        deliveries.c.destination == destination,
        *where,
    ]
    row = db.execute(sa.select(deliveries.c.state).where(*selector)).first()
    if row is None or row.state not in when:
        return None
    previous = DeliveryState(row.state)
    changed = db.execute(
        deliveries.update()
        .where(*selector, deliveries.c.state == previous)
        .values(state=target, **values)
    ).rowcount
    return previous if changed else None
