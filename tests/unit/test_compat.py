"""The workarounds in cxr_node.compat: each on the supported library version (the one installed)
and through its public-API fallback (the version check made to fail), with the same results."""

from __future__ import annotations

import copy
import os
import warnings
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from kombu import Connection
from kombu.common import ignore_errors
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from cxr_node import compat
from cxr_node.jobs import ImageAnalysis
from tests.unit._synthetic import corpus_file, crude_display, make_analysis, make_dx_chest
from workers.encode import part10
from workers.encode.copies import clone, clone_element
from workers.encode.header import header_view
from workers.encode.sc import build_heatmap_sc
from workers.encode.sr import build_measurement_report
from workers.results import encode_notice

_LIBRARIES = ("PYDICOM", "HIGHDICOM", "PYNETDICOM", "KOMBU")


@pytest.fixture(params=["supported", "other version"])
def version(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the installed versions taken as supported, then as unknown ones."""
    if request.param == "other version":
        _pretend_other_versions(monkeypatch)
    return str(request.param)


def _pretend_other_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    for library in _LIBRARIES:
        monkeypatch.setattr(compat.versions, f"SUPPORTED_{library}_VERSIONS", ())


# --- the version check ------------------------------------------------------------------------


def test_the_installed_versions_are_the_supported_ones() -> None:
    """Today's pins (pyproject, constraints): if this fails, re-check each workaround against
    the new release and extend its SUPPORTED_*_VERSIONS, or let it fall back."""
    assert compat.pydicom_supported()
    assert compat.highdicom_supported()
    assert compat.pynetdicom_supported()
    assert compat.kombu_supported()


def test_versions_are_read_from_the_installed_distributions() -> None:
    assert compat.installed_version("pydicom") == tuple(
        int(part) for part in pydicom.__version__.split(".")[:3]
    )
    assert compat.installed_version("no-such-distribution-cxr") is None


def test_another_series_is_not_supported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compat.versions, "SUPPORTED_PYDICOM_VERSIONS", ((2, 4), (3, 1)))
    assert not compat.pydicom_supported()
    assert not compat.fast_part10_writer()
    assert not compat.fast_copies()
    assert not compat.sr_templates()
    monkeypatch.setattr(compat.versions, "SUPPORTED_PYDICOM_VERSIONS", ((3,),))
    assert compat.pydicom_supported()


# --- pydicom: the fast Part 10 writer -------------------------------------------------------


def _dcmwrite_bytes(dataset: Dataset) -> bytes:
    buffer = BytesIO()
    copy.deepcopy(dataset).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _analysis(source: Dataset) -> ImageAnalysis:
    return make_analysis(
        source.SOPInstanceUID, demo=True, rows=int(source.Rows), columns=int(source.Columns)
    )


def _sr(source: Dataset, analysis: ImageAnalysis | None = None) -> hd.sr.Comprehensive3DSR:
    return build_measurement_report(
        source,
        analysis or _analysis(source),
        series_instance_uid="1.2.826.0.1.3680043.8.498.1",
        sop_instance_uid="1.2.826.0.1.3680043.8.498.2",
        series_number=901,
    )


def _sc(source: Dataset) -> Dataset:
    analysis = make_analysis(source.SOPInstanceUID, demo=False)
    heatmap = np.linspace(0.0, 1.0, int(source.Rows) * int(source.Columns), dtype=np.float32)
    return build_heatmap_sc(
        source,
        crude_display(source),
        heatmap.reshape(int(source.Rows), int(source.Columns)),
        analysis,
        series_instance_uid="1.2.826.0.1.3680043.8.498.3",
        sop_instance_uid="1.2.826.0.1.3680043.8.498.4",
        series_number=902,
    )


def _latin1_source() -> Dataset:
    source = make_dx_chest()
    source.PatientName = "Müller^Jürgen"
    source.StudyDescription = "Thorax p.a. (Übersicht)"
    return source


@pytest.mark.parametrize(
    "build",
    [
        lambda: _sr(make_dx_chest()),
        lambda: _sc(make_dx_chest()),
        lambda: _sr(_latin1_source()),
        lambda: _sr(pydicom.dcmread(corpus_file("dwv/gdcm-CR-MONO1-10-chest.dcm"))),
        lambda: encode_notice([make_dx_chest()], "UNDECODABLE", "bad pixels"),
    ],
    ids=["sr", "sc", "sr-latin1", "sr-real-cr", "notice"],
)
def test_part10_bytes_are_dcmwrite_bytes_either_way(
    build: Any, version: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # highdicom on unusual names: not the point here
        dataset = build()
    if version != "supported":

        def fast_path(*args: Any, **kwargs: Any) -> bytes:
            raise AssertionError("the fast writer ran on an unsupported pydicom")

        monkeypatch.setattr(part10, "_dataset", fast_path)
    assert part10.to_part10(dataset) == _dcmwrite_bytes(dataset)


# --- pydicom + highdicom: copies --------------------------------------------------------------


def _encoded(dataset: Dataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, dataset)
    return buffer.getvalue()


def test_copies_are_equal_independent_and_indexed_either_way(version: str) -> None:
    sr = _sr(make_dx_chest())
    twin = clone(sr)
    assert type(twin) is type(sr)
    assert _encoded(twin) == _encoded(sr)
    twin.PatientID = "CHANGED"
    twin.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator = "CHANGED"
    assert sr.PatientID != "CHANGED"
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator != "CHANGED"
    name = hd.sr.CodedConcept("126010", "DCM", "Imaging Measurements")
    (found,) = twin.ContentSequence.find(name)
    assert any(found is item for item in twin.ContentSequence)
    assert not any(found is item for item in sr.ContentSequence)


def _with_placeholders() -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = "2.25.1"
    ds.ReferencedSOPSequence = Sequence([Dataset()])
    ds.ReferencedSOPSequence[0].ReferencedSOPInstanceUID = "2.25.1"
    ds.RelatedGeneralSOPClassUID = ["2.25.1", "1.2.3"]
    ds.StudyDescription = "2.25.1"  # not a UID: left alone
    return ds


def test_uid_replacement_is_the_same_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    uids = {"2.25.1": "1.2.840.99"}
    fast = clone(_with_placeholders(), uids)
    fast_element = clone_element(_with_placeholders()["ReferencedSOPSequence"], uids)
    _pretend_other_versions(monkeypatch)
    original = _with_placeholders()
    public = clone(original, uids)
    public_element = clone_element(original["ReferencedSOPSequence"], uids)
    assert _encoded(public) == _encoded(fast)
    assert public_element == fast_element
    assert public.SOPInstanceUID == "1.2.840.99"
    assert public.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == "1.2.840.99"
    assert list(public.RelatedGeneralSOPClassUID) == ["1.2.840.99", "1.2.3"]
    assert public.StudyDescription == "2.25.1"
    assert original.SOPInstanceUID == "2.25.1"
    assert original.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == "2.25.1"


def test_the_fallback_copy_is_deepcopy(monkeypatch: pytest.MonkeyPatch) -> None:
    _pretend_other_versions(monkeypatch)
    copied: list[object] = []
    real_deepcopy = copy.deepcopy

    def spying_deepcopy(value: Any, *args: Any) -> Any:
        copied.append(value)
        return real_deepcopy(value, *args)

    monkeypatch.setattr(compat.fast_objects.copy, "deepcopy", spying_deepcopy)
    source = make_dx_chest()
    assert _encoded(clone(source)) == _encoded(source)
    assert copied[0] is source


# --- highdicom: SR templates and the document built without its copy -------------------------

_NOW = ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime")


def _same_moment(document: Dataset, reference: Dataset) -> None:
    """The moment of creation, which differs between two builds, taken from ``reference``."""
    for keyword in _NOW:
        setattr(document, keyword, reference[keyword].value)
    for mine, theirs in zip(
        document.ContributingEquipmentSequence,
        reference.ContributingEquipmentSequence,
        strict=True,
    ):
        if "ContributionDateTime" in theirs:
            mine.ContributionDateTime = theirs.ContributionDateTime


@pytest.mark.parametrize(
    "source",
    [make_dx_chest, lambda: pydicom.dcmread(corpus_file("dwv/gdcm-CR-MONO1-10-chest.dcm"))],
    ids=["dx", "real-cr"],
)
def test_the_sr_document_is_the_same_either_way(
    source: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = source()
    analysis = _analysis(image)
    fast = _sr(image, analysis)
    _pretend_other_versions(monkeypatch)
    public = _sr(image, analysis)
    _same_moment(fast, public)
    assert type(public) is type(fast)
    assert _encoded(fast) == _encoded(public)
    assert _encoded(fast.content[0]) == _encoded(public.content[0])
    assert _encoded(header_view(image)) == _encoded(_header_view_with_fallback(image))


def _header_view_with_fallback(image: Dataset) -> Dataset:
    with pytest.MonkeyPatch.context() as patch:
        _pretend_other_versions(patch)
        return header_view(image)


def test_the_fallback_lets_highdicom_build_and_copy_the_whole_tree(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _pretend_other_versions(monkeypatch)
    built: list[Dataset] = []
    real = hd.sr.Comprehensive3DSR

    def spy(*, content: Dataset, **arguments: Any) -> hd.sr.Comprehensive3DSR:
        built.append(content)
        return real(content=content, **arguments)

    monkeypatch.setattr(hd.sr, "Comprehensive3DSR", spy)
    document = _sr(make_dx_chest())
    (content,) = built
    assert len(content.ContentSequence) > 1  # the whole tree, not a stub
    assert document.content[0] is not content  # highdicom's own parsed copy


# --- pynetdicom: chunked store options and the socket fix ----------------------------------


def test_chunked_store_options_are_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from pynetdicom import _config

    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", False)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", False)
    compat.enable_chunked_store_receive()
    compat.enable_chunked_store_send()
    assert _config.STORE_RECV_CHUNKED_DATASET is True
    assert _config.STORE_SEND_CHUNKED_DATASET is True


@pytest.fixture
def pynetdicom_socket_close(monkeypatch: pytest.MonkeyPatch) -> type:
    """AssociationSocket with pynetdicom's own _shutdown_socket (restored afterwards)."""
    from pynetdicom.transport import AssociationSocket

    compat.install_pynetdicom_socket_close_fix()  # imports of cxr_node.dicom did already
    original = compat.versions._REPLACED["pynetdicom AssociationSocket._shutdown_socket"]
    monkeypatch.setattr(AssociationSocket, "_shutdown_socket", original)
    return AssociationSocket


def _never_connected(association_socket: type) -> Any:
    from pynetdicom.transport import AddressInformation

    return association_socket(
        SimpleNamespace(network_timeout=None), address=AddressInformation("127.0.0.1", 0)
    )


def test_a_socket_that_never_connected_is_closed_with_the_fix(
    pynetdicom_socket_close: type,
) -> None:
    assert compat.install_pynetdicom_socket_close_fix()
    assert compat.install_pynetdicom_socket_close_fix()  # idempotent
    wrapper = _never_connected(pynetdicom_socket_close)
    wrapper.close()
    assert wrapper.socket is None or wrapper.socket.fileno() == -1


def test_without_the_fix_pynetdicom_leaves_the_descriptor_open(
    pynetdicom_socket_close: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the fix is for, and what the fallback on another pynetdicom is."""
    _pretend_other_versions(monkeypatch)
    assert not compat.install_pynetdicom_socket_close_fix()
    wrapper = _never_connected(pynetdicom_socket_close)
    wrapper.close()
    raw = wrapper.socket
    try:
        assert raw is not None and raw.fileno() != -1  # shutdown() raised, close() skipped
    finally:
        raw.close()


# --- kombu: the embedded transport ----------------------------------------------------------


def _round_trip(transport: type, folder: Path, count: int) -> tuple[list[Any], list[str]]:
    """Messages put and got back through ``transport``, and the names files were opened with."""
    opened: list[str] = []
    real_open = open

    def spying_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "w" in mode:
            opened.append(os.path.basename(str(file)))
        return real_open(file, mode, *args, **kwargs)

    folder.mkdir()
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder)}
    url = "filesystem://localhost//"
    with Connection(url, transport=transport, transport_options=options) as connection:
        channel = connection.default_channel
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("builtins.open", spying_open)
            for index in range(count):
                channel._put("analysis", {"index": index})
        received = [channel._get("analysis") for _ in range(count)]
    return received, opened


def test_embedded_transport_delivers_the_same_messages_either_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    atomic = compat.embedded_filesystem_transport()
    atomic_received, atomic_opened = _round_trip(atomic, tmp_path / "atomic", 5)
    _pretend_other_versions(monkeypatch)
    stock = compat.embedded_filesystem_transport()
    from kombu.transport import filesystem

    assert stock is filesystem.Transport and atomic is not stock
    stock_received, stock_opened = _round_trip(stock, tmp_path / "stock", 5)
    expected = [{"index": i} for i in range(5)]

    def by_index(message: Any) -> Any:
        return message["index"]

    # (messages put in the same millisecond come back in any order, with either transport)
    assert sorted(atomic_received, key=by_index) == sorted(stock_received, key=by_index) == expected
    assert all(name.endswith(".analysis.msg.part") for name in atomic_opened)
    assert all(name.endswith(".analysis.msg") for name in stock_opened)  # the race


# --- kombu: the Redis reconnect guard ---------------------------------------------------------


@pytest.fixture
def kombu_redis(monkeypatch: pytest.MonkeyPatch) -> Any:
    """kombu's Redis transport, usable without a server (PING answered here), with kombu's own
    ``Channel._connparams`` back in place after the test."""
    import redis
    from kombu.transport import redis as kombu_redis

    monkeypatch.setattr(redis.Redis, "ping", lambda self, *args, **kwargs: True)
    current = kombu_redis.Channel.__dict__["_connparams"]
    original = getattr(current, "__wrapped__", current)
    monkeypatch.setattr(kombu_redis.Channel, "_connparams", original)
    return kombu_redis


def _after_redis_restart() -> tuple[Any, tuple[type[BaseException], ...]]:
    """What Celery is left with after Redis restarts: it collects the broken connection, and a
    channel whose close failed on the dead server is still attached to the transport whose
    client collect() dropped. Returns it and the transport's connection errors."""
    import redis

    connection = Connection("redis://127.0.0.1:1/0")  # nothing listens; nothing connects
    left_over, broken = connection.channel(), connection.channel()

    def close_on_a_dead_server() -> None:
        raise redis.exceptions.ConnectionError("Connection closed by server.")

    broken.close = close_on_a_dead_server  # closed first by collect()
    errors = connection.connection_errors
    connection.collect()
    assert left_over.connection is not None and left_over.connection.client is None
    return left_over, errors


def test_without_the_guard_a_late_ack_stops_the_worker(kombu_redis: Any) -> None:
    """The crash (celery/kombu#582): ``AttributeError``, which Celery does not retry."""
    left_over, errors = _after_redis_restart()
    with pytest.raises(AttributeError, match="hostname"):
        ignore_errors(SimpleNamespace(connection_errors=errors, channel_errors=()), _ack(left_over))


def test_with_the_guard_it_is_a_connection_error_celery_retries(kombu_redis: Any) -> None:
    assert compat.install_kombu_redis_reconnect_guard()
    assert compat.install_kombu_redis_reconnect_guard()  # idempotent
    left_over, errors = _after_redis_restart()
    with pytest.raises(errors):
        _ack(left_over)()
    connection = SimpleNamespace(connection_errors=errors, channel_errors=())
    ignore_errors(connection, _ack(left_over))  # swallowed, as Celery's restart does


def test_the_guard_covers_a_channel_closed_by_collect(kombu_redis: Any) -> None:
    import redis

    connection = Connection("redis://127.0.0.1:1/0")
    channel = connection.channel()
    connection.collect()
    assert channel.connection is None
    with pytest.raises(AttributeError, match="client"):
        _ack(channel)()
    assert compat.install_kombu_redis_reconnect_guard()
    with pytest.raises(redis.exceptions.ConnectionError):
        _ack(channel)()


def test_the_guard_changes_nothing_on_a_live_connection(kombu_redis: Any) -> None:
    connection = Connection("redis://127.0.0.1:1/0")
    channel = connection.channel()
    unguarded = channel._connparams()
    assert compat.install_kombu_redis_reconnect_guard()
    guarded = channel._connparams()
    assert unguarded.keys() == guarded.keys()
    assert {k: v for k, v in unguarded.items() if k != "connection_class"} == {
        k: v for k, v in guarded.items() if k != "connection_class"
    }
    connection.release()


def test_no_guard_on_another_kombu(kombu_redis: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _pretend_other_versions(monkeypatch)
    assert not compat.install_kombu_redis_reconnect_guard()
    assert kombu_redis.Channel.__dict__["_connparams"] is not None
    assert not getattr(kombu_redis.Channel.__dict__["_connparams"], "cxr_reconnect_guard", False)


def _ack(channel: Any) -> Any:
    """What Celery does with a message that finished after the connection went: ack it."""
    return lambda: channel.basic_ack("delivery-tag-1")


# --- pynetdicom: the front door limits ------------------------------------------------------


def test_front_door_limits_apply_only_on_the_supported_pynetdicom(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On another pynetdicom the AE keeps pynetdicom's own reading and waiting (the guards,
    once installed in the process, pass such an AE through); tests/unit/test_front_door_limits
    covers the guarded path."""
    from pynetdicom import AE
    from pynetdicom.dul import DULServiceProvider

    guarded, other = AE(), AE()
    assert compat.install_front_door_limits(guarded, max_request_bytes=4096, max_pending=4)
    assert compat.front_door._LIMITS[guarded].max_request_bytes == 4096
    assert DULServiceProvider._read_pdu_data is compat.front_door._read_pdu_data_guarded
    _pretend_other_versions(monkeypatch)
    assert not compat.install_front_door_limits(other, max_request_bytes=4096, max_pending=4)
    assert other not in compat.front_door._LIMITS
