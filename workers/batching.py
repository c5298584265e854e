"""Dynamic batching of inference: images that several analyses want at about the same time go
through the networks in one forward pass per member (the one place batching lives).

Each analysis thread hands its image to :meth:`InferenceBatcher.infer` and waits; a single
batching thread gathers up to ``max_batch`` images, or what came within ``max_batch_wait_ms``
of the first, runs :meth:`workers.ensemble.Ensemble.infer_many` once, and gives each image its
own :class:`~workers.ensemble.Inference` (the same numbers as alone: the networks are in eval
mode, so an image's outputs do not depend on its batch). With ``max_batch`` 1 there is no thread
and no wait. Claims, leases and delivery do not change: they belong to each study's task.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future

import torch

from workers.ensemble import Ensemble, Inference

log = logging.getLogger(__name__)


def default_max_batch(max_batch: int | None, device: torch.device, concurrency: int) -> int:
    """The batch size: as configured, else 1 on a CPU and the analysis concurrency on a GPU."""
    if max_batch is not None:
        return max_batch
    return concurrency if device.type == "cuda" else 1


class InferenceBatcher:
    """Gathers single-image inferences from many threads into batched forward passes."""

    def __init__(self, ensemble: Ensemble, max_batch: int = 1, max_batch_wait_ms: float = 5.0):
        self.ensemble = ensemble
        self.max_batch = max(1, max_batch)
        self.max_wait = max(0.0, max_batch_wait_ms) / 1000.0
        self.forward_passes = 0
        self.images = 0
        self._queue: queue.Queue[tuple[torch.Tensor, Future[Inference]] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def infer(self, batch: torch.Tensor) -> Inference:
        """One image's inference (``batch`` is 1 x C x S x S), batched with others waiting."""
        if self.max_batch == 1:
            self.forward_passes += 1
            self.images += 1
            return self.ensemble.infer(batch)
        self._start()
        answer: Future[Inference] = Future()
        self._queue.put((batch, answer))
        return answer.result()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="inference-batcher", daemon=True
                )
                self._thread.start()

    def _gather(self, first: tuple[torch.Tensor, Future[Inference]]) -> list[
        tuple[torch.Tensor, Future[Inference]]
    ]:  # fmt: skip
        items = [first]
        deadline = time.monotonic() + self.max_wait
        while len(items) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = (
                    self._queue.get(timeout=max(remaining, 0.0))
                    if remaining > 0
                    else (self._queue.get_nowait())
                )
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # stop after this batch
                break
            items.append(item)
        return items

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            items = self._gather(first)
            try:
                inferences = self.ensemble.infer_many(torch.cat([batch for batch, _ in items]))
            except BaseException as exc:  # each waiting analysis gets the error, as alone
                for _, answer in items:
                    answer.set_exception(exc)
                continue
            self.forward_passes += 1
            self.images += len(items)
            for (_, answer), inference in zip(items, inferences, strict=True):
                answer.set_result(inference)

    def close(self) -> None:
        """Stop the batching thread once the queued images are done."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(10)
            self._thread = None
