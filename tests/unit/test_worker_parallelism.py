"""How an analysis worker splits the CPU (workers.worker.analysis_parallelism)."""

from __future__ import annotations

import pytest

from cxr_node.settings import load_settings
from workers import worker
from workers.worker import analysis_parallelism


@pytest.mark.parametrize(
    ("cores", "on_gpu", "expected"),
    [
        (1, False, (1, 1)),
        (2, False, (3, 1)),
        (8, False, (4, 2)),
        (16, True, (16, 1)),
        (32, True, (16, 2)),
    ],
)
def test_defaults_follow_the_cores_and_the_device(
    monkeypatch: pytest.MonkeyPatch, cores: int, on_gpu: bool, expected: tuple[int, int]
) -> None:
    monkeypatch.setattr(worker.os, "cpu_count", lambda: cores)
    assert analysis_parallelism(load_settings(), on_gpu=on_gpu) == expected


def test_settings_override_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker.os, "cpu_count", lambda: 8)
    settings = load_settings(analysis_concurrency=1)
    assert analysis_parallelism(settings, on_gpu=False) == (1, 8)
    settings = load_settings(analysis_concurrency=3, torch_threads=2)
    assert analysis_parallelism(settings, on_gpu=False) == (3, 2)
