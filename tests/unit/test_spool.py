"""The durable spool (cxr_node.spool): sanitised keys, no escapes, atomic writes, log refs."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from cxr_node.spool import Spool, log_ref, safe_key

HASHED = re.compile(r"^h-[0-9a-f]{40}$")
CR_UID = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


def _part_files(spool: Spool) -> list[Path]:
    return [p for p in spool.root.rglob("*") if p.name.endswith(".part")]


# --- safe_key ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uid",
    [
        CR_UID,
        "1.2.3",
        "1",
        "1.2.0.3",
        "1.2.840.0012",  # leading zeros: not conformant, but real devices write them
        "1." + "2" * 62,  # exactly 64 characters
    ],
)
def test_safe_key_keeps_valid_uids(uid: str) -> None:
    assert len(uid) <= 64
    assert safe_key(uid) == uid


@pytest.mark.parametrize(
    "junk",
    [
        "../../etc/passwd",
        "1.2/3",
        "1.2\\3",
        "",
        "   ",
        "1..2",
        "1.2.",
        ".1.2",
        "1.2.3a",
        "1.2 .3",
        "1." + "2" * 63,  # 65 characters: too long for a UID
        "..",
        "/absolute",
        "1.2.3\n4",
    ],
)
def test_safe_key_hashes_junk(junk: str) -> None:
    key = safe_key(junk)
    assert HASHED.match(key), key
    assert "/" not in key and "\\" not in key and ".." not in key


def test_safe_key_hash_is_stable_and_distinct() -> None:
    assert safe_key("../../etc/passwd") == safe_key("../../etc/passwd")
    assert safe_key("../../etc/passwd") != safe_key("../../etc/shadow")
    assert safe_key("1.2/3") != safe_key("1.2/4")


@pytest.mark.parametrize("padded", ["1.2.3\x00", "1.2.3\x00\x00", " 1.2.3 ", "1.2.3 "])
def test_safe_key_strips_dicom_padding(padded: str) -> None:
    """UI values are padded to even length with NUL (PS3.5 6.2); others pad with spaces."""
    assert safe_key(padded) == "1.2.3"


def test_safe_key_of_65_digit_uid_is_not_truncated_into_a_valid_one() -> None:
    long_uid = "1." + "2" * 63
    assert safe_key(long_uid) != long_uid[:64]
    assert safe_key(long_uid) != safe_key(long_uid[:64])


# --- paths and resolve() ----------------------------------------------------------------------


def test_instance_and_result_paths_use_safe_keys(spool: Spool) -> None:
    path = spool.instance_path("1.2.3", "1.2.3.4")
    assert path == spool.root / "1.2.3" / "1.2.3.4.dcm"
    result = spool.result_path("1.2.3", "1.2.3.5")
    assert result == spool.root / "1.2.3" / "results" / "1.2.3.5.dcm"


@pytest.mark.parametrize("evil", ["../../etc/passwd", "../..", "/etc/passwd", "a/../../b"])
def test_instance_path_with_hostile_uids_stays_inside_the_spool(spool: Spool, evil: str) -> None:
    path = spool.instance_path(evil, evil)
    assert path.resolve().is_relative_to(spool.root)
    assert path.parent.parent == spool.root


def test_relative_and_resolve_round_trip(spool: Spool) -> None:
    path = spool.instance_path("1.2.3", "1.2.3.4")
    relative = spool.relative(path)
    assert relative == "1.2.3/1.2.3.4.dcm"
    assert spool.resolve(relative) == path


@pytest.mark.parametrize("escape", ["../outside.dcm", "../../etc/passwd", "/etc/passwd", "a/../.."])
def test_resolve_refuses_escapes(spool: Spool, escape: str) -> None:
    with pytest.raises(ValueError, match="escapes"):
        spool.resolve(escape)


def test_resolve_refuses_symlink_out_of_the_spool(spool: Spool, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.dcm").write_bytes(b"x")
    (spool.root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError):
        spool.resolve("link/secret.dcm")


def test_resolve_accepts_dot_segments_that_stay_inside(spool: Spool) -> None:
    assert spool.resolve("1.2.3/../1.2.3/x.dcm") == spool.root / "1.2.3" / "x.dcm"


# --- write_atomically -------------------------------------------------------------------------


def test_write_atomically_writes_all_chunks_and_leaves_no_temp_files(spool: Spool) -> None:
    destination = spool.instance_path("1.2.3", "1.2.3.4")
    size = spool.write_atomically(destination, [b"DICM", b"", b"payload" * 100])
    assert size == 4 + 700
    assert destination.read_bytes() == b"DICM" + b"payload" * 100
    assert _part_files(spool) == []
    assert list((spool.root / ".tmp").iterdir()) == []


def test_write_atomically_replaces_an_existing_file(spool: Spool) -> None:
    destination = spool.instance_path("1.2.3", "1.2.3.4")
    spool.write_atomically(destination, [b"old contents, longer than the new ones"])
    inode_before = destination.stat().st_ino
    size = spool.write_atomically(destination, [b"new"])
    assert size == 3
    assert destination.read_bytes() == b"new"
    # os.replace: a new file took the name, the old one was never truncated in place
    assert destination.stat().st_ino != inode_before
    assert _part_files(spool) == []


def test_failed_write_keeps_the_old_file_and_leaves_no_temp_file(spool: Spool) -> None:
    destination = spool.instance_path("1.2.3", "1.2.3.4")
    spool.write_atomically(destination, [b"original"])
    with pytest.raises(TypeError):
        spool.write_atomically(destination, [b"half of the new", "not bytes"])  # type: ignore[list-item]
    assert destination.read_bytes() == b"original"
    assert _part_files(spool) == []


def test_failed_first_write_leaves_nothing_at_the_destination(spool: Spool) -> None:
    destination = spool.instance_path("1.2.3", "1.2.3.9")
    with pytest.raises(TypeError):
        spool.write_atomically(destination, [b"x", None])  # type: ignore[list-item]
    assert not destination.exists()
    assert _part_files(spool) == []


def test_temp_files_live_on_the_spool_file_system(spool: Spool) -> None:
    """os.replace is only atomic within one file system: the temp folder is inside the root."""
    assert (spool.root / ".tmp").is_dir()
    assert os.stat(spool.root / ".tmp").st_dev == os.stat(spool.root).st_dev


def test_free_bytes_is_positive(spool: Spool) -> None:
    assert spool.free_bytes() > 0


# --- log_ref ----------------------------------------------------------------------------------


def test_log_ref_is_stable_short_and_hides_the_uid() -> None:
    reference = log_ref(CR_UID)
    assert reference == log_ref(CR_UID)
    assert re.fullmatch(r"[0-9a-f]{12}", reference)
    assert CR_UID not in reference
    # no recognisable piece of the UID either
    assert not any(part in reference for part in CR_UID.split(".") if len(part) >= 4)


def test_log_ref_differs_between_uids() -> None:
    assert log_ref("1.2.3.4") != log_ref("1.2.3.5")
    assert log_ref("") != log_ref("1")


# --- adopting received files ------------------------------------------------------------------


def test_adopt_renames_a_received_file_into_place(spool: Spool) -> None:
    received = spool.receive_folder / "receiving-1.dcm"
    received.write_bytes(b"x" * 1000)
    destination = spool.instance_path(CR_UID, "1.2.3")
    assert spool.adopt(received, destination) == 1000
    assert destination.read_bytes() == b"x" * 1000
    assert not received.exists()


def test_stale_partial_files_are_removed_and_fresh_ones_kept(spool: Spool) -> None:
    stale = spool.receive_folder / "receiving-old.dcm"
    fresh = spool.receive_folder / "receiving-new.dcm"
    stale.write_bytes(b"old")
    fresh.write_bytes(b"new")
    two_hours_ago = os.stat(stale).st_mtime - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    assert spool.remove_stale_partials(older_than_seconds=3600) == 1
    assert not stale.exists()
    assert fresh.exists()
