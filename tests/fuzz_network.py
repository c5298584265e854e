"""Network fuzz cases against a running ``cxr-node serve``: the plan (which case comes when, for
a seed) and how each case is played, over pynetdicom associations or raw sockets.

Each case returns :class:`Outcome` records: what the node answered (a DIMSE status, an
A-ASSOCIATE-RJ with its reason, an A-ABORT, a closed connection, nothing), how long it took,
whether that was a *hang* (no answer within the deadline the case allows) and, where the case
has one, the *violation* of an expectation (an acknowledged image of another patient under
known UIDs, a lockout, a PDU read far past its limits ...). Nothing here asserts: the bench
(``bench/fuzz.py``) and the suite count and judge.

Every case is bounded in time: pynetdicom's ACSE/DIMSE/network timeouts on associations, a
deadline on every raw socket call, at most :data:`SLOW_SECONDS` for a slow connection.
"""

from __future__ import annotations

import contextlib
import io
import struct
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.uid import UID, ComputedRadiographyImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, build_context
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import (
    C_FIND,
    C_GET,
    C_MOVE,
    C_STORE,
    N_ACTION,
    N_DELETE,
    N_GET,
    N_SET,
)
from pynetdicom.dsutils import encode

from tests import fuzzing as fz

SLOW_SECONDS = 15.0
"""The longest a slow connection (header only, slow loris) is held open by the fuzzer."""

VOLLEY_SIZE = 17
"""Slow connections opened at once (one more than the node's default max_associations)."""

ANSWER_SECONDS = 10.0
"""How long a raw case waits for the node's answer (its ACSE timeout is 5 s by default)."""

NETWORK_WEIGHTS: dict[str, float] = {
    "structure": 0.40,
    "bytes": 0.28,
    "command": 0.04,
    "conflict": 0.03,
    "deflate": 0.03,
    "pdu:random_rq": 0.05,
    "pdu:unknown_type": 0.04,
    "pdu:abort_mid_store": 0.04,
    "pdu:malformed_pdata": 0.025,
    "pdu:tcp_burst": 0.015,
    "pdu:pdata_huge": 0.003,
    "pdu:big_rq": 0.003,
    "pdu:many_associations": 0.002,
}
"""Share of each family among the network cases (slow volleys come on top, see :func:`plan`)."""

NETWORK_BASES: dict[str, float] = {
    fz.BASES[0]: 0.35,
    fz.BASES[1]: 0.15,
    fz.BASES[2]: 0.10,
    fz.BASES[3]: 0.25,
    fz.BASES[4]: 0.15,
}
"""Which base radiograph a mutated C-STORE starts from (the smaller ones more often)."""


@dataclass(frozen=True)
class NetworkCase:
    index: int
    family: str
    volley: int | None = None
    """Slow cases: the volley (opened together) they belong to."""


def plan(count: int, seed: int) -> list[NetworkCase]:
    """``count`` cases for ``seed``: every family at least once (when ``count`` allows), the
    rest drawn by :data:`NETWORK_WEIGHTS`, shuffled; one volley of :data:`VOLLEY_SIZE` slow
    connections per 1,000 cases (at least one when ``count`` > 2 volleys' worth), spread."""
    rng = np.random.default_rng([seed, 1])
    volleys = max(1, count // 1000) if count > 2 * VOLLEY_SIZE else 0
    rest = count - volleys * VOLLEY_SIZE
    names = sorted(NETWORK_WEIGHTS)
    families = list(names) if rest >= len(names) else []
    weights = np.array([NETWORK_WEIGHTS[n] for n in names])
    families += [
        str(f) for f in rng.choice(names, size=rest - len(families), p=weights / weights.sum())
    ]
    rng.shuffle(families)
    slots: list[list[str]] = [[f] for f in families]
    places = [round((volley + 0.5) * len(slots) / volleys) for volley in range(volleys)]
    for volley in reversed(range(volleys)):  # from the end: earlier places do not move
        slots.insert(places[volley], [f"slow#{volley}"] * VOLLEY_SIZE)
    cases: list[NetworkCase] = []
    for slot in slots:
        for family in slot:
            if family.startswith("slow#"):
                cases.append(NetworkCase(len(cases), "pdu:slow", int(family[5:])))
            else:
                cases.append(NetworkCase(len(cases), family))
    return cases


@dataclass
class Outcome:
    """One answer of the node to one thing a case did."""

    index: int
    family: str
    kind: str
    result: str
    seconds: float
    hang: bool = False
    violation: str | None = None
    role: str = "case"
    """'case' (counted as the case's outcome) or 'setup' (a store a case needed first)."""
    status: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            k: v for k, v in asdict(self).items() if v is not None and v != {} and v is not False
        }


