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


def test_free_heap_pages_go_back_to_the_system() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    code = (
        "from pathlib import Path\n"
        "from cxr_node.memory import release_free_memory\n"
        "def rss():\n"
        "    status = Path('/proc/self/status').read_text().splitlines()\n"
        "    return next(int(l.split()[1]) for l in status if l.startswith('VmRSS:'))\n"
        "chunks = [bytearray(64 * 1024) for _ in range(2000)]  # 128 MB below mmap's threshold\n"
        "kept = chunks[1::2]  # every other one stays: the freed pages sit inside the heap\n"
        "del chunks\n"
        "before = rss(); release_free_memory(); print(before - rss())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(done.stdout) > 30 * 1024  # about 60 MB of freed pages handed back (KiB)
