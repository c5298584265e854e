"""DICOM pixels to the displayed image (workers.pixels): LUTs, windows, inversion, geometry."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom import Dataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

from cxr_node.errors import RejectedInput
from tests.unit._synthetic import corpus_file
from workers import pixels
from workers.geometry import SquareBox, extract_square, square_box
from workers.pixels import (
    displayed_image,
    is_inverted,
    normalise,
    to_grayscale,
)

MAX_12_BIT = 4095


def make_image(
    pixels: np.ndarray, photometric: str = "MONOCHROME2", **attributes: object
) -> Dataset:
    """A CR dataset holding ``pixels`` uncompressed (uint16 12-bit, uint8 RGB)."""
    ds = Dataset()
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape[:2]
    if pixels.ndim == 3:
        ds.SamplesPerPixel = 3
        ds.PlanarConfiguration = 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        pixels = pixels.astype(np.uint8)
    else:
        ds.SamplesPerPixel = 1
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        pixels = pixels.astype(np.uint16)
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def chest_like(rows: int = 96, columns: int = 80) -> np.ndarray:
    """Two dark lungs in a brighter body, plus deterministic noise: many distinct values."""
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float64)
    lungs = np.exp(-(((x - columns * 0.3) / (columns * 0.15)) ** 2 + ((y - rows / 2) / 25) ** 2))
    lungs += np.exp(-(((x - columns * 0.7) / (columns * 0.15)) ** 2 + ((y - rows / 2) / 25) ** 2))
    noise = np.random.default_rng(7).integers(0, 40, size=(rows, columns))
    return np.clip(3000 - 2000 * lungs + noise, 0, MAX_12_BIT).astype(np.uint16)


def ramp(rows: int = 64, columns: int = 100) -> np.ndarray:
    """Every row is 0, 1, ..., columns - 1."""
    return np.tile(np.arange(columns, dtype=np.uint16), (rows, 1))


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 linear VOI function, in [0, 1], then min-max normalised."""
    unit = np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    return (unit - unit.min()) / (unit.max() - unit.min())


# --- the grayscale pipeline -------------------------------------------------------------------


def test_output_is_float32_unit_range_in_source_geometry() -> None:
    pixels = chest_like(96, 80)
    pixels[3, 70] = MAX_12_BIT  # a marker, brighter than everything
    image = displayed_image(make_image(pixels, WindowCenter=2048, WindowWidth=4096))
    assert image.dtype == np.float32
    assert image.shape == (96, 80)
    assert image.min() == 0.0 and image.max() == 1.0
    assert np.unravel_index(np.argmax(image), image.shape) == (3, 70)


def test_modality_lut_is_applied_before_the_window() -> None:
    stored = ramp()
    ds = make_image(stored, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=0, WindowWidth=100)
    expected = linear_window(2.0 * stored - 100.0, center=0, width=100)
    np.testing.assert_allclose(displayed_image(ds), expected, atol=1e-5)
    # the window alone, on stored values, would be a different image
    assert not np.allclose(expected, linear_window(stored.astype(float), center=0, width=100))


def test_negative_rescale_slope_turns_the_image_round() -> None:
    stored = chest_like()
    plain = displayed_image(make_image(stored))
    flipped = displayed_image(make_image(stored, RescaleSlope=-1, RescaleIntercept=MAX_12_BIT))
    np.testing.assert_allclose(flipped, 1.0 - plain, atol=1e-5)


def test_window_centre_and_width_are_applied() -> None:
    stored = ramp()
    image = displayed_image(make_image(stored, WindowCenter=50, WindowWidth=21))
    np.testing.assert_allclose(image, linear_window(stored.astype(float), 50, 21), atol=1e-5)
    assert image[0, 30] == 0.0 and image[0, 70] == 1.0  # outside the window: clipped


def test_first_of_several_windows_is_used() -> None:
    stored = ramp()
    image = displayed_image(make_image(stored, WindowCenter=[20, 60], WindowWidth=[20, 40]))
    first = linear_window(stored.astype(float), 20, 20)
    second = linear_window(stored.astype(float), 60, 40)
    np.testing.assert_allclose(image, first, atol=1e-5)
    assert not np.allclose(image, second, atol=1e-2)