@dataclass
class EchoResult:
    ok: bool
    seconds: float
    result: str


@dataclass
class Settings:
    """How the cases talk to the node."""

    port: int
    corpus: Path
    seed: int
    work: Path
    called: str = fz.NODE_AE_TITLE
    calling: str = fz.CALLING_AE_TITLE
    dimse_timeout: float = 30.0
    acse_timeout: float = 10.0
    echo_limit: float = 5.0
    """A C-ECHO answered later than this counts as failed (a lockout)."""


def rejection(association: Association) -> str:
    """'association rejected (result/source/reason)' from pynetdicom's view."""
    primitive = association.acceptor.primitive
    if primitive is None:
        return "association rejected"
    reason = getattr(primitive, "reason_str", None) or f"diagnostic {primitive.diagnostic}"
    result = getattr(primitive, "result_str", None) or f"result {primitive.result}"
    return f"association rejected ({result}: {reason})"


def _ae(settings: Settings, timeout: float | None = None) -> AE:
    ae = AE(ae_title=settings.calling)
    ae.acse_timeout = timeout or settings.acse_timeout
    ae.dimse_timeout = timeout or settings.dimse_timeout
    ae.network_timeout = timeout or settings.dimse_timeout
    ae.connection_timeout = 5
    return ae


def echo(settings: Settings, timeout: float = 10.0) -> EchoResult:
    """One association, one C-ECHO, timed: ok only with status 0x0000 within
    ``settings.echo_limit`` seconds."""
    began = time.monotonic()
    ae = _ae(settings, timeout)
    ae.add_requested_context(fz.VERIFICATION)
    try:
        association = ae.associate("127.0.0.1", settings.port, ae_title=settings.called)
    except Exception as exc:  # connection refused: the node is not listening
        return EchoResult(False, time.monotonic() - began, f"no connection ({type(exc).__name__})")
    try:
        if association.is_rejected:
            return EchoResult(False, time.monotonic() - began, rejection(association))
        if not association.is_established:
            return EchoResult(False, time.monotonic() - began, "association aborted or no answer")
        answer = association.send_c_echo()
        seconds = time.monotonic() - began
        if "Status" not in answer:
            return EchoResult(False, seconds, "no C-ECHO response")
        if int(answer.Status) != 0:
            return EchoResult(False, seconds, f"C-ECHO status 0x{int(answer.Status):04X}")
        if seconds > settings.echo_limit:
            return EchoResult(False, seconds, f"answered late (over {settings.echo_limit:g} s)")
        return EchoResult(True, seconds, "ok")
    finally:
        if association.is_established:
            association.release()


# --- C-STORE of a whole file, byte for byte ----------------------------------------------------


def store_file(settings: Settings, data: bytes, name: str) -> tuple[str, float, bool, int | None]:
    """Send a Part 10 file over one association, its data set byte for byte (pynetdicom's
    chunked send: the caller sets ``_config.STORE_SEND_CHUNKED_DATASET``), proposing the SOP
    class and transfer syntax its file meta names. Returns (result, seconds, hang, status)."""
    path = settings.work / f"{name}.dcm"
    path.write_bytes(data)
    began = time.monotonic()
    try:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                meta = pydicom.filereader.read_file_meta_info(path)
            sop_class = str(meta.MediaStorageSOPClassUID)
            syntax = str(meta.TransferSyntaxUID)
        except Exception as exc:
            return (
                f"not sent (sender cannot read the file meta: {type(exc).__name__})",
                0.0,
                False,
                None,
            )
        ae = _ae(settings)
        association = ae.associate(
            "127.0.0.1",
            settings.port,
            contexts=[build_context(sop_class, [syntax])],
            ae_title=settings.called,
        )
        if association.is_rejected:
            return rejection(association), time.monotonic() - began, False, None
        if not association.is_established:
            seconds = time.monotonic() - began
            hang = seconds >= settings.acse_timeout * 0.9
            return "association aborted or no answer", seconds, hang, None
        try:
            if not association.accepted_contexts:
                return "no presentation context accepted", time.monotonic() - began, False, None
            try:
                answer = association.send_c_store(path)
            except (ValueError, AttributeError, TypeError, OSError, KeyError) as exc:
                return f"not sent (sender: {type(exc).__name__})", 0.0, False, None
            seconds = time.monotonic() - began
            if "Status" in answer:
                code = int(answer.Status)
                return f"status 0x{code:04X}", seconds, False, code
            if seconds >= settings.dimse_timeout * 0.9:
                return "no response within the DIMSE timeout", seconds, True, None
            return "aborted or closed by the node", seconds, False, None
        finally:
            if association.is_established:
                association.release()
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


