"""Fail when the installed packages do not cover what pyproject.toml asks for.

`make install` installs requirements.lock, then the project with --no-deps: a dependency added
to pyproject.toml without `make lock` would be silently missing. `pip check` sees only the core
dependencies; this also follows the extras named on the command line, and extras of extras
(celery[redis] -> kombu[redis] -> redis).

    python .ci/check_lock.py worker test postgres
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, distribution

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # pragma: no cover - packaging is in the lock; pip vendors it anyway
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef]


def problems(name: str, extras: set[str], seen: set[tuple[str, str]]) -> list[str]:
    found: list[str] = []
    dist = distribution(name)
    for text in dist.requires or []:
        req = Requirement(text)
        wanted = {""} | extras
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in wanted):
            continue
        key = canonicalize_name(req.name)
        try:
            version = distribution(req.name).version
        except PackageNotFoundError:
            found.append(f"{req} (needed by {name}): not installed")
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            found.append(f"{req} (needed by {name}): {version} installed")
        for extra in sorted(req.extras):
            if (key, extra) not in seen:
                seen.add((key, extra))
                found += problems(req.name, {extra}, seen)
    return found


def main() -> int:
    found = problems("cxr-node", set(sys.argv[1:]), set())
    if found:
        print("requirements.lock does not cover pyproject.toml; run `make lock`:", file=sys.stderr)
        for line in found:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
