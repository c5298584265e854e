"""serve asks glibc for two malloc arenas (cxr_node.memory)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cxr_node import memory


def test_the_arena_limit_is_set_on_glibc() -> None:
    # in a fresh process: the setting is process-wide
    code = "from cxr_node.memory import limit_malloc_arenas; print(limit_malloc_arenas())"
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.strip() == ("True" if sys.platform.startswith("linux") else "False")


def test_an_operators_malloc_arena_max_stands(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert memory.limit_malloc_arenas() is False