def _store_outcome(
    case: NetworkCase,
    kind: str,
    settings: Settings,
    data: bytes,
    role: str = "case",
    forbid_success: str | None = None,
) -> Outcome:
    result, seconds, hang, code = store_file(settings, data, f"case-{case.index}-{role}")
    violation = forbid_success if code == 0 and forbid_success else None
    return Outcome(
        case.index, case.family, kind, result, round(seconds, 3), hang, violation, role, code
    )


def _base(rng: np.random.Generator, corpus: Path) -> Path:
    names = sorted(NETWORK_BASES)
    weights = np.array([NETWORK_BASES[n] for n in names])
    return corpus / str(rng.choice(names, p=weights / weights.sum()))


def store_payload(case: NetworkCase, settings: Settings) -> tuple[str, bytes]:
    """The mutated file of a structure, bytes or deflate case (for a reproducer too)."""
    rng = np.random.default_rng([settings.seed, 1, case.index])
    parts = (settings.seed, "network", case.index)
    if case.family == "deflate":
        base = settings.corpus / fz.NATIVE_BASES[int(rng.integers(0, len(fz.NATIVE_BASES)))]
        return fz.deflate_case(base, rng, *parts)
    maker = fz.structure_case if case.family == "structure" else fz.byte_case
    return maker(_base(rng, settings.corpus), rng, *parts)


def play_store(case: NetworkCase, settings: Settings) -> list[Outcome]:
    kind, data = store_payload(case, settings)
    forbid = "deflate bomb acknowledged" if case.family == "deflate" and kind == "bomb" else None
    return [_store_outcome(case, kind, settings, data, forbid_success=forbid)]


def play_conflict(case: NetworkCase, settings: Settings) -> list[Outcome]:
    """Patient A's image, then patient B's under A's SOP Instance UID or Study Instance UID:
    B must not be acknowledged."""
    rng = np.random.default_rng([settings.seed, 1, case.index])
    kind, first, second = fz.patient_conflict_pair(
        _base(rng, settings.corpus), rng, settings.seed, "network", case.index
    )
    setup = _store_outcome(case, kind, settings, first, role="setup")
    outcome = _store_outcome(
        case, kind, settings, second, forbid_success="image of another patient acknowledged"
    )
    if setup.status != 0:
        outcome.violation = None  # A was not stored: B conflicts with nothing
        outcome.detail["setup"] = setup.result
    return [setup, outcome]


# --- hand-made DIMSE requests over a pynetdicom association -----------------------------------


def exchange(association: Association, request: Any, context_id: int, timeout: float) -> Any:
    """Send a request primitive as it is (pynetdicom's ``send_*`` would validate it) and
    return the response primitive, or None when none came within ``timeout``."""
    association._reactor_checkpoint.clear()
    while not association._is_paused:
        time.sleep(0.0001)
    try:
        association.dimse_timeout = timeout
        association.dimse.send_msg(request, context_id)
        _, response = association.dimse.get_msg(block=True)
        return response
    finally:
        association._reactor_checkpoint.set()


def _other_service(kind: str) -> Any:
    uid = fz.seeded_uid("other-service", kind)
    request: Any
    if kind in ("C-FIND", "C-GET", "C-MOVE"):
        request = {"C-FIND": C_FIND, "C-GET": C_GET, "C-MOVE": C_MOVE}[kind]()
        request.MessageID = 9
        request.AffectedSOPClassUID = ComputedRadiographyImageStorage
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = ""
        request.Identifier = io.BytesIO(encode(identifier, False, True) or b"")
        if kind == "C-MOVE":
            request.MoveDestination = "ELSEWHERE"
        return request
    request = {"N-GET": N_GET, "N-SET": N_SET, "N-ACTION": N_ACTION, "N-DELETE": N_DELETE}[kind]()
    request.MessageID = 9
    request.RequestedSOPClassUID = ComputedRadiographyImageStorage
    request.RequestedSOPInstanceUID = uid
    if kind == "N-ACTION":
        request.ActionTypeID = 1
    if kind == "N-SET":
        modification = Dataset()
        modification.PatientName = "CHANGED"
        request.ModificationList = io.BytesIO(encode(modification, False, True) or b"")
    return request


COMMAND_VARIANTS = (
    *(f"instance uid {name}" for name in fz.HOSTILE_COMMAND_UIDS),
    "class uid empty",
    "class uid too long",
    "class uid newline",
    "no data set",
    "C-FIND",
    "C-GET",
    "C-MOVE",
    "N-GET",
    "N-SET",
    "N-ACTION",
    "N-DELETE",
)


