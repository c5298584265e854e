"""Delivery over DICOM TLS (PS3.15 B.1) to DCMTK ``storescp +tls``, which requires our client
certificate by default: the objects arrive when both sides trust each other, and a wrong CA
or a missing client certificate leaves the destination unreachable (retried, not lost)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage, generate_uid

from cxr_node.destinations import Destination, TlsOptions
from tests.conftest import free_port, require_tool, wait_for_port
from tests.pki import Pki, make_pki
from tests.unit._synthetic import make_dx_chest
from workers.deliver.dicom import DestinationUnreachable, send_files

pytestmark = pytest.mark.integration


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def tls_storescp(tmp_path: Path, pki: Pki) -> Iterator[tuple[int, Path]]:
    folder = tmp_path / "received"
    folder.mkdir()
    port = free_port()
    process = subprocess.Popen(
        [
            require_tool("/usr/bin/storescp"),
            "+tls",
            str(pki.server_key),
            str(pki.server_cert),
            "+cf",
            str(pki.ca_cert),
            "-aet",
            "TLSDEST",
            "-od",
            str(folder),
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    yield port, folder
    process.terminate()
    process.wait(10)


@pytest.fixture
def result_files(tmp_path: Path) -> list[Path]:
    paths = []
    for sop_class in (Comprehensive3DSRStorage, SecondaryCaptureImageStorage):
        dataset = make_dx_chest(32, 32)
        dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = sop_class
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        path = tmp_path / f"{sop_class}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _destination(port: int, tls: TlsOptions) -> Destination:
    return Destination(name="tls-pacs", ae_title="TLSDEST", host="127.0.0.1", port=port, tls=tls)


@pytest.mark.parametrize("verify_hostname", [True, False])
def test_results_arrive_over_mutually_authenticated_tls(
    tls_storescp: tuple[int, Path], pki: Pki, result_files: list[Path], verify_hostname: bool
) -> None:
    port, folder = tls_storescp
    tls = TlsOptions(
        ca_file=pki.ca_cert,
        cert_file=pki.client_cert,
        key_file=pki.client_key,
        verify_hostname=verify_hostname,
    )
    send_files(_destination(port, tls), result_files, "CXR_NODE", timeout=10)
    received = {str(dcmread(p).SOPInstanceUID) for p in folder.iterdir()}
    assert received == {str(dcmread(p).SOPInstanceUID) for p in result_files}


@pytest.mark.parametrize("problem", ["no client certificate", "untrusted server"])
def test_tls_trouble_is_a_retryable_unreachable_destination(
    tls_storescp: tuple[int, Path], pki: Pki, result_files: list[Path], problem: str
) -> None:
    port, folder = tls_storescp
    if problem == "no client certificate":
        tls = TlsOptions(ca_file=pki.ca_cert)
    else:
        tls = TlsOptions(
            ca_file=pki.client_cert, cert_file=pki.client_cert, key_file=pki.client_key
        )
    with pytest.raises(DestinationUnreachable, match="TLS"):
        send_files(_destination(port, tls), result_files, "CXR_NODE", timeout=10)
    assert list(folder.iterdir()) == []
