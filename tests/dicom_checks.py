"""Validators as test helpers: dicom3tools' dciodvfy and DCMTK's dsrdump."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import require_tool

DCIODVFY = "/usr/bin/dciodvfy"
DSRDUMP = "/usr/bin/dsrdump"


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """Run dciodvfy on a file: (error lines, warning lines)."""
    result = subprocess.run(
        [require_tool(DCIODVFY), str(path)], capture_output=True, text=True, timeout=120
    )
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    return errors, warnings


def dciodvfy_errors(path: Path) -> list[str]:
    """Only the error lines dciodvfy reports for a file (an empty list: valid)."""
    return dciodvfy(path)[0]


def dsrdump(path: Path) -> subprocess.CompletedProcess[str]:
    """DCMTK's structured report dump of a file."""
    return subprocess.run(
        [require_tool(DSRDUMP), str(path)], capture_output=True, text=True, timeout=60
    )
