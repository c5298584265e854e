"""Log hygiene helpers (cxr_node.logs): what may reach a log line."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator

import pydicom.config
import pytest
from pydicom.dataelem import DataElement

from cxr_node.logs import configure_logging, describe_exception, quiet_pydicom_warnings


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