def test_without_voi_the_extreme_percentiles_are_clipped() -> None:
    stored = chest_like()
    stored[0, 0] = 0  # one outlier pixel must not squash the contrast of the rest
    stored[0, 1] = MAX_12_BIT
    image = displayed_image(make_image(stored))
    body = image[10:-10, 10:-10]
    assert body.max() - body.min() > 0.8


def test_monochrome1_with_inverted_values_looks_like_the_monochrome2_original() -> None:
    """The key invariant: the same anatomy, stored either way round, is displayed identically."""
    stored = chest_like()
    original = displayed_image(make_image(stored, "MONOCHROME2"))
    inverted = displayed_image(make_image(MAX_12_BIT - stored, "MONOCHROME1"))
    np.testing.assert_allclose(inverted, original, atol=1e-5)
    # and the lungs (low stored values in MONOCHROME2) are dark in both
    assert original[48, 24] < original[5, 40]


def test_monochrome1_with_inverse_presentation_lut_is_inverted_once() -> None:
    stored = chest_like()
    mono1 = displayed_image(make_image(stored, "MONOCHROME1"))
    mono1_inverse = displayed_image(
        make_image(stored, "MONOCHROME1", PresentationLUTShape="INVERSE")
    )
    mono2 = displayed_image(make_image(stored, "MONOCHROME2"))
    np.testing.assert_allclose(mono1_inverse, mono1, atol=1e-6)
    np.testing.assert_allclose(mono1_inverse, 1.0 - mono2, atol=1e-5)


def test_monochrome2_with_inverse_presentation_lut_is_inverted() -> None:
    stored = chest_like()
    identity = displayed_image(make_image(stored, PresentationLUTShape="IDENTITY"))
    inverse = displayed_image(make_image(stored, PresentationLUTShape="INVERSE"))
    np.testing.assert_allclose(inverse, 1.0 - identity, atol=1e-6)


@pytest.mark.parametrize(
    ("photometric", "shape", "inverted"),
    [
        ("MONOCHROME1", None, True),
        ("MONOCHROME1", "INVERSE", True),
        ("MONOCHROME1", "IDENTITY", True),
        ("MONOCHROME2", None, False),
        ("MONOCHROME2", "IDENTITY", False),
        ("MONOCHROME2", "INVERSE", True),
        ("RGB", "INVERSE", False),
    ],
)
def test_is_inverted(photometric: str, shape: str | None, inverted: bool) -> None:
    ds = Dataset()
    ds.PhotometricInterpretation = photometric
    if shape is not None:
        ds.PresentationLUTShape = shape
    assert is_inverted(ds) is inverted


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [{}, {"WindowCenter": 100, "WindowWidth": 50}])
def test_constant_image_is_refused(window: dict[str, int]) -> None:
    ds = make_image(np.full((64, 64), 1234, dtype=np.uint16), "MONOCHROME2", **window)
    with pytest.raises(RejectedInput) as raised:
        displayed_image(ds)
    assert raised.value.reason_code == "CONSTANT_IMAGE"


def test_normalise_refuses_non_finite_values() -> None:
    with pytest.raises(RejectedInput, match="CONSTANT_IMAGE"):
        normalise(np.array([[0.0, np.nan], [1.0, 2.0]]))


def test_no_pixel_data_is_refused() -> None:
    ds = make_image(chest_like())
    del ds.PixelData
    with pytest.raises(RejectedInput) as raised:
        displayed_image(ds)
    assert raised.value.reason_code == "NO_PIXEL_DATA"


def test_truncated_pixel_data_is_undecodable() -> None:
    ds = make_image(chest_like(64, 64))
    ds.PixelData = ds.PixelData[:100]
    with pytest.raises(RejectedInput) as raised:
        displayed_image(ds)
    assert raised.value.reason_code == "UNDECODABLE"


def test_multi_frame_is_refused() -> None:
    frames = np.stack([chest_like(64, 64)] * 2)
    ds = make_image(frames[0])
    ds.NumberOfFrames = 2
    ds.PixelData = frames.astype(np.uint16).tobytes()
    with pytest.raises(RejectedInput) as raised:
        displayed_image(ds)
    assert raised.value.reason_code == "MULTI_FRAME"


# --- colour -----------------------------------------------------------------------------------


