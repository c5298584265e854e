"""A background beat that keeps a lease (an analysis claim, a destination) or a worker alive.

The holder of a short lease renews it every ``interval`` seconds while it works; if the holder
dies, the beat stops and the lease lapses, so another worker takes over within a lease's length
instead of waiting out a long fixed timeout. A beat that fails (the database is busy for a
moment) is logged and tried again at the next interval.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType

from cxr_node.logs import describe_exception

log = logging.getLogger(__name__)


class Heartbeat:
    """Calls ``beat`` every ``interval`` seconds in a daemon thread until stopped.

    ``beat`` returns False when the lease is lost; then the beat stops and ``lost`` is set,
    for the holder to check before it writes.
    """

    def __init__(self, name: str, interval: float, beat: Callable[[], bool]) -> None:
        self.lost = threading.Event()
        self._interval = interval
        self._beat = beat
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{name}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop beating (the holder is done)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                alive = self._beat()
            except Exception as exc:
                log.warning(
                    "%s: beat failed (%s); trying again", self._thread.name, describe_exception(exc)
                )
                continue
            if not alive:
                self.lost.set()
                return
