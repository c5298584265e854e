"""Log hygiene helpers (cxr_node.logs): what may reach a log line."""

from __future__ import annotations

from cxr_node.logs import describe_exception


def test_describe_exception_names_type_and_place_but_not_the_message() -> None:
    try:
        raise ValueError("Unable to convert 'Doe^Jane' born '1970-01-31'")
    except ValueError as exc:
        described = describe_exception(exc)
    assert described.startswith("ValueError at test_logs.py:")
    assert "Doe" not in described and "1970" not in described


def test_describe_exception_without_traceback() -> None:
    assert describe_exception(KeyError("PatientID 12345")) == "KeyError"
