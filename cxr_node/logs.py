"""Logging set-up: one line per event, no patient data (names, IDs, dates, accession numbers).

Code logs study references from :func:`cxr_node.spool.log_ref`, never header values. The chatty
libraries (pynetdicom dumps datasets at DEBUG) are held at WARNING.
"""

import logging
import sys
import traceback

import pydicom.config

_QUIET_LIBRARIES = ("pynetdicom", "celery", "kombu", "highdicom", "amqp")
# pydicom logs invalid header values verbatim (a malformed birth date, say): errors only.
_SILENT_LIBRARIES = ("pydicom",)


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
    for name in _SILENT_LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)
    # pydicom's value validation warns with the offending value quoted (a sloppy birth date,
    # say); invalid values are handled where they matter (see workers.encode.sr), and our
    # outputs are checked with dciodvfy in the tests.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    # Library warnings may quote data too: route them to logging, and keep only errors.
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.ERROR)


def describe_exception(exc: BaseException) -> str:
    """An exception's type and where it was raised, without its message (which may quote
    header values such as names or dates): safe to log."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    last = frames[-1]
    return f"{type(exc).__name__} at {last.filename.rsplit('/', 2)[-1]}:{last.lineno}"
