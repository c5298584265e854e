"""Log hygiene helpers (cxr_node.logs): what may reach a log line."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator

import pydicom.config
import pytest
from pydicom.dataelem import DataElement

from cxr_node.logs import (
    LibrarySafeFormatter,
    configure_logging,
    describe_exception,
    quiet_pydicom_warnings,
)


def test_describe_exception_names_type_and_place_but_not_the_message() -> None:
    try:
        raise ValueError("Unable to convert 'Doe^Jane' born '1970-01-31'")
    except ValueError as exc:
        described = describe_exception(exc)
    assert described.startswith("ValueError at test_logs.py:")
    assert "Doe" not in described and "1970" not in described


def test_describe_exception_without_traceback() -> None:
    assert describe_exception(KeyError("PatientID 12345")) == "KeyError"


@pytest.fixture
def logging_restored() -> Iterator[None]:
    """configure_logging sets up the process's root logger: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in ("pydicom", "py.warnings")}
    yield
    logging.captureWarnings(False)
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)


@pytest.mark.usefixtures("logging_restored")
def test_logging_set_up_leaves_pydicom_validation_on() -> None:
    reading = pydicom.config.settings.reading_validation_mode
    writing = pydicom.config.settings.writing_validation_mode
    with warnings.catch_warnings():
        configure_logging("INFO")
    assert pydicom.config.settings.reading_validation_mode == reading != pydicom.config.IGNORE
    assert pydicom.config.settings.writing_validation_mode == writing != pydicom.config.IGNORE


def test_pydicom_warnings_quoting_header_values_are_dropped() -> None:
    def invalid_birth_date() -> DataElement:
        return DataElement(0x00100030, "DA", "1970-01-31", validation_mode=pydicom.config.WARN)

    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        invalid_birth_date()
        assert any("1970-01-31" in str(w.message) for w in shown)  # validated, and quoted
        shown.clear()
        quiet_pydicom_warnings()
        invalid_birth_date()
        warnings.warn("a warning of ours", UserWarning, stacklevel=1)
    assert [str(w.message) for w in shown] == ["a warning of ours"]
    with pytest.raises(ValueError, match="Invalid value"):  # validation itself is still there
        DataElement(0x00100030, "DA", "1970-01-31", validation_mode=pydicom.config.RAISE)


def test_traceback_frames_show_where_but_not_the_message() -> None:
    from cxr_node.logs import traceback_frames

    def parse(value: str) -> None:
        raise ValueError(f"bad date {value}")

    header = {"PatientName": "Canaryname^Patricia"}
    try:
        parse(header["PatientName"])
    except ValueError as exc:
        text = traceback_frames(exc)
    assert "Canaryname" not in text
    assert "ValueError (message withheld)" in text
    assert "in parse" in text and "test_logs.py" in text


def test_library_records_stay_one_line_without_their_exception_message() -> None:
    """pynetdicom logs wire values (a calling AE title with a newline) and exception messages
    verbatim: one escaped line, frames only."""
    formatter = LibrarySafeFormatter("%(name)s: %(message)s")
    forged = logging.LogRecord(
        "pynetdicom.acse", logging.ERROR, __file__, 1, "Calling AE %s", ("X\nFORGED\x00",), None
    )
    assert formatter.format(forged) == "pynetdicom.acse: Calling AE X\\x0aFORGED\\x00"
    message = "PATIENT^" + "SECRET" + chr(10) + "FORGED"
    try:
        raise ValueError(message)
    except ValueError:
        failure = logging.LogRecord(
            "pynetdicom.dul", logging.ERROR, __file__, 1, "boom", None, sys.exc_info()
        )
    text = formatter.format(failure)
    assert "\n" not in text and "SECRET" not in text and "ValueError" in text
    long = logging.LogRecord("kombu", logging.WARNING, __file__, 1, "x" * 5000, None, None)
    assert len(formatter.format(long)) < 400
    own = logging.LogRecord("cxr_node.x", logging.INFO, __file__, 1, "a\nb", None, None)
    assert formatter.format(own) == "cxr_node.x: a\nb"  # our own lines are escaped at source