def play_command(case: NetworkCase, settings: Settings) -> list[Outcome]:
    """A C-STORE request whose command is hostile (Affected SOP Instance or Class UID empty,
    missing, with NUL or newline, too long; no data set), or a DIMSE service the node does not
    provide: each must get a status, never success for a hostile C-STORE, and the
    association must stay usable (a C-ECHO on it afterwards)."""
    rng = np.random.default_rng([settings.seed, 1, case.index])
    variant = COMMAND_VARIANTS[int(rng.integers(0, len(COMMAND_VARIANTS)))]
    began = time.monotonic()
    ae = _ae(settings)
    ae.add_requested_context(ComputedRadiographyImageStorage, [ExplicitVRLittleEndian])
    ae.add_requested_context(fz.VERIFICATION)
    association = ae.associate("127.0.0.1", settings.port, ae_title=settings.called)
    if not association.is_established:
        result = rejection(association) if association.is_rejected else "association failed"
        return [Outcome(case.index, case.family, variant, result, time.monotonic() - began)]
    try:
        context_id = next(
            int(c.context_id)  # type: ignore[arg-type]
            for c in association.accepted_contexts
            if c.abstract_syntax == ComputedRadiographyImageStorage
        )
        if variant.startswith(("instance uid", "class uid", "no data set")):
            data = fz.fresh(settings.corpus / fz.BASES[0], settings.seed, "command", case.index)
            start, _ = fz.split_part10(data)
            request = C_STORE()
            request.MessageID = 7
            sop_class = str(ComputedRadiographyImageStorage)
            sop_instance = fz.seeded_uid(settings.seed, "command", case.index)
            if variant.startswith("instance uid"):
                sop_instance = fz.HOSTILE_COMMAND_UIDS[variant.removeprefix("instance uid ")]
            elif variant.startswith("class uid"):
                sop_class = {"empty": "", "too long": "9" * 80, "newline": "1.2.840\n10008"}[
                    variant.removeprefix("class uid ")
                ]
            request._affected_sop_class_uid = UID(sop_class)
            request._affected_sop_instance_uid = (
                None if sop_instance == fz.MISSING else UID(sop_instance)
            )
            if variant != "no data set":
                request.DataSet = io.BytesIO(data[start:])
            forbid: str | None = "hostile C-STORE command acknowledged"
        else:
            request = _other_service(variant)
            forbid = None
        response = exchange(association, request, context_id, settings.dimse_timeout)
        seconds = time.monotonic() - began
        if response is None:
            hang = seconds >= settings.dimse_timeout * 0.9
            result = "no response within the DIMSE timeout" if hang else "aborted by the node"
            return [Outcome(case.index, case.family, variant, result, round(seconds, 3), hang)]
        code = int(response.Status)
        outcome = Outcome(
            case.index,
            case.family,
            variant,
            f"status 0x{code:04X}",
            round(seconds, 3),
            status=code,
            violation=forbid if code == 0 and forbid else None,
        )
        if association.is_established:
            association.dimse_timeout = 10
            after = association.send_c_echo()
            if "Status" not in after:
                outcome.violation = outcome.violation or "association unusable after the request"
        return [outcome]
    finally:
        if association.is_established:
            association.release()


# --- raw PDU cases -----------------------------------------------------------------------------


def _raw(case: NetworkCase, kind: str, result: str, began: float, **extra: Any) -> Outcome:
    return Outcome(
        case.index, case.family, kind, result, round(time.monotonic() - began, 3), **extra
    )


def _answer(peer: fz.RawPeer, timeout: float = ANSWER_SECONDS) -> tuple[str, bool]:
    """What the node does next (a PDU, closing) and whether it did nothing (a hang)."""
    got = peer.receive(timeout)
    if got.what == "pdu" and got.kind == fz.A_ASSOCIATE_AC:
        peer.send(fz.a_release_rq())
        peer.receive(5.0)
        return "A-ASSOCIATE-AC", False
    if got.what == "timeout":
        return f"no answer within {timeout:.0f} s", True
    return got.describe(), False


RQ_FIELD_VARIANTS = (
    "protocol version 0",
    "protocol version 0xFFFF",
    "called AE wrong",
    "calling AE empty",
    "no presentation context",
    "unknown abstract syntax",
    "unknown transfer syntax",
    "max PDU 0",
    "max PDU 1",
    "max PDU 0xFFFFFFFF",
    "item length past the end",
    "even context id",
    "duplicate context ids",
    "200 presentation contexts",
    "wrong application context",
    "abstract syntax with a forged line",
    "calling AE with a forged line",
    "abstract syntax with NUL",
)