def test_rgb_is_converted_to_luminance() -> None:
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, size=(64, 72, 3)).astype(np.uint8)
    image = displayed_image(make_image(rgb, "RGB"))
    luminance = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    expected = (luminance - luminance.min()) / (luminance.max() - luminance.min())
    assert image.shape == (64, 72)
    np.testing.assert_allclose(image, expected, atol=1e-5)
    # not a plain mean of the channels
    mean = rgb.mean(axis=2)
    assert not np.allclose(image, (mean - mean.min()) / (mean.max() - mean.min()), atol=1e-3)


def test_to_grayscale_weights() -> None:
    pure = np.zeros((1, 3, 3), dtype=np.uint8)
    pure[0, 0, 0] = pure[0, 1, 1] = pure[0, 2, 2] = 200
    np.testing.assert_allclose(to_grayscale(pure, "RGB")[0], [59.8, 117.4, 22.8], rtol=1e-5)


def test_to_grayscale_refuses_unknown_colour_models() -> None:
    with pytest.raises(RejectedInput, match="PHOTOMETRIC"):
        to_grayscale(np.zeros((4, 4, 3), dtype=np.uint8), "PALETTE COLOR")


def test_to_grayscale_leaves_grayscale_alone() -> None:
    gray = chest_like(8, 8)
    assert to_grayscale(gray, "MONOCHROME2") is gray


# --- the square the model reads ---------------------------------------------------------------


def test_square_box_on_a_tall_image() -> None:
    assert square_box(100, 60, "crop") == SquareBox(x0=0, y0=20, side=60)
    assert square_box(100, 60, "pad") == SquareBox(x0=-20, y0=0, side=100)


def test_square_box_on_a_wide_image() -> None:
    assert square_box(60, 101, "crop") == SquareBox(x0=20, y0=0, side=60)
    # 41 rows of padding for an odd difference: floor division puts 21 above, 20 below
    assert square_box(60, 101, "pad") == SquareBox(x0=0, y0=-21, side=101)


def test_square_box_on_a_square_image_is_the_image() -> None:
    assert square_box(64, 64, "crop") == square_box(64, 64, "pad") == SquareBox(0, 0, 64)


def test_extract_square_pads_with_zeros_and_keeps_orientation() -> None:
    image = np.full((100, 60), 0.5, dtype=np.float32)
    image[10, 5] = 1.0  # top left marker
    out = extract_square(image, square_box(100, 60, "pad"))
    assert out.shape == (100, 100)
    assert out.dtype == np.float32
    assert out[10, 25] == 1.0  # shifted right by the 20-column left pad only
    assert np.all(out[:, :20] == 0.0) and np.all(out[:, 80:] == 0.0)
    assert np.all(out[:, 20:80][out[:, 20:80] != 1.0] == 0.5)


def test_extract_square_pads_top_and_bottom_of_a_wide_image() -> None:
    image = np.ones((60, 100), dtype=np.float32)
    image[59, 99] = 2.0  # bottom right marker
    out = extract_square(image, square_box(60, 100, "pad"))
    assert out.shape == (100, 100)
    assert out[79, 99] == 2.0
    assert np.all(out[:20] == 0.0) and np.all(out[80:] == 0.0)


def test_extract_square_crops_the_centre() -> None:
    image = np.arange(60 * 100, dtype=np.float32).reshape(60, 100)
    out = extract_square(image, square_box(60, 100, "crop"))
    assert out.shape == (60, 60)
    np.testing.assert_array_equal(out, image[:, 20:80])


# --- the real corpus --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "relative", ["dwv/gdcm-CR-MONO1-10-chest.dcm", "pylibjpeg-data/RG1_J2KI.dcm"]
)
def test_corpus_monochrome1_chests_are_displayed(relative: str) -> None:
    ds = pydicom.dcmread(corpus_file(relative))
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    image = displayed_image(ds)
    assert image.dtype == np.float32
    assert image.shape == (ds.Rows, ds.Columns)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert float(image.max()) - float(image.min()) > 0.5
    # MONOCHROME1: high stored values are dark, so the display runs against the stored values
    stored = ds.pixel_array.astype(np.float64).ravel()
    assert np.corrcoef(stored, image.astype(np.float64).ravel())[0, 1] < -0.5


def test_corpus_malformed_jpeg2000_is_undecodable() -> None:
    ds = pydicom.dcmread(corpus_file("pylibjpeg-data/966.dcm"))
    with pytest.raises(RejectedInput) as raised:
        displayed_image(ds)
    assert raised.value.reason_code == "UNDECODABLE"


