"""Which studies each open association has sent, so that a release can end a study at once.

A sender that releases its association normally (A-RELEASE, PS3.8 7.2) has sent all it meant
to send in it. A study is then complete unless another open association has also sent images of
it; aborted associations end nothing (the quiet period still applies to their studies).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

StudiesComplete = Callable[[list[str]], None]
"""Told the keys of studies whose senders have released their associations."""


class SenderSessions:
    """Study keys per open association; thread-safe (each association has its own thread)."""

    def __init__(self, on_complete: StudiesComplete) -> None:
        self._on_complete = on_complete
        self._studies: dict[int, set[str]] = {}
        self._lock = threading.Lock()

    def saw(self, association: Any, study_key: str) -> None:
        """An instance of ``study_key`` was stored over ``association``."""
        with self._lock:
            self._studies.setdefault(id(association), set()).add(study_key)

    def released(self, event: Any) -> None:
        """``evt.EVT_RELEASED``: its studies are complete unless another association has them."""
        with self._lock:
            mine = self._studies.pop(id(event.assoc), set())
            still_open = set().union(*self._studies.values()) if self._studies else set()
            complete = sorted(mine - still_open)
        if complete:
            self._on_complete(complete)

    def ended_without_release(self, event: Any) -> None:
        """``evt.EVT_ABORTED`` or ``evt.EVT_CONN_CLOSE``: forget the association, end nothing."""
        with self._lock:
            self._studies.pop(id(event.assoc), None)

    def open_associations(self) -> int:
        """How many associations have stored something and are still open."""
        with self._lock:
            return len(self._studies)