def _rq_variant(variant: str) -> bytes:
    cr = ComputedRadiographyImageStorage
    explicit = [str(ExplicitVRLittleEndian)]
    options: dict[str, Callable[[], bytes]] = {
        "protocol version 0": lambda: fz.associate_rq(protocol_version=0),
        "protocol version 0xFFFF": lambda: fz.associate_rq(protocol_version=0xFFFF),
        "called AE wrong": lambda: fz.associate_rq(called="NOT_THE_NODE"),
        "calling AE empty": lambda: fz.associate_rq(calling="                "),
        "no presentation context": lambda: _without_contexts(),
        "unknown abstract syntax": lambda: fz.associate_rq(contexts=[(1, "1.2.3.4", explicit)]),
        "unknown transfer syntax": lambda: fz.associate_rq(contexts=[(1, cr, ["1.2.3.4.5"])]),
        "max PDU 0": lambda: fz.associate_rq(max_pdu=0),
        "max PDU 1": lambda: fz.associate_rq(max_pdu=1),
        "max PDU 0xFFFFFFFF": lambda: fz.associate_rq(max_pdu=0xFFFFFFFF),
        "item length past the end": lambda: fz.associate_rq(extra_items=b"\x20\x00\xff\xff\x01"),
        "even context id": lambda: fz.associate_rq(contexts=[(2, cr, explicit)]),
        "duplicate context ids": lambda: fz.associate_rq(contexts=[(1, cr, explicit)] * 2),
        "200 presentation contexts": lambda: fz.associate_rq(
            contexts=[(2 * i + 1, cr, explicit) for i in range(128)]
        ),
        "wrong application context": lambda: _with_application_context("1.2.3"),
        "abstract syntax with a forged line": lambda: fz.associate_rq(
            contexts=[(1, "1.2.3\nFORGED cxr_node: stored instance 1.2.3", explicit)]
        ),
        "calling AE with a forged line": lambda: fz.associate_rq(calling="X\nFORGED LINE"),
        "abstract syntax with NUL": lambda: fz.associate_rq(contexts=[(1, "1.2.3\x004", explicit)]),
    }
    return options[variant]()


def _without_contexts() -> bytes:
    full = fz.associate_rq(contexts=[(1, "1", ["1"])])
    at = full.index(b"\x20\x00")  # the one presentation context item, cut out
    length = struct.unpack(">H", full[at + 2 : at + 4])[0]
    body = full[6:at] + full[at + 4 + length :]
    return fz.pdu(fz.A_ASSOCIATE_RQ, body)


def _with_application_context(uid: str) -> bytes:
    full = fz.associate_rq()
    old = fz.APPLICATION_CONTEXT.encode()
    at = full.index(old)
    body = full[6 : at - 4] + struct.pack(">BBH", 0x10, 0, len(uid)) + uid.encode()
    return fz.pdu(fz.A_ASSOCIATE_RQ, body + full[at + len(old) :])


def play_random_rq(case: NetworkCase, settings: Settings) -> list[Outcome]:
    """An A-ASSOCIATE-RQ of random bytes, a valid one with bytes flipped, or one with a field
    that is wrong; the node must reject, abort or close, never sit there."""
    rng = np.random.default_rng([settings.seed, 1, case.index])
    variant = str(rng.choice(["random body", "random bytes", "flipped", "field"]))
    if variant == "random body":
        data = fz.pdu(
            fz.A_ASSOCIATE_RQ, rng.integers(0, 256, int(rng.integers(0, 4096)), np.uint8).tobytes()
        )
    elif variant == "random bytes":
        data = rng.integers(0, 256, size=int(rng.integers(6, 2048)), dtype=np.uint8).tobytes()
        # an honest length: a lying one is a header-only case, played in a volley
        data = data[:2] + struct.pack(">I", len(data) - 6) + data[6:]
    elif variant == "flipped":
        mutable = bytearray(fz.associate_rq())
        for at in rng.integers(6, len(mutable), size=int(rng.integers(1, 8))):
            mutable[at] ^= int(rng.integers(1, 256))
        data = bytes(mutable)
    else:
        variant = RQ_FIELD_VARIANTS[int(rng.integers(0, len(RQ_FIELD_VARIANTS)))]
        data = _rq_variant(variant)
    began = time.monotonic()
    with fz.raw_peer(settings.port) as peer:
        peer.send(data)
        result, hang = _answer(peer)
    return [_raw(case, variant, result, began, hang=hang)]


UNKNOWN_TYPES = (0x00, 0x08, 0x09, 0x0A, 0x10, 0x55, 0x80, 0xFF)