def test_palette_color_is_refused_not_read_as_intensities() -> None:
    dataset = _palette_dataset()
    with pytest.raises(RejectedInput) as caught:
        displayed_image(dataset)
    assert caught.value.reason_code == "PHOTOMETRIC"


def _palette_dataset() -> Dataset:
    """A synthetic 8-bit PALETTE COLOR image header (the LUT itself is not needed)."""
    dataset = Dataset()
    dataset.PhotometricInterpretation = "PALETTE COLOR"
    dataset.SamplesPerPixel = 1
    dataset.Rows = dataset.Columns = 8
    dataset.BitsAllocated = dataset.BitsStored = 8
    dataset.HighBit = 7
    dataset.PixelRepresentation = 0
    dataset.PixelData = bytes(range(64))
    return dataset


def test_bits_stored_is_honoured_and_high_bits_ignored() -> None:
    """Synthetic 12-bit image with garbage in the unused high bits (seen from real modalities)."""
    clean = chest_like()
    noisy = clean.astype(np.uint16) | np.uint16(0xF000)
    np.testing.assert_allclose(
        displayed_image(make_image(noisy)), displayed_image(make_image(clean)), atol=1e-6
    )


def test_voi_lut_sequence_is_used_before_any_window() -> None:
    """A synthetic VOI LUT that is a step: everything above 2000 is white, the rest black."""
    lut = Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    lut.LUTData = [0] * 2000 + [65535] * 2096
    image = make_image(chest_like(), WindowCenter=100, WindowWidth=50)
    image.VOILUTSequence = [lut]
    displayed = displayed_image(image)
    expected = (chest_like() >= 2000).astype(np.float32)
    np.testing.assert_array_equal(displayed, expected)


def test_modality_lut_sequence_of_a_real_file_is_applied() -> None:
    dataset = pydicom.dcmread(corpus_file("fo-dicom/CR-ModalitySequenceLUT.dcm"))
    assert "ModalityLUTSequence" in dataset
    image = displayed_image(dataset)
    assert image.dtype == np.float32 and 0.0 <= image.min() < image.max() <= 1.0
    assert image.shape == (dataset.Rows, dataset.Columns)


# --- pixel sanity -------------------------------------------------------------------------------


