"""Logging set-up: one line per event, no patient data (names, IDs, dates, accession numbers).

Code logs study references from :func:`cxr_node.spool.log_ref`, never header values. The chatty
libraries (pynetdicom dumps datasets at DEBUG) are held at WARNING.
"""

import logging
import re
import sys
import traceback
import warnings

_QUIET_LIBRARIES = ("pynetdicom", "celery", "kombu", "highdicom", "amqp")
# pydicom logs invalid header values verbatim (a malformed birth date, say): errors only.
_SILENT_LIBRARIES = ("pydicom",)


def configure_logging(level: str = "INFO") -> None:
    """Configure the root logger for a cxr-node process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        LibrarySafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    for name in _SILENT_LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)
    # pydicom validates values (its default, WARN) and warns with the offending value quoted
    # (a sloppy birth date, say). Validation stays on; its warnings never reach a log line.
    quiet_pydicom_warnings()
    # Other libraries' warnings may quote data too: route them to logging, keep only errors.
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.ERROR)


_OWN_LOGGERS = ("cxr_node", "workers", "__main__")
_LIBRARY_MESSAGE_LIMIT = 300
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """Control characters (a newline that would forge a log line, a NUL) as ``\\xNN``."""
    return _CONTROL_CHARACTERS.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


class LibrarySafeFormatter(logging.Formatter):
    """One line per record from another library (pynetdicom logs values from the wire, such as
    calling AE titles and UIDs, verbatim, and exception messages that may quote them):
    control characters escaped, cut at 300 characters, and a traceback as its frames only.
    Our own records already log wire values through ``for_log`` and tracebacks through
    :func:`traceback_frames`."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name.split(".")[0] in _OWN_LOGGERS:
            return super().format(record)
        try:
            message = record.getMessage()
        except Exception:  # a library's bad format string
            message = str(record.msg)
        message = escape_controls(message)
        if len(message) > _LIBRARY_MESSAGE_LIMIT:
            message = f"{message[:_LIBRARY_MESSAGE_LIMIT]}\u2026 ({len(message)} characters)"
        safe = logging.makeLogRecord(
            {**record.__dict__, "msg": message, "args": None, "exc_info": None, "exc_text": None}
        )
        text = super().format(safe)
        exception = record.exc_info[1] if record.exc_info else None
        if exception is not None:
            text += " | " + traceback_frames(exception).replace("\n", " | ")
        return text


PYDICOM_WARNINGS = r"pydicom(\..*)?$"
"""Modules whose warnings :func:`quiet_pydicom_warnings` drops."""


def quiet_pydicom_warnings() -> None:
    """Drop the warnings pydicom's modules issue (invalid values, quoted in the message): not
    shown, not logged, and not remembered per message either (Python's default action keeps
    every distinct warning text, and these texts carry header values, so a long-running
    worker would collect them). pydicom's own logger, which repeats them, is held at ERROR by
    :func:`configure_logging`. Values are still validated; invalid source values are handled
    where they matter (``workers.encode.header.header_view``), and our outputs are checked with
    dciodvfy in the tests."""
    warnings.filterwarnings("ignore", category=UserWarning, module=PYDICOM_WARNINGS)


def describe_exception(exc: BaseException) -> str:
    """An exception's type and where it was raised, without its message (which may quote
    header values such as names or dates): safe to log."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    last = frames[-1]
    return f"{type(exc).__name__} at {last.filename.rsplit('/', 2)[-1]}:{last.lineno}"


def traceback_frames(exc: BaseException) -> str:
    """The traceback of an exception as its frames only (file, line, function, source line),
    without the message: the frames say where a bug is, the message may quote header values."""
    lines = [f"{type(exc).__name__} (message withheld); traceback, most recent call last:"]
    for frame in traceback.extract_tb(exc.__traceback__):
        lines.append(f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}')
        if frame.line:
            lines.append(f"    {frame.line.strip()}")
    return "\n".join(lines)