def play_unknown_type(case: NetworkCase, settings: Settings) -> list[Outcome]:
    """A PDU of an unknown type (or one out of place: an A-ASSOCIATE-AC or A-RELEASE-RP from
    the requestor, a second A-ASSOCIATE-RQ), before or after association."""
    rng = np.random.default_rng([settings.seed, 1, case.index])
    after = bool(rng.random() < 0.5)
    kinds = [*UNKNOWN_TYPES, fz.A_ASSOCIATE_AC, fz.A_RELEASE_RP] + (
        [fz.A_ASSOCIATE_RQ] if after else []
    )
    kind = int(kinds[int(rng.integers(0, len(kinds)))])
    body = rng.integers(0, 256, size=int(rng.integers(0, 512)), dtype=np.uint8).tobytes()
    label = f"type 0x{kind:02X} {'after' if after else 'before'} association"
    began = time.monotonic()
    with fz.raw_peer(settings.port) as peer:
        if after:
            answer, _ = peer.associate()
            if answer.kind != fz.A_ASSOCIATE_AC:
                return [_raw(case, label, f"association: {answer.describe()}", began)]
        peer.send(fz.pdu(kind, body))
        got = peer.wait_closed(ANSWER_SECONDS)
    hang = got.what == "timeout"
    result = f"no close within {ANSWER_SECONDS:.0f} s" if hang else f"{got.what}"
    if got.kind is not None:
        result += f" after {fz.PDU_NAMES.get(got.kind, hex(got.kind))}"
    return [_raw(case, label, result, began, hang=hang)]


def play_malformed_pdata(case: NetworkCase, settings: Settings) -> list[Outcome]:
    """After a valid association, a P-DATA-TF that lies: a PDV longer than its PDU, a PDV of
    length 0, an unaccepted context, a command of garbage, a data set with no command before
    it. Then a C-ECHO on the same association: answered, or the association aborted, never
    silence."""
    rng = np.random.default_rng([settings.seed, 1, case.index])
    variants = (
        "pdv past pdu",
        "pdv length 0",
        "unknown context",
        "garbage command",
        "command without Command Field",
        "unknown Command Field",
        "data first",
    )
    variant = variants[int(rng.integers(0, len(variants)))]
    junk = rng.integers(0, 256, size=int(rng.integers(2, 600)), dtype=np.uint8).tobytes()
    began = time.monotonic()
    with fz.raw_peer(settings.port) as peer:
        answer, accepted = peer.associate()
        if answer.kind != fz.A_ASSOCIATE_AC or 1 not in accepted or 3 not in accepted:
            return [_raw(case, variant, f"association: {answer.describe()}", began)]
        if variant == "pdv past pdu":
            data = fz.pdu(fz.P_DATA_TF, struct.pack(">IBB", 100000, 1, 3) + junk)
        elif variant == "pdv length 0":
            data = fz.pdu(fz.P_DATA_TF, struct.pack(">IBB", 0, 1, 3))
        elif variant == "unknown context":
            data = fz.p_data(99, fz.c_echo_command(), command=True, last=True)
        elif variant == "garbage command":
            data = fz.p_data(1, junk, command=True, last=True)
        elif variant in ("command without Command Field", "unknown Command Field"):
            field_value = None if variant.startswith("command without") else 0x0FFF
            data = fz.p_data(1, fz.command_set(field_value), command=True, last=True)
        else:
            data = fz.p_data(1, junk, command=False, last=True)
        peer.send(data)
        peer.send(fz.p_data(3, fz.c_echo_command(message_id=2), command=True, last=True))
        got = peer.receive(ANSWER_SECONDS)
    if got.what == "pdu" and got.kind == fz.P_DATA_TF:
        result = "answered (association still usable)"
    elif got.what == "timeout":
        result = f"no answer within {ANSWER_SECONDS:.0f} s"
    else:
        result = got.describe()
    return [_raw(case, variant, result, began, hang=got.what == "timeout")]


def play_abort_mid_store(case: NetworkCase, settings: Settings) -> list[Outcome]:
    """A C-STORE whose data set stops part-way: then an A-ABORT, a TCP reset or a plain close.
    Nothing to answer; the partial file must not stay in the spool (counted at the end)."""
    rng = np.random.default_rng([settings.seed, 1, case.index])
    data = fz.fresh(_base(rng, settings.corpus), settings.seed, "abort", case.index)
    start, syntax = fz.split_part10(data)
    body = data[start:]
    sop_class = fz.sop_class_of(data)
    ending = str(rng.choice(["A-ABORT", "reset", "close"]))
    fraction = float(rng.uniform(0.05, 0.95))
    began = time.monotonic()
    peer = fz.RawPeer(settings.port)
    try:
        answer, accepted = peer.associate(contexts=[(1, sop_class, [syntax])])
        if answer.kind != fz.A_ASSOCIATE_AC or 1 not in accepted:
            return [_raw(case, ending, f"association: {answer.describe()}", began)]
        uid = fz.seeded_uid(settings.seed, "abort", case.index, "sop")
        peer.send(fz.p_data(1, fz.c_store_command(sop_class, uid), command=True, last=True))
        cut = int(len(body) * fraction)
        for at in range(0, cut, 16000):
            if peer.send(fz.p_data(1, body[at : min(at + 16000, cut)], False, False)) != "ok":
                break
        if ending == "A-ABORT":
            peer.send(fz.a_abort())
        time.sleep(0.05)
    finally:
        peer.close(reset=ending == "reset")
    return [
        _raw(
            case,
            ending,
            f"{ending} part-way through the data set",
            began,
            detail={"fraction_sent": round(fraction, 2)},
        )
    ]