def test_constant_and_few_level_images_are_not_radiographs() -> None:
    flat = np.full((64, 64), 1000, dtype=np.uint16)
    with pytest.raises(RejectedInput) as caught:
        pixels.check_plausible_radiograph(flat)
    assert caught.value.reason_code == "CONSTANT_IMAGE"
    bars = np.repeat(np.arange(17, dtype=np.uint16) * 4000, 64 * 64 // 17 + 1)[: 64 * 64]
    with pytest.raises(RejectedInput) as caught:
        pixels.check_plausible_radiograph(bars.reshape(64, 64))
    assert caught.value.reason_code == "TOO_FEW_GREY_LEVELS"
    noisy = np.random.default_rng(1).integers(0, 4096, size=(64, 64)).astype(np.uint16)
    pixels.check_plausible_radiograph(noisy)  # no exception


def test_the_corpus_test_pattern_is_refused() -> None:
    dataset = pydicom.dcmread(corpus_file("purecodecs/test16bits.dcm"))
    with pytest.raises(RejectedInput) as caught:
        pixels.displayed_image(dataset)
    assert caught.value.reason_code == "TOO_FEW_GREY_LEVELS"


# --- hostile headers: fall back where a sensible reading exists, else BAD_PIXEL_MODULE ----------


def _raw(ds: Dataset, keyword: str, vr: str, value: bytes) -> Dataset:
    """Put ``value`` into ``keyword`` undecoded, as a file read from disk would hold it."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    tag = Tag(keyword)
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
    return ds


def _lut_item(descriptor: list[int], data: list[int] | bytes) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = descriptor
    if isinstance(data, bytes):
        item.add_new("LUTData", "OW", data)
    else:
        item.LUTData = data
    return item


def _percentile_only() -> np.ndarray:
    return displayed_image(make_image(chest_like()))


@pytest.mark.parametrize("width", [0, -10, -0.5])
def test_window_width_below_1_falls_back_to_the_percentile_window(width: float) -> None:
    image = displayed_image(make_image(chest_like(), WindowCenter=2048, WindowWidth=width))
    np.testing.assert_allclose(image, _percentile_only(), atol=1e-6)


def test_an_invalid_first_window_falls_back_to_the_next() -> None:
    stored = ramp()
    image = displayed_image(make_image(stored, WindowCenter=[20, 60], WindowWidth=[0, 40]))
    np.testing.assert_allclose(image, linear_window(stored.astype(float), 60, 40), atol=1e-5)


def test_window_centre_as_text_falls_back_to_the_percentile_window() -> None:
    ds = _raw(make_image(chest_like(), WindowWidth=400), "WindowCenter", "DS", b"LUNG")
    np.testing.assert_allclose(displayed_image(ds), _percentile_only(), atol=1e-6)


def test_voi_lut_whose_descriptor_does_not_match_its_data_falls_back_to_the_window() -> None:
    stored = ramp()
    windowed = displayed_image(make_image(stored, WindowCenter=50, WindowWidth=21))
    short = make_image(stored, WindowCenter=50, WindowWidth=21)
    short.VOILUTSequence = [_lut_item([4096, 0, 16], list(range(209)))]
    np.testing.assert_allclose(displayed_image(short), windowed, atol=1e-6)


@pytest.mark.parametrize(
    "item",
    [
        _lut_item([4096, 0, 32], list(range(4096))),  # 32-bit entries
        _lut_item([4096, 0, 0], list(range(4096))),  # depth 0 ("uint0")
        _lut_item([4096, 0, 16], bytes(1000)),  # OW shorter than the descriptor says
        _lut_item([4096, 0], list(range(4096))),  # descriptor of two values
    ],
    ids=["32-bit", "depth-0", "short-OW", "short-descriptor"],
)
def test_invalid_voi_lut_falls_back_to_the_percentile_window(item: Dataset) -> None:
    ds = make_image(chest_like())
    ds.VOILUTSequence = [item]
    np.testing.assert_allclose(displayed_image(ds), _percentile_only(), atol=1e-6)


def test_valid_ow_voi_lut_is_applied() -> None:
    table = np.array([0] * 2000 + [65535] * 2096, dtype="<u2")
    ds = make_image(chest_like())
    ds.VOILUTSequence = [_lut_item([4096, 0, 16], table.tobytes())]
    np.testing.assert_array_equal(displayed_image(ds), (chest_like() >= 2000).astype(np.float32))


@pytest.mark.parametrize(
    "item",
    [_lut_item([4096, 0, 16], list(range(209))), _lut_item([4096, 0, 32], list(range(4096)))],
    ids=["short", "32-bit"],
)
def test_invalid_modality_lut_falls_back_to_the_rescale(item: Dataset) -> None:
    stored = chest_like()
    plain = displayed_image(make_image(stored, RescaleSlope=-1, RescaleIntercept=MAX_12_BIT))
    ds = make_image(stored, RescaleSlope=-1, RescaleIntercept=MAX_12_BIT)
    ds.ModalityLUTSequence = [item]
    np.testing.assert_allclose(displayed_image(ds), plain, atol=1e-6)


def test_valid_modality_lut_sequence_is_applied() -> None:
    stored = ramp()
    ds = make_image(stored)
    ds.ModalityLUTSequence = [_lut_item([100, 0, 16], [99 - i for i in range(100)])]
    np.testing.assert_allclose(
        displayed_image(ds), 1.0 - displayed_image(make_image(stored)), atol=1e-6
    )


def _bad_module(ds: Dataset, attribute: str) -> None:
    with pytest.raises(RejectedInput) as caught:
        displayed_image(ds)
    assert caught.value.reason_code == pixels.BAD_PIXEL_MODULE
    assert attribute in caught.value.reason


@pytest.mark.parametrize(
    ("attributes", "named"),
    [
        ({"BitsStored": 17}, "BitsStored"),  # more bits stored than allocated
        ({"BitsStored": 0}, "BitsStored"),
        ({"HighBit": 16}, "HighBit"),  # overflows the allocated bits
        ({"BitsAllocated": 12}, "BitsAllocated"),
        ({"BitsAllocated": 0}, "BitsAllocated"),  # the "uint0" of NumPy 1
        ({"PixelRepresentation": 2}, "PixelRepresentation"),
        ({"SamplesPerPixel": 2}, "SamplesPerPixel"),
        ({"Rows": 0}, "Rows"),
        ({"RescaleSlope": [1, 2]}, "RescaleSlope"),  # multi-valued where one is allowed
    ],
)
def test_invalid_pixel_module_values_are_refused(attributes: dict[str, object], named: str) -> None:
    _bad_module(make_image(chest_like(), "MONOCHROME2", **attributes), named)


def test_uint8_overflowing_bit_depths_are_refused() -> None:
    ds = make_image(chest_like().astype(np.uint8), BitsAllocated=8, BitsStored=9, HighBit=8)
    _bad_module(ds, "BitsStored")


@pytest.mark.parametrize(
    ("keyword", "vr", "raw"),
    [
        ("Rows", "US", b"\x60\x00\x00"),  # 3 bytes: BytesLengthException in pydicom
        ("Columns", "US", b""),  # empty: int(None)
        ("RescaleSlope", "DS", b"ONE "),  # text where a number is expected
        ("RescaleIntercept", "DS", b"1e999 "),  # not finite
        ("BitsStored", "US", b"\x0c"),
    ],
)
def test_text_where_numbers_are_expected_is_refused(keyword: str, vr: str, raw: bytes) -> None:
    _bad_module(_raw(make_image(chest_like()), keyword, vr, raw), keyword)


def test_missing_required_pixel_attribute_is_refused() -> None:
    ds = make_image(chest_like())
    del ds.BitsAllocated
    _bad_module(ds, "BitsAllocated")


def test_zero_rescale_slope_is_refused() -> None:
    _bad_module(make_image(chest_like(), RescaleSlope=0), "RescaleSlope")


def test_numbers_written_as_text_are_read() -> None:
    ds = _raw(make_image(chest_like()), "RescaleSlope", "DS", b"1.0 ")
    ds = _raw(ds, "WindowCenter", "DS", b"2048")
    ds = _raw(ds, "WindowWidth", "DS", b"4096")
    expected = displayed_image(make_image(chest_like(), WindowCenter=2048, WindowWidth=4096))
    np.testing.assert_allclose(displayed_image(ds), expected, atol=1e-6)


def test_pixel_header_is_a_typed_view() -> None:
    header = pixels.read_pixel_header(
        make_image(chest_like(), WindowCenter=[1, 2], WindowWidth=[0, 9])
    )
    assert (header.rows, header.columns, header.bits_stored) == (96, 80, 12)
    assert header.windows == (pixels.Window(2.0, 9.0),)


def test_distinct_levels_counts_like_unique_for_every_kind_of_pixel() -> None:
    from workers.pixels import distinct_levels

    generator = np.random.default_rng(3)
    for values in (
        generator.integers(0, 4096, (64, 64)).astype(np.uint16),
        generator.integers(-1024, 3000, (64, 64)).astype(np.int16),
        generator.integers(0, 255, (8, 8)).astype(np.uint8),
        generator.random((16, 16)).astype(np.float32),
        np.full((4, 4), 7, dtype=np.uint16),
        np.array([-(2**31), 2**31 - 1], dtype=np.int32),  # a range too wide for a histogram
    ):
        assert distinct_levels(values) == len(np.unique(values))


def _table_cases() -> list[tuple[str, np.ndarray, dict[str, object]]]:
    chest = chest_like(120, 100)
    outliers = chest.copy()
    outliers[0, 0], outliers[0, 1] = 0, MAX_12_BIT
    lut = [_lut_item([4096, 0, 16], [(i * 7) % 4096 for i in range(4096)])]  # not monotonic
    voi = [_lut_item([4096, 0, 16], [min(4095, i // 2 + 500) for i in range(4096)])]
    return [
        ("percentile window", outliers, {}),
        ("window", chest, {"WindowCenter": 2500, "WindowWidth": 1200}),
        ("window of width 1", chest, {"WindowCenter": 2500, "WindowWidth": 1}),
        ("sigmoid", chest, {"WindowCenter": 2500, "WindowWidth": 900, "VOILUTFunction": "SIGMOID"}),
        (
            "linear exact",
            chest,
            {"WindowCenter": 2400, "WindowWidth": 0.5, "VOILUTFunction": "LINEAR_EXACT"},
        ),
        ("rescale", chest, {"RescaleSlope": -0.75, "RescaleIntercept": 3000}),
        ("modality LUT", chest, {"ModalityLUTSequence": lut}),
        ("VOI LUT", chest, {"VOILUTSequence": voi, "WindowCenter": 1, "WindowWidth": 2}),
        ("MONOCHROME1", chest, {"PhotometricInterpretation": "MONOCHROME1"}),
        ("inverse", outliers, {"PresentationLUTShape": "INVERSE"}),
        ("a few levels", (ramp() % 40) * 100, {}),
    ]


@pytest.mark.parametrize("case", _table_cases(), ids=lambda case: case[0])
def test_the_table_gives_exactly_what_the_whole_image_computation_gives(
    case: tuple[str, np.ndarray, dict[str, object]],
) -> None:
    _, stored, attributes = case
    ds = make_image(stored, **attributes)
    header = pixels.read_pixel_header(ds)
    decoded = pixels.decode(ds)
    by_table = pixels.display_by_table(decoded, header)
    assert by_table.dtype == np.float32
    assert np.array_equal(by_table, pixels.display_by_arrays(decoded, header))
    assert np.array_equal(displayed_image(ds), by_table)  # integer MONOCHROME: the table


def test_signed_pixels_go_through_the_table_too() -> None:
    stored = chest_like(80, 60).astype(np.int16) - 2000
    ds = make_image(stored.view(np.uint16), WindowCenter=-500, WindowWidth=1500)
    ds.PixelRepresentation = 1
    decoded = pixels.decode(ds)
    assert decoded.dtype.kind == "i" and decoded.min() < 0
    header = pixels.read_pixel_header(ds)
    assert np.array_equal(
        pixels.display_by_table(decoded, header), pixels.display_by_arrays(decoded, header)
    )


def test_weighted_percentiles_are_numpy_percentiles_of_the_repeated_values() -> None:
    generator = np.random.default_rng(3)
    values = generator.normal(size=50)
    counts = generator.integers(0, 20, size=50)
    counts[[3, 9]] = 0
    repeated = np.repeat(values, counts)
    expected = np.percentile(repeated, [0.5, 12.5, 50, 99.5])
    got = pixels.weighted_percentiles(values, counts, (0.5, 12.5, 50, 99.5))
    assert got == list(expected)  # bit for bit, numpy's interpolation
    for seed in range(200):
        generator = np.random.default_rng(seed)
        values = generator.normal(scale=1000, size=40)
        counts = generator.integers(0, 9, size=40)
        counts[0] = 1
        expected = np.percentile(np.repeat(values, counts), [0.5, 37.3, 99.5])
        assert pixels.weighted_percentiles(values, counts, (0.5, 37.3, 99.5)) == list(expected)


def test_the_table_refuses_constant_and_few_level_images() -> None:
    header = pixels.read_pixel_header(make_image(ramp()))
    with pytest.raises(RejectedInput, match="no contrast"):
        pixels.display_by_table(np.full((10, 10), 7, dtype=np.uint16), header)
    with pytest.raises(RejectedInput) as few:
        pixels.display_by_table((ramp() % 5).astype(np.uint16), header)
    assert few.value.reason_code == "TOO_FEW_GREY_LEVELS"


def test_a_high_narrow_span_of_32_bit_values_keeps_the_table_small() -> None:
    stored = (chest_like(64, 48).astype(np.uint32) + (1 << 31)).astype(np.uint32)
    ds = make_image(np.zeros((64, 48)))
    ds.BitsAllocated = ds.BitsStored = 32
    ds.HighBit = 31
    ds.PixelData = stored.tobytes()
    decoded = pixels.decode(ds)
    assert decoded.dtype == np.uint32 and int(decoded.min()) >= 1 << 31
    header = pixels.read_pixel_header(ds)
    seen: list[int] = []
    real_bincount = np.bincount

    def counting(values: np.ndarray, *args: object, **kwargs: object) -> np.ndarray:
        result = real_bincount(values, *args, **kwargs)  # type: ignore[arg-type]
        seen.append(len(result))
        return result

    np.bincount = counting  # type: ignore[assignment]
    try:
        by_table = pixels.display_by_table(decoded, header)
    finally:
        np.bincount = real_bincount
    assert seen and max(seen) <= pixels.MAX_TABLE_ENTRIES
    assert np.array_equal(by_table, pixels.display_by_arrays(decoded, header))
