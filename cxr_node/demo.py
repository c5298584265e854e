"""Demo mode: every installed model bundle is a DEMO (untrained) one.

The edge reads only the bundles' ``configs/metadata.json`` (never the weights, never torch). A node
in demo mode accepts any caller by default (the quick start); outside it, only known sources.
"""

from __future__ import annotations

import json
from pathlib import Path


def demo_mode(models_dir: Path) -> bool:
    """True when ``models_dir`` holds bundles and all of them declare ``"demo": true``.

    No local models (an edge whose workers run elsewhere) is not demo mode.
    """
    flags = []
    for metadata in sorted(models_dir.glob("*/configs/metadata.json")):
        try:
            flags.append(bool(json.loads(metadata.read_text()).get("demo", False)))
        except (OSError, ValueError):
            flags.append(False)
    return bool(flags) and all(flags)
