"""The delivery retry schedule (workers.delivery.backoff_seconds)."""

from __future__ import annotations

from workers.delivery import backoff_seconds


def test_backoff_doubles_from_the_initial_wait_up_to_the_ceiling() -> None:
    waits = [backoff_seconds(n, initial=2.0, ceiling=300.0) for n in range(1, 11)]
    assert waits == [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert backoff_seconds(0, initial=2.0, ceiling=300.0) == 2.0
    assert backoff_seconds(3, initial=1.0, ceiling=5.0) == 4.0
    assert backoff_seconds(4, initial=1.0, ceiling=5.0) == 5.0