def play_tcp_burst(
    case: NetworkCase, settings: Settings, probe: Callable[[], EchoResult]
) -> list[Outcome]:
    """5 to 30 TCP connections opened and closed (FIN or RST) with no DICOM at all, as a port
    scanner or a health probe does; then at once a C-ECHO, which must be answered."""
    rng = np.random.default_rng([settings.seed, 1, case.index])
    count = int(rng.integers(5, 31))
    reset = bool(rng.random() < 0.5)
    began = time.monotonic()
    for _ in range(count):
        with contextlib.suppress(OSError):
            fz.RawPeer(settings.port).close(reset=reset)
    answer = probe()
    kind = f"{count} x connect-{'reset' if reset else 'close'}"
    return [
        _raw(
            case,
            kind,
            f"C-ECHO after: {answer.result}",
            began,
            violation=None if answer.ok else "lockout after a TCP burst",
            detail={"echo_seconds": round(answer.seconds, 3)},
        )
    ]


_STREAM_RESULTS = {
    "answered": "answered",
    "closed": "closed by the node",
    "stalled": "node stopped reading",
    "deadline": f"still reading after {SLOW_SECONDS:.0f} s",
    "ok": "node read all of it",
}


def _streamed(
    case: NetworkCase, kind: str, peer: fz.RawPeer, ending: str, began: float, limit_mb: float
) -> Outcome:
    """The outcome of a case that streamed a huge PDU: what the node did, after how many
    megabytes (sent before its answer; a few MB sit in socket buffers), and whether that is
    far past the limit it should apply before reading (a violation)."""
    taken = peer.sent / (1 << 20)
    result = _STREAM_RESULTS[ending]
    if ending in ("answered", "ok"):
        got = peer.receive(5.0)
        result = (
            f"{result}: {got.describe()}"
            if ending == "answered"
            else f"{result}, then {got.describe()}"
        )
    return _raw(
        case,
        kind,
        result,
        began,
        violation=f"read {kind} far past its limit" if taken > limit_mb else None,
        detail={"megabytes_before_answer": round(taken, 1)},
    )


def play_pdata_huge(case: NetworkCase, settings: Settings) -> list[Outcome]:
    """After a valid association, a P-DATA-TF declaring 256 MB (the node's max_pdu is 256 KB):
    zeros stream until the node answers, closes or stops reading (at most SLOW_SECONDS). The
    node must refuse it from its header, not after reading it (over 32 MB: a violation)."""
    declared = 256 << 20
    began = time.monotonic()
    with fz.raw_peer(settings.port) as peer:
        answer, accepted = peer.associate()
        if answer.kind != fz.A_ASSOCIATE_AC or 1 not in accepted:
            return [_raw(case, "256 MB P-DATA-TF", f"association: {answer.describe()}", began)]
        head = struct.pack(">BBI", fz.P_DATA_TF, 0, declared)
        head += struct.pack(">IBB", declared - 4, 1, 0)
        peer.sent = 0
        ending = peer.send(head)
        if ending == "ok":
            ending = peer.stream(b"\0" * (1 << 20), declared - 6, began + SLOW_SECONDS)
        return [_streamed(case, "256 MB P-DATA-TF", peer, ending, began, 32)]


def play_big_rq(case: NetworkCase, settings: Settings) -> list[Outcome]:
    """A 64 MB A-ASSOCIATE-RQ from an unknown calling AE (a valid start, then thousands of
    64 KB presentation context items): the node must refuse it from its header or within
    its first MB (over 8 MB: a violation)."""
    declared = 64 << 20
    start = fz.associate_rq(calling="FUZZ_UNKNOWN")[6:]
    filler = fz._item(0x20, b"\xff\x00\x00\x00" + fz._item(0x30, b"1." + b"2" * 65000))
    began = time.monotonic()
    with fz.raw_peer(settings.port) as peer:
        ending = peer.send(struct.pack(">BBI", fz.A_ASSOCIATE_RQ, 0, declared) + start)
        if ending == "ok":
            ending = peer.stream(filler, declared - len(start), began + SLOW_SECONDS)
        return [_streamed(case, "64 MB A-ASSOCIATE-RQ", peer, ending, began, 8)]


