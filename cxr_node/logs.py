"""Logging set-up: one line per event, no patient data (names, IDs, dates, accession numbers).

Code logs study references from :func:`cxr_node.spool.log_ref`, never header values. The chatty
libraries (pynetdicom dumps datasets at DEBUG) are held at WARNING.
"""

import logging
import sys

_QUIET_LIBRARIES = ("pynetdicom", "pydicom", "celery", "kombu", "highdicom", "amqp")


def configure_logging(level: str = "INFO") -> None:
    """Configure the root logger for a cxr-node process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
