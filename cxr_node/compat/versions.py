"""Which release series of pydicom, highdicom, pynetdicom and kombu the workarounds were
written for, and the registry of what an installed workaround replaced.

Part of :mod:`cxr_node.compat`: each workaround says why it exists and how it falls back.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import re
from typing import Any, TypeVar

from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

D = TypeVar("D", bound=Dataset)


SUPPORTED_PYDICOM_VERSIONS: tuple[tuple[int, ...], ...] = ((3, 0),)
"""pydicom release series (major, minor) the pydicom workarounds were checked against: 3.0.x."""
SUPPORTED_HIGHDICOM_VERSIONS: tuple[tuple[int, ...], ...] = ((0, 28),)
"""highdicom series the SR workarounds were checked against: 0.28.x."""
SUPPORTED_PYNETDICOM_VERSIONS: tuple[tuple[int, ...], ...] = ((3, 0),)
"""pynetdicom series the socket fix was checked against: 3.0.x."""
SUPPORTED_KOMBU_VERSIONS: tuple[tuple[int, ...], ...] = ((5,),)
"""kombu series the transport workarounds were checked against: 5.x."""

_FELL_BACK: set[str] = set()


@functools.cache
def installed_version(distribution: str) -> tuple[int, ...] | None:
    """The leading numeric parts of an installed distribution's version (``3.0.2`` -> (3, 0,
    2); ``5.7.0rc1`` -> (5, 7, 0)), or None when it is not installed."""
    try:
        text = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    numbers: list[int] = []
    for part in text.split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        numbers.append(int(digits.group()))
        if digits.group() != part:
            break
    return tuple(numbers)


def _supported(distribution: str, series: tuple[tuple[int, ...], ...]) -> bool:
    version = installed_version(distribution)
    if version is not None and any(version[: len(s)] == s for s in series):
        return True
    if distribution not in _FELL_BACK:
        _FELL_BACK.add(distribution)
        log.warning(
            "%s %s is not a version cxr_node.compat was written for (%s): using its public API",
            distribution,
            ".".join(map(str, version)) if version else "(not installed)",
            ", ".join(".".join(map(str, s)) + ".x" for s in series) or "none",
        )
    return False


def pydicom_supported() -> bool:
    """Whether the installed pydicom is one of ``SUPPORTED_PYDICOM_VERSIONS``."""
    return _supported("pydicom", SUPPORTED_PYDICOM_VERSIONS)


def highdicom_supported() -> bool:
    """Whether the installed highdicom is one of ``SUPPORTED_HIGHDICOM_VERSIONS``."""
    return _supported("highdicom", SUPPORTED_HIGHDICOM_VERSIONS)


def pynetdicom_supported() -> bool:
    """Whether the installed pynetdicom is one of ``SUPPORTED_PYNETDICOM_VERSIONS``."""
    return _supported("pynetdicom", SUPPORTED_PYNETDICOM_VERSIONS)


def kombu_supported() -> bool:
    """Whether the installed kombu is one of ``SUPPORTED_KOMBU_VERSIONS``."""
    return _supported("kombu", SUPPORTED_KOMBU_VERSIONS)


_REPLACED: dict[str, Any] = {}
"""What an installed workaround replaced, by name (for the tests of the fallback)."""