def play_many_associations(
    case: NetworkCase, settings: Settings, probe: Callable[[], EchoResult]
) -> list[Outcome]:
    """40 associations at once (more than max_associations), each a C-ECHO held 2 s; some are
    refused (local limit exceeded: fine); once all are released a C-ECHO must be answered."""
    results: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        ae = _ae(settings, 10.0)
        ae.add_requested_context(fz.VERIFICATION)
        try:
            association = ae.associate("127.0.0.1", settings.port, ae_title=settings.called)
        except Exception as exc:
            with lock:
                results.append(f"failed ({type(exc).__name__})")
            return
        if association.is_established:
            association.send_c_echo()
            time.sleep(2.0)
            association.release()
            outcome = "accepted"
        elif association.is_rejected:
            outcome = rejection(association)
        else:
            outcome = "aborted or no answer"
        with lock:
            results.append(outcome)

    began = time.monotonic()
    threads = [threading.Thread(target=one, daemon=True) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.1, began + 30.0 - time.monotonic()))
    answer = probe()
    counts = {r: results.count(r) for r in sorted(set(results))}
    return [
        _raw(
            case,
            "40 at once",
            f"C-ECHO after: {answer.result}",
            began,
            violation=None if answer.ok else "lockout after many associations",
            detail={"associations": counts, "unfinished": 40 - len(results)},
        )
    ]


def play_slow(case: NetworkCase, settings: Settings) -> list[Outcome]:
    """One connection of a volley: a PDU header claiming 1,000 bytes (or 4 GB) and then
    nothing, or one byte every 3 s (slow loris). The node must close it within a few seconds
    (its A-ASSOCIATE-RQ deadline); held open for SLOW_SECONDS it is a violation."""
    rng = np.random.default_rng([settings.seed, 1, case.index])
    variant = str(rng.choice(["header only", "header only 4 GB", "slow loris"]))
    claimed = 0xFFFFFFFF if variant.endswith("4 GB") else 1000
    began = time.monotonic()
    deadline = began + SLOW_SECONDS
    try:
        peer = fz.RawPeer(settings.port)
    except OSError as exc:
        return [_raw(case, variant, f"no connection ({type(exc).__name__})", began)]
    try:
        peer.send(struct.pack(">BBI", fz.A_ASSOCIATE_RQ, 0, claimed) + b"\x00\x01")
        closed = False
        while time.monotonic() < deadline:
            got = peer.receive(min(3.0, max(0.01, deadline - time.monotonic())))
            if got.what != "timeout":
                closed = True
                break
            if variant == "slow loris" and peer.send(b"\x00", timeout=1.0) != "ok":
                closed = True
                break
    finally:
        peer.close()
    seconds = time.monotonic() - began
    if closed:
        return [_raw(case, variant, f"closed by the node within {_bucket(seconds)}", began)]
    return [
        _raw(
            case,
            variant,
            f"held open {SLOW_SECONDS:.0f} s",
            began,
            violation="connection without an A-ASSOCIATE-RQ held open",
        )
    ]


def _bucket(seconds: float) -> str:
    for limit in (1, 3, 6, 10):
        if seconds <= limit:
            return f"{limit} s"
    return f"{SLOW_SECONDS:.0f} s"


def play(case: NetworkCase, settings: Settings, probe: Callable[[], EchoResult]) -> list[Outcome]:
    """Play one case (a slow one too; the bench plays those in volleys, concurrently)."""
    players: dict[str, Callable[[NetworkCase, Settings], list[Outcome]]] = {
        "structure": play_store,
        "bytes": play_store,
        "deflate": play_store,
        "conflict": play_conflict,
        "command": play_command,
        "pdu:random_rq": play_random_rq,
        "pdu:unknown_type": play_unknown_type,
        "pdu:malformed_pdata": play_malformed_pdata,
        "pdu:abort_mid_store": play_abort_mid_store,
        "pdu:pdata_huge": play_pdata_huge,
        "pdu:big_rq": play_big_rq,
        "pdu:slow": play_slow,
    }
    began = time.monotonic()
    try:
        if case.family == "pdu:tcp_burst":
            return play_tcp_burst(case, settings, probe)
        if case.family == "pdu:many_associations":
            return play_many_associations(case, settings, probe)
        return players[case.family](case, settings)
    except ConnectionRefusedError:
        return [_raw(case, "", "connection refused (node not listening)", began)]
    except Exception as exc:  # a bug of the fuzzer: say so, never count it as the node's
        return [
            _raw(
                case,
                "",
                f"fuzzer error ({type(exc).__name__})",
                began,
                detail={"error": str(exc)[:300]},
            )
        ]
