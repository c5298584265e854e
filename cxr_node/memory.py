"""Keep serve's resident memory flat while many associations come and go.

Each pynetdicom association runs in two threads, and glibc gives busy threads their own malloc
arenas (up to 8 per core), whose freed pages it rarely hands back: over 2,000 hostile cases
(bench/fuzz.py, seed 7) serve's resident size climbed from 107 to 188 MB and stayed there; with
two arenas it stayed at about 121 MB. ``MALLOC_ARENA_MAX`` in the environment says the same but
must be set before the process starts, so serve asks glibc itself (``mallopt``, a public glibc
call) before it starts any thread. Elsewhere (another C library, another system) nothing
changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

M_ARENA_MAX = -8
"""glibc's ``mallopt`` parameter for the number of arenas (malloc.h)."""

SERVE_ARENAS = 2


def limit_malloc_arenas(arenas: int = SERVE_ARENAS) -> bool:
    """Ask glibc for at most ``arenas`` malloc arenas; False where that cannot be done, or when
    ``MALLOC_ARENA_MAX`` is set (the operator's choice stands)."""
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_ARENA_MAX, arenas))
    if not done:
        log.info("malloc arenas could not be limited")
    return done


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the system (glibc ``malloc_trim(0)``, public API):
    after a burst of large, short-lived allocations (many associations at once, big headers)
    glibc keeps their pages resident until asked. Cheap when there is little to give back;
    serve calls it once a minute. False where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return bool(trim(0))
