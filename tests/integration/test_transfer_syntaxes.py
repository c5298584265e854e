"""Every transfer syntax the issue lists is accepted as sent, spooled intact, and decodable.

Real corpus files cover eight syntaxes; the rest are made here from a corpus image (synthetic
re-encodings, said so in their names): implicit VR, deflate (pydicom), JPEG lossless process 14
(DCMTK dcmcjpeg) and JPEG-LS near-lossless (pyjpegls through pydicom).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE

from cxr_node.dicom.contexts import ACCEPTED_TRANSFER_SYNTAXES
from cxr_node.dicom.handlers import StoreHandler
from cxr_node.dicom.scp import start_server
from cxr_node.ledger import Ledger
from cxr_node.settings import load_settings
from cxr_node.spool import Spool
from tests.conftest import free_port, require_tool
from workers.pixels import displayed_image

pytestmark = pytest.mark.integration

CORPUS_FILES = {
    ExplicitVRLittleEndian: "wg04/RG2_UNC.dcm",
    RLELossless: "wg04/RG2_RLE.dcm",
    JPEGLosslessSV1: "wg04/RG2_JPLL.dcm",
    JPEGLSLossless: "wg04/RG2_JLSL.dcm",
    JPEG2000Lossless: "wg04/RG2_J2KR.dcm",
    JPEGBaseline8Bit: "orthanc-tests/Monochrome1-Jpeg.dcm",
    JPEG2000: "pylibjpeg-data/RG1_J2KI.dcm",
    JPEGExtended12Bit: "pylibjpeg-data/RG2_JPLY_fixed.dcm",
}
SOURCE_FOR_SYNTHETIC = "dwv/gdcm-CR-MONO1-10-chest.dcm"


def _synthetic(corpus: Path, syntax: str, folder: Path) -> Path:
    source = corpus / SOURCE_FOR_SYNTHETIC
    path = folder / f"synthetic-{syntax}.dcm"
    if syntax == JPEGLossless:
        subprocess.run(
            [require_tool("/usr/bin/dcmcjpeg"), "+el", str(source), str(path)],
            check=True,
            capture_output=True,
        )
        return path
    dataset = pydicom.dcmread(source)
    if syntax == JPEGLSNearLossless:
        dataset.compress(JPEGLSNearLossless, jls_error=2, generate_instance_uid=False)
    else:
        dataset.file_meta.TransferSyntaxUID = syntax
    dataset.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def inputs(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("syntaxes")
    files = {syntax: corpus / name for syntax, name in CORPUS_FILES.items()}
    for syntax in (
        ImplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        JPEGLossless,
        JPEGLSNearLossless,
    ):
        files[syntax] = _synthetic(corpus, syntax, folder)
    return files


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[int, Spool]]:
    settings = load_settings(data_dir=tmp_path, port=free_port(), bind_address="127.0.0.1")
    spool = Spool(settings.spool_path)
    ledger = Ledger(settings.ledger)
    server = start_server(settings, StoreHandler(spool, ledger, lambda _ae, _address: [], 0))
    yield settings.port, spool
    server.shutdown()
    ledger.close()


def test_every_listed_syntax_is_covered(inputs: dict[str, Path]) -> None:
    assert set(inputs) == set(ACCEPTED_TRANSFER_SYNTAXES)


@pytest.mark.parametrize(
    "syntax",
    [str(s) for s in ACCEPTED_TRANSFER_SYNTAXES],
    ids=[s.name for s in ACCEPTED_TRANSFER_SYNTAXES],
)
def test_stored_as_sent_and_decodable(
    syntax: str, inputs: dict[str, Path], node: tuple[int, Spool]
) -> None:
    port, spool = node
    source = pydicom.dcmread(inputs[pydicom.uid.UID(syntax)])
    assert source.file_meta.TransferSyntaxUID == syntax
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(source.SOPClassUID, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="CXR_NODE")
    assert assoc.is_established
    try:
        answer = assoc.send_c_store(source)
    finally:
        assoc.release()
    assert answer.Status == 0x0000
    stored = pydicom.dcmread(spool.instance_path(source.StudyInstanceUID, source.SOPInstanceUID))
    assert stored.file_meta.TransferSyntaxUID == syntax
    assert stored.PixelData == source.PixelData
    image = displayed_image(stored)
    assert image.shape == (source.Rows, source.Columns)
    assert 0.0 <= float(image.min()) < float(image.max()) <= 1.0
