"""Workarounds that reach into private parts of pydicom, highdicom, pynetdicom and kombu.

Every read or write of another library's private attributes, methods or modules in
``cxr_node`` and ``workers`` is in this module and nowhere else. Each workaround says why it
exists and what upstream says; each runs only on the release series it was written and tested
against (``SUPPORTED_*_VERSIONS``: the series installed and pinned today) and, on any other
version, falls back to the library's public API: slower, or without the fix, but correct.
``tests/unit/test_compat.py`` runs both paths of each and checks that they agree.

Imports: pydicom only at module level. The DICOM edge imports this module and installs neither
highdicom nor torch; highdicom, pynetdicom and kombu are imported where they are used.

What is *not* here, because a public hook does the job: the receive folder of chunked C-STORE
(``tempfile.tempdir``, :mod:`cxr_node.dicom.receive`) and the calling-AE check (an
``EVT_REQUESTED`` handler, :mod:`cxr_node.dicom.scp`).
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import decimal
import functools
import importlib.metadata
import logging
import os
import re
import socket
import struct
import threading
import uuid
import weakref
from collections.abc import Callable, Mapping
from io import BytesIO
from time import monotonic
from typing import Any, TypeVar

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import UID
from pydicom.valuerep import DA, DT, IS, TM, DSfloat, PersonName

from cxr_node.logs import describe_exception

log = logging.getLogger(__name__)

D = TypeVar("D", bound=Dataset)

# --- which versions the workarounds were written for ------------------------------------------

SUPPORTED_PYDICOM_VERSIONS: tuple[tuple[int, ...], ...] = ((3, 0),)
"""pydicom release series (major, minor) the pydicom workarounds were checked against: 3.0.x."""
SUPPORTED_HIGHDICOM_VERSIONS: tuple[tuple[int, ...], ...] = ((0, 28),)
"""highdicom series the SR workarounds were checked against: 0.28.x."""
SUPPORTED_PYNETDICOM_VERSIONS: tuple[tuple[int, ...], ...] = ((3, 0),)
"""pynetdicom series the socket fix was checked against: 3.0.x."""
SUPPORTED_KOMBU_VERSIONS: tuple[tuple[int, ...], ...] = ((5,),)
"""kombu series the transport workarounds were checked against: 5.x."""

_FELL_BACK: set[str] = set()


@functools.cache
def installed_version(distribution: str) -> tuple[int, ...] | None:
    """The leading numeric parts of an installed distribution's version (``3.0.2`` -> (3, 0,
    2); ``5.7.0rc1`` -> (5, 7, 0)), or None when it is not installed."""
    try:
        text = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    numbers: list[int] = []
    for part in text.split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        numbers.append(int(digits.group()))
        if digits.group() != part:
            break
    return tuple(numbers)


def _supported(distribution: str, series: tuple[tuple[int, ...], ...]) -> bool:
    version = installed_version(distribution)
    if version is not None and any(version[: len(s)] == s for s in series):
        return True
    if distribution not in _FELL_BACK:
        _FELL_BACK.add(distribution)
        log.warning(
            "%s %s is not a version cxr_node.compat was written for (%s): using its public API",
            distribution,
            ".".join(map(str, version)) if version else "(not installed)",
            ", ".join(".".join(map(str, s)) + ".x" for s in series) or "none",
        )
    return False


def pydicom_supported() -> bool:
    """Whether the installed pydicom is one of ``SUPPORTED_PYDICOM_VERSIONS``."""
    return _supported("pydicom", SUPPORTED_PYDICOM_VERSIONS)


def highdicom_supported() -> bool:
    """Whether the installed highdicom is one of ``SUPPORTED_HIGHDICOM_VERSIONS``."""
    return _supported("highdicom", SUPPORTED_HIGHDICOM_VERSIONS)


def pynetdicom_supported() -> bool:
    """Whether the installed pynetdicom is one of ``SUPPORTED_PYNETDICOM_VERSIONS``."""
    return _supported("pynetdicom", SUPPORTED_PYNETDICOM_VERSIONS)


def kombu_supported() -> bool:
    """Whether the installed kombu is one of ``SUPPORTED_KOMBU_VERSIONS``."""
    return _supported("kombu", SUPPORTED_KOMBU_VERSIONS)


# --- pydicom: the fast Part 10 writer (workers.encode.part10) ---------------------------------


def fast_part10_writer() -> bool:
    """Whether :func:`workers.encode.part10.to_part10` may write the bytes itself.

    Why: ``Dataset.save_as`` spends ~20 us per element in generic machinery, and ambiguous-VR
    correction runs again for every nested item (quadratic in the depth of an SR tree); our SRs
    carry ~2000 elements (pydicom#512 and #605 track write speed; nothing there makes it fast
    enough). The writer's contract is "the bytes ``dcmwrite`` writes", which it reproduces by
    mirroring pydicom 3.0's ``write_dataset`` decisions, so it runs only on the series it was
    checked against. Fallback: ``dcmwrite`` itself.
    """
    return pydicom_supported()


def written_character_set(dataset: Dataset) -> Any:
    """``Dataset._character_set`` (pydicom 3.0): the encodings the dataset's text is written in,
    its own (0008,0005) or else the one its parent passed down (``_parent_encoding``, set by
    pydicom when it reads or nests the dataset; see pydicom#2078). ``write_dataset`` compares it
    with ``original_character_set`` to decide whether raw elements must be re-encoded; the fast
    writer makes the same decision. Only called when :func:`fast_part10_writer` is true.
    """
    return dataset._character_set


# --- pydicom + highdicom: fast deep copies (workers.encode.copies) ----------------------------


def fast_copies() -> bool:
    """Whether :func:`clone` copies pydicom objects through their internal state.

    Why: ``copy.deepcopy`` of a Dataset costs ~30 us per element; the SR encoder copies
    templates highdicom built once (TID 1500 trees, equipment items) for every document. No
    public pydicom or highdicom copy is faster (highdicom#207 added ``copy=False`` to the
    ``from_dataset`` methods only). The fast copy knows pydicom 3.0's attribute layout
    (``_dict``, ``_value``, ``_list``, ``_private_blocks``, the pixel caches) and highdicom
    0.28's ``ContentSequence._lut`` name index. Fallback: ``copy.deepcopy``, then the UID
    replacement done with the public API.
    """
    return pydicom_supported() and highdicom_supported()


_NO_UIDS: Mapping[str, str] = {}


def clone(dataset: D, uids: Mapping[str, str] = _NO_UIDS) -> D:
    """A deep copy of ``dataset`` whose UI values found in ``uids`` are replaced by their
    mapping (set through pydicom, so converted and validated as when the template was built).

    The fast copy shares immutable values and highdicom ``CodedConcept`` items (code triples,
    PS3.3 8.8, never changed once made, which highdicom itself shares between the items that
    use a concept) and keeps every object's class, a ``ContentSequence``'s root / SR flags and
    its index by concept name.
    """
    if fast_copies():
        return _fast_copier().dataset(dataset, uids)
    result = copy.deepcopy(dataset)
    if uids:
        _replace_uids(result, uids)
    return result


def clone_element(element: DataElement, uids: Mapping[str, str] = _NO_UIDS) -> DataElement:
    """A deep copy of one data element (see :func:`clone`)."""
    if fast_copies():
        result = _fast_copier().element(element, uids)
    else:
        result = copy.deepcopy(element)
        if uids:
            _replace_uid(result, uids)
    assert isinstance(result, DataElement)
    return result


def _replace_uids(dataset: Dataset, uids: Mapping[str, str]) -> None:
    """Public-API UID replacement, depth first; raw (never decoded) elements stay as they are,
    as in the fast copy."""
    for element in dataset.values():
        if isinstance(element, DataElement):
            _replace_uid(element, uids)


def _replace_uid(element: DataElement, uids: Mapping[str, str]) -> None:
    value = element.value
    if element.VR == "SQ":
        for item in value or ():
            _replace_uids(item, uids)
    elif element.VR == "UI":
        if isinstance(value, str):
            if value in uids:
                element.value = uids[value]
        elif isinstance(value, MultiValue) and any(item in uids for item in value):
            element.value = [uids.get(item, item) for item in value]


_IMMUTABLE = (
    str,
    bytes,
    int,
    float,
    decimal.Decimal,
    PersonName,
    datetime.date,
    datetime.time,
    type(None),
)
"""Value types that are never changed in place (UID, DS, IS, DA, TM and DT derive from them)."""
_IMMUTABLE_TYPES = frozenset(
    {str, bytes, int, float, type(None), UID, DSfloat, IS, PersonName, DA, TM, DT}
)
"""The common ones, for a quick exact-type test."""
_PER_DATASET_DICTS = ("_pixel_array_opts", "_pixel_id")


class _FastCopier:
    """Copies through pydicom 3.0's and highdicom 0.28's internal state (see fast_copies)."""

    def __init__(self, coded_concept: type, sequence_types: frozenset[type]) -> None:
        self.coded_concept = coded_concept
        self.sequence_types = sequence_types

    def dataset(self, dataset: D, uids: Mapping[str, str]) -> D:
        if type(dataset) is self.coded_concept:
            return dataset
        state = dataset.__dict__
        if state.get("_private_blocks") or state.get("_pixel_array") is not None:
            return copy.deepcopy(dataset)  # private blocks and decoded pixels hold references
        result = object.__new__(type(dataset))
        new_state = state.copy()
        for key in _PER_DATASET_DICTS:
            if key in new_state:
                new_state[key] = new_state[key].copy()
        new_state["_private_blocks"] = {}
        if "file_meta" in new_state:
            new_state["file_meta"] = self.dataset(new_state["file_meta"], _NO_UIDS)
        element = self.element
        new_state["_dict"] = {tag: element(elem, uids) for tag, elem in state["_dict"].items()}
        result.__dict__.update(new_state)
        return result

    def element(self, element: Any, uids: Mapping[str, str]) -> Any:
        if type(element) is not DataElement:
            if isinstance(element, RawDataElement):
                return element  # a named tuple of bytes: immutable
            return copy.deepcopy(element)
        result = object.__new__(DataElement)
        result.__dict__.update(element.__dict__)
        value = element._value
        kind = type(value)
        if kind in _IMMUTABLE_TYPES or isinstance(value, _IMMUTABLE):
            if uids and element.VR == "UI" and isinstance(value, str) and value in uids:
                result.value = uids[value]
        elif kind in self.sequence_types or isinstance(value, Sequence):
            result._value = self.sequence(value, uids)
        elif isinstance(value, MultiValue):
            if uids and element.VR == "UI" and any(item in uids for item in value):
                result.value = [uids.get(item, item) for item in value]
            else:
                values = object.__new__(kind)
                values.__dict__.update(value.__dict__)
                values._list = list(value._list)
                result._value = values
        else:
            result._value = copy.deepcopy(value)
        return result

    def sequence(self, sequence: Sequence, uids: Mapping[str, str]) -> Sequence:
        result = object.__new__(type(sequence))
        result.__dict__.update(sequence.__dict__)
        items = [self.dataset(item, uids) for item in sequence._list]
        result._list = items
        lookup = sequence.__dict__.get("_lut")
        if lookup is not None:
            # highdicom's ContentSequence indexes its items by concept name: index the copies.
            copies = {id(old): new for old, new in zip(sequence._list, items, strict=True)}
            index = lookup.copy()
            for name, members in lookup.items():
                index[name] = [copies[id(m)] for m in members if id(m) in copies]
            result.__dict__["_lut"] = index
        return result


@functools.cache
def _fast_copier() -> _FastCopier:
    from highdicom.sr import CodedConcept, ContentSequence

    return _FastCopier(CodedConcept, frozenset({Sequence, ContentSequence}))


# --- highdicom: SR documents without re-parsing their content (workers.encode.sr) ----------


def sr_templates() -> bool:
    """Whether workers.encode.sr may build TID 1500 trees from copies of templates.

    Why: highdicom validates every content item it makes (~560 items took 0.3 s per
    document). The templates are trees highdicom built once, with placeholders, and the code
    that fills them in knows where highdicom 0.28 puts each value (and how its NumContentItem
    and CodeContentItem set them); copies come from :func:`clone`. Fallback: highdicom builds
    every tree itself.
    """
    return highdicom_supported() and pydicom_supported()


def build_sr(sr_class: Callable[..., D], content: Dataset, **arguments: Any) -> D:
    """``sr_class(content=content, **arguments)`` (a highdicom SR document class), without
    highdicom's copy of the content tree.

    Why: highdicom 0.28's ``_SR.__init__`` deep-copies the whole tree, parses the copy back
    into content items (``ContentItem._from_dataset_derived``) for its ``content`` property,
    then puts the *original* tree's elements into the document; for our trees that cost more
    than everything else together, and no argument skips it. Here the constructor gets the
    root without its children (evidence is taken from ``evidence`` the same way), then the
    root's elements are set as the constructor sets them and the private ``_content`` (what
    ``content`` returns) is the tree itself, which must consist of highdicom content items
    already. Fallback: the constructor with the whole tree (tests/unit/test_encode_sr.py and
    test_compat.py check that both give the same document).
    """
    if not highdicom_supported():
        return sr_class(content=content, **arguments)
    from highdicom.sr import ContentSequence

    root = content[0] if isinstance(content, Sequence) else content
    stub = Dataset()
    for element in root:
        if element.keyword != "ContentSequence":
            stub.add(element)
    stub.ContentSequence = []
    document = sr_class(content=stub, **arguments)
    for element in root:
        document[element.tag] = element
    document._content = ContentSequence([root], is_root=True)  # type: ignore[list-item]
    return document


# --- pynetdicom -------------------------------------------------------------------------------


def enable_chunked_store_receive() -> None:
    """Receive C-STORE data sets as Part 10 files, never whole in memory.

    ``pynetdicom._config`` is private by name but is pynetdicom's documented configuration
    module ("Configuration Options (pynetdicom._config)", STORE_RECV_CHUNKED_DATASET, added in
    2.0): the public API, so no version guard. The file is made by ``NamedTemporaryFile`` in
    the default temporary folder (see :mod:`cxr_node.dicom.receive`).
    """
    from pynetdicom import _config

    if not hasattr(_config, "STORE_RECV_CHUNKED_DATASET"):
        raise RuntimeError("this pynetdicom has no STORE_RECV_CHUNKED_DATASET option")
    _config.STORE_RECV_CHUNKED_DATASET = True


def enable_chunked_store_send() -> None:
    """Send a Part 10 file given by path as its bytes, without decoding it
    (``pynetdicom._config.STORE_SEND_CHUNKED_DATASET``, documented like the receive option).
    Without the option pynetdicom reads the file and sends the decoded data set: still correct.
    """
    from pynetdicom import _config

    if hasattr(_config, "STORE_SEND_CHUNKED_DATASET"):
        _config.STORE_SEND_CHUNKED_DATASET = True


def install_pynetdicom_socket_close_fix() -> bool:
    """Make ``AssociationSocket`` close its descriptor even when ``shutdown()`` fails.

    Why: pynetdicom 3.0's ``AssociationSocket._shutdown_socket`` calls ``shutdown()`` then
    ``close()`` in one ``try``; ``shutdown()`` raises on a socket that never connected (a
    refused connection, a failed TLS handshake) or whose peer is gone, so ``close()`` is
    skipped and the descriptor waits for the garbage collector (a ResourceWarning; under load,
    descriptors run out). Upstream: pydicom/pynetdicom#979 (sockets left open after an abort),
    fixed in part by pynetdicom#999, which left ``_shutdown_socket`` as it was in 3.0.4.
    Fallback: pynetdicom's own method. Idempotent; returns whether the fix is in place.
    """
    if not pynetdicom_supported():
        return False
    from pynetdicom.transport import AssociationSocket

    current = AssociationSocket.__dict__.get("_shutdown_socket")
    if current is _shutdown_and_close:
        return True
    if current is None:
        return False
    _REPLACED["pynetdicom AssociationSocket._shutdown_socket"] = current
    AssociationSocket._shutdown_socket = _shutdown_and_close  # type: ignore[method-assign]
    return True


_REPLACED: dict[str, Any] = {}
"""What an installed workaround replaced, by name (for the tests of the fallback)."""


def _shutdown_and_close(self: Any) -> None:
    """Shut the socket down if it can be, and close it in every case."""
    sock = self.socket
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


# --- kombu ------------------------------------------------------------------------------------


def embedded_filesystem_transport() -> type[Any]:
    """The kombu transport class of the embedded queue (:mod:`cxr_node.embedded_transport`).

    Why: kombu's ``filesystem`` transport creates a message file under its final name and
    then writes it, while a consumer in another process renames and reads any file with that
    name as soon as it lists the folder: it can read an empty or partial message, fail to
    decode it and drop it (the ledger recovers such a study, but only after
    ``RESEND_QUEUED_AFTER_SECONDS``). The workaround overrides the private ``Channel._put`` to
    write under a name no consumer takes (``.part`` after the queue suffix) and rename into
    place, which POSIX makes atomic. kombu has no public hook for how messages are written.
    Fallback: kombu's own transport (messages may be lost to the race; the ledger re-sends).
    """
    from kombu.transport import filesystem

    if not kombu_supported():
        return filesystem.Transport
    return _atomic_filesystem_transport()


@functools.cache
def _atomic_filesystem_transport() -> type[Any]:
    from kombu.transport import filesystem
    from kombu.utils.encoding import str_to_bytes
    from kombu.utils.json import dumps

    class AtomicChannel(filesystem.Channel):
        """File-system channel whose messages appear whole or not at all."""

        def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
            name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
            final = os.path.join(self.data_folder_out, name)
            partial = final + ".part"  # not "<queue>.msg": consumers skip it
            try:
                with open(partial, "wb") as stream:
                    stream.write(str_to_bytes(dumps(payload)))
                os.replace(partial, final)
            except OSError as exc:
                raise filesystem.ChannelError(f"Cannot add a message to {queue!r}") from exc

    class Transport(filesystem.Transport):
        """Kombu's file-system transport, writing each message whole."""

        Channel = AtomicChannel

    return Transport


def install_kombu_redis_reconnect_guard() -> bool:
    """Make a kombu Redis channel whose connection was closed raise a connection error (which
    Celery retries) instead of ``AttributeError`` (which stops the worker).

    Why: ``kombu.Connection.collect()`` and ``.close()`` set ``transport.client`` to None, and
    ``Transport.close_channel`` sets each closed channel's ``connection`` to None. After Redis
    restarts, Celery collects the broken connection and then closes its consumers' channels
    and acknowledges finished messages; a channel that has to make a new connection pool
    then (its pool was dropped: restoring unacknowledged messages at close, an ack) calls
    ``Channel._connparams``, which reads ``self.connection.client.hostname`` and raises
    ``AttributeError: 'NoneType' object has no attribute 'hostname'`` (or ``'client'``).
    ``ignore_errors`` and the consumer's retry loop only catch the transport's connection and
    channel errors, so Celery logs "Unrecoverable error" and the worker exits. Upstream:
    celery/kombu#582 ("Error on restarting Gossip", the same traceback), closed without a fix;
    ``_connparams`` still reads it unguarded in 5.7. The guard raises redis-py's
    ``ConnectionError`` there (one of the transport's ``connection_errors``), so the close is
    ignored, the ack is logged as failed (the message comes back after the visibility
    timeout; the ledger's claim keeps it from being analysed twice) and the consumer
    reconnects. Fallback: kombu's own method. Idempotent; returns whether the guard is in place.
    """
    if not kombu_supported():
        return False
    try:
        from kombu.transport import redis as kombu_redis
    except ImportError:
        return False
    channel_class = kombu_redis.Channel
    original = channel_class.__dict__.get("_connparams")
    if original is None or kombu_redis.redis is None:
        return False
    if getattr(original, "cxr_reconnect_guard", False):
        return True
    connection_error = kombu_redis.get_redis_ConnectionError()

    @functools.wraps(original)
    def _connparams(self: Any, *args: Any, **kwargs: Any) -> Any:
        transport = self.connection
        if transport is None or transport.client is None:
            raise connection_error("kombu Redis channel used after its connection was closed")
        return original(self, *args, **kwargs)

    _connparams.cxr_reconnect_guard = True  # type: ignore[attr-defined]
    channel_class._connparams = _connparams  # type: ignore[method-assign]
    return True


# --- pynetdicom 3.0: hostile DIMSE requests -------------------------------------------------
#
# Two patches of pynetdicom 3.0 internals, both needed for hostile requests to get a status:
#
# 1. ``DIMSEMessage.decode_msg``: with STORE_RECV_CHUNKED_DATASET on, decoding a C-STORE-RQ
#    whose command has no, or an empty, Affected SOP Instance UID raises AttributeError in the
#    DUL thread (writing the temporary file's File Meta), which kills it: no answer, a dead
#    connection. A UID over 64 characters raises ValueError in ``message_to_primitive`` and the
#    association is aborted; a UID with control characters is logged raw by pynetdicom
#    ("Non-conformant ... value"), a forged log line. The guard rewrites such UIDs in the
#    command set, before pynetdicom reads it, to stand-ins (``handlers.replacement_uid``,
#    under the nil-UUID root 2.25.0) that the C-STORE handler refuses with INVALID_REQUEST_UID.
# 2. ``Association._serve_request``: a C-FIND, C-GET, C-MOVE or DIMSE-N request on an accepted
#    (storage or verification) context is handed to that context's service class, which fails
#    and aborts, or never answers. The guard answers it with its own response type and status
#    0x0211 Unrecognized Operation (PS3.7 C.4.2); a C-CANCEL (which has no response, PS3.7
#    9.3.2.3) is ignored; a C-STORE whose SOP class is not a storage class goes to the storage
#    service all the same, so the handler answers it.

_C_STORE_RQ = 0x0001
_COMMAND_GROUP_LENGTH = Tag(0x0000, 0x0000)
_COMMAND_UIDS = (Tag(0x0000, 0x0002), Tag(0x0000, 0x1000))
"""Affected SOP Class UID, Affected SOP Instance UID (PS3.7 E.1-1)."""
_LAST_COMMAND_FRAGMENT = 0x03
"""Message Control Header bits: command information, last fragment (PS3.8 E.2)."""


def install_dimse_request_guards() -> bool:
    """Install the two guards above (once); False (pynetdicom's own behaviour) on another
    pynetdicom than 3.0.x, or when it lacks what they patch."""
    if not pynetdicom_supported():
        return False
    from pynetdicom.association import Association
    from pynetdicom.dimse_messages import DIMSEMessage
    from pynetdicom.dimse_primitives import C_CANCEL, C_ECHO, C_STORE
    from pynetdicom.pdu_primitives import P_DATA

    original_decode = getattr(DIMSEMessage, "decode_msg", None)
    original_serve = getattr(Association, "_serve_request", None)
    if original_decode is None or original_serve is None:
        log.warning("pynetdicom internals changed: hostile C-STORE commands are not guarded")
        return False
    if getattr(original_decode, "_cxr_guard", False):
        return True

    def decode_msg(self: Any, primitive: Any, assoc: Any = None) -> Any:
        if isinstance(primitive, P_DATA) and primitive.presentation_data_value_list:
            items: list[Any] = [list(item) for item in primitive.presentation_data_value_list]
            for index, (context_id, data) in enumerate(items):
                if data and data[0] & _LAST_COMMAND_FRAGMENT == _LAST_COMMAND_FRAGMENT:
                    command = self.encoded_command_set.getvalue() + data[1:]
                    if not _known_command(command):
                        _abort_undecodable(self, assoc, None)
                        return False
                    guarded = _guarded_store_command(command)
                    if guarded is not None:
                        self.encoded_command_set = BytesIO()
                        items[index] = [context_id, data[:1] + guarded]
                        replacement = P_DATA()
                        replacement.presentation_data_value_list = items
                        primitive = replacement
                    break
        try:
            complete = original_decode(self, primitive, assoc)
        except Exception as exc:  # raised in the DUL's state machine, it would kill its thread
            _abort_undecodable(self, assoc, exc)
            return False
        _watch_chunked_receive(self, assoc, bool(complete))
        return complete

    def serve_request(self: Any, msg: Any, context_id: int) -> None:
        if isinstance(msg, C_ECHO) or self._sent_release or msg.MessageID is None:
            return original_serve(self, msg, context_id)
        context = self._accepted_cx.get(context_id)
        if context is None:
            return original_serve(self, msg, context_id)  # pynetdicom aborts
        if isinstance(msg, C_STORE):
            if not msg.is_valid_request:
                return original_serve(self, msg, context_id)  # logged, ignored
            from pynetdicom import sop_class as pynetdicom_sop_classes
            from pynetdicom.service_class import StorageServiceClass

            service = pynetdicom_sop_classes.uid_to_service_class(str(msg.AffectedSOPClassUID))
            if service is StorageServiceClass:
                return original_serve(self, msg, context_id)
            return _serve_with_storage(self, msg, context)
        if isinstance(msg, C_CANCEL):
            log.info("C-CANCEL with nothing to cancel: ignored")
            return None
        _answer_unrecognized(self, msg, context_id)
        return None

    decode_msg._cxr_guard = True  # type: ignore[attr-defined]
    DIMSEMessage.decode_msg = decode_msg  # type: ignore[method-assign]
    Association._serve_request = serve_request  # type: ignore[method-assign]
    return True


def _known_command(command: bytes) -> bool:
    """Whether a command set decodes and names a DIMSE command pynetdicom knows (PS3.7 E.1)."""
    from pynetdicom.dimse_messages import _MESSAGE_TYPES
    from pynetdicom.dsutils import decode

    try:
        field = decode(BytesIO(command), True, True).get("CommandField")
    except Exception:
        return False
    return isinstance(field, int) and field in _MESSAGE_TYPES


def _abort_undecodable(message: Any, association: Any, exc: BaseException | None) -> None:
    """A DIMSE message that cannot be decoded is a protocol error: A-ABORT (Evt19, PS3.8
    9.2.3) rather than pynetdicom's exception in the DUL thread, which killed it."""
    from cxr_node.dicom.handlers import for_log

    message.encoded_command_set = BytesIO()
    log.warning(
        "undecodable DIMSE command from %s%s: aborted",
        for_log(_peer(association)) if association is not None else "?",
        f" ({describe_exception(exc)})" if exc is not None else "",
    )
    if association is not None:
        association.dul.event_queue.put("Evt19")


def _guarded_store_command(command: bytes) -> bytes | None:
    """The C-STORE-RQ command set with its unusable UIDs replaced by stand-ins, re-encoded
    (Implicit VR Little Endian, PS3.7 6.3.1); None when nothing needs replacing."""
    from pynetdicom.dsutils import decode, encode

    from cxr_node.dicom.handlers import replacement_uid

    try:
        dataset = decode(BytesIO(command), True, True)
        if dataset.get("CommandField") != _C_STORE_RQ:
            return None
        replaced = False
        for tag in _COMMAND_UIDS:
            raw = dataset.get_item(tag) if tag in dataset else None
            value = None
            if raw is not None:
                value = (raw.value or b"").decode("latin-1").rstrip("\x00 ")
            stand_in = replacement_uid(value)
            if stand_in is not None:
                if tag in dataset:
                    del dataset[tag]
                dataset.add_new(tag, "UI", stand_in)
                replaced = True
        if not replaced:
            return None
        if _COMMAND_GROUP_LENGTH in dataset:
            del dataset[_COMMAND_GROUP_LENGTH]
        body = encode(dataset, True, True)
        if body is None:
            return None
        dataset.add_new(_COMMAND_GROUP_LENGTH, "UL", len(body))
        return encode(dataset, True, True)
    except Exception as exc:  # leave it to pynetdicom, as before
        log.warning("cannot guard a C-STORE command (%s)", describe_exception(exc))
        return None


def _serve_with_storage(association: Any, msg: Any, context: Any) -> None:
    """What ``Association._serve_request`` does, with the storage service class."""
    from pynetdicom.service_class import StorageServiceClass

    try:
        association.dimse.cancel_req = {}
        association._is_paused = True
        StorageServiceClass(association).SCP(msg, context)
        association._is_paused = False
        association.dimse.cancel_req = {}
    except Exception as exc:
        log.error("C-STORE could not be served (%s): aborting", describe_exception(exc))
        association.abort()


def _answer_unrecognized(association: Any, msg: Any, context_id: int) -> None:
    """Answer a DIMSE request we do not provide with its response type and 0x0211."""
    from cxr_node.dicom import status
    from cxr_node.dicom.handlers import for_log

    calling = getattr(association.requestor, "ae_title", "")
    log.warning(
        "%s from %s: not a service of this node: Unrecognized Operation",
        for_log(getattr(msg, "msg_type", type(msg).__name__)),
        for_log(str(calling).strip()),
    )
    try:
        response = type(msg)()
        response.MessageIDBeingRespondedTo = msg.MessageID
        response.Status = status.UNRECOGNIZED_OPERATION
        association.dimse.send_msg(response, context_id)
    except Exception as exc:
        log.error("cannot answer %s (%s): aborting", type(msg).__name__, describe_exception(exc))
        association.abort()


# --- pynetdicom 3.0: limits at the front door ------------------------------------------------
#
# pynetdicom 3.0 reads each PDU whole into memory, as long as its header says, with a blocking
# recv and no deadline (``DULServiceProvider._read_pdu_data``), and the acceptor's thread waits
# the whole ACSE timeout for an A-ASSOCIATE-RQ even after the peer has closed the connection
# (``Association.run_reactor`` -> ``receive_pdu(wait=True, timeout=acse_timeout)``), while its
# thread counts against ``maximum_associations``. So: a bare TCP connect-and-close held a slot
# for the ACSE timeout; a PDU header and then a byte every 20 s held one for ever (the ARTIM
# timer is only checked between PDUs); a P-DATA-TF declaring 256 MB was read whole although
# ``max_pdu`` is 256 KB; a 64 MB A-ASSOCIATE-RQ was read and decoded before the calling AE was
# checked. No public hook reaches these. The guards below (pynetdicom 3.0.x only):
#
# 1. ``_read_pdu_data``: a PDU is read only if its declared length is within its limit (P-DATA-TF:
#    our Maximum Length Received, PS3.8 D.1; any other: ``max_association_request_bytes``),
#    else it is treated as an invalid PDU (Evt19: A-ABORT, PS3.8 9.2.3); the A-ASSOCIATE-RQ must
#    arrive whole before the ARTIM timer runs out (PS3.8 9.1.5; the SCP sets ARTIM with its
#    ACSE timeout, ``association_request_timeout_seconds``); later PDUs must keep coming (each
#    read waits at most the network timeout); in Sta13 (association over, awaiting close) what
#    arrives is discarded, not parsed (PS3.8 9.2.3 AA-6, AA-7).
# 2. ``receive_pdu`` for an acceptor still waiting for its A-ASSOCIATE-RQ: waits in short slices
#    and gives up as soon as the connection is gone; at most ``max_pending`` connections wait
#    at once (newer ones are closed at once). Such connections take no association slot:
#    :class:`cxr_node.dicom.scp.ListeningAE` counts only associations whose request arrived.
# 3. Chunked C-STORE receive: a watcher (:class:`ChunkedReceiveWatch`) is told of each partial
#    file as it grows; when it says stop, the rest of the data set is discarded instead of
#    written (the handler then answers from the watcher's reason), and files of messages that
#    never completed are handed to it when the association ends.

_READ_SLICE_SECONDS = 0.05
_DRAIN_BYTES = 65536


class FrontDoorLimits:
    """What the guards enforce, per listening AE (set by :func:`install_front_door_limits`)."""

    def __init__(self, max_request_bytes: int, max_pending: int) -> None:
        self.max_request_bytes = max_request_bytes
        self.max_pending = max_pending
        self._pending = 0
        self._lock = threading.Lock()

    def enter_pending(self) -> bool:
        """Count one more connection waiting for its A-ASSOCIATE-RQ; False when full."""
        with self._lock:
            if self._pending >= self.max_pending:
                return False
            self._pending += 1
            return True

    def leave_pending(self) -> None:
        with self._lock:
            self._pending -= 1


class ChunkedReceiveWatch:
    """Told about C-STORE data sets as pynetdicom writes them to partial files (see above)."""

    def grew(self, association: Any, path: str, size: int) -> str | None:
        """The partial file at ``path`` now holds ``size`` bytes; a reason to stop keeping the
        rest of the data set, or None."""
        return None

    def abandoned(self, path: str) -> None:
        """The association ended before the data set at ``path`` was complete."""


_LIMITS: weakref.WeakKeyDictionary[Any, FrontDoorLimits] = weakref.WeakKeyDictionary()
_WATCHES: weakref.WeakKeyDictionary[Any, ChunkedReceiveWatch] = weakref.WeakKeyDictionary()
_PARTIAL: dict[int, dict[int, Any]] = {}
"""id(association) -> id(message) -> message, for C-STORE data sets not yet complete."""
_PARTIAL_LOCK = threading.Lock()


def install_front_door_limits(
    ae: Any,
    max_request_bytes: int,
    max_pending: int,
    watch: ChunkedReceiveWatch | None = None,
) -> bool:
    """Apply guards 1-3 to associations accepted by ``ae``; False (pynetdicom's own behaviour)
    on another pynetdicom than 3.0.x or when the internals they replace are missing."""
    if not pynetdicom_supported():
        return False
    _LIMITS[ae] = FrontDoorLimits(max_request_bytes, max_pending)
    if watch is not None:
        _WATCHES[ae] = watch
    from pynetdicom.dul import DULServiceProvider

    reader = DULServiceProvider.__dict__.get("_read_pdu_data")
    receiver = DULServiceProvider.__dict__.get("receive_pdu")
    if reader is None or receiver is None or not hasattr(DULServiceProvider, "_decode_pdu"):
        log.warning("pynetdicom internals changed: the front door limits are not in place")
        return False
    if getattr(reader, "_cxr_guard", False):
        return install_dimse_request_guards()
    _REPLACED["pynetdicom DULServiceProvider._read_pdu_data"] = reader
    _REPLACED["pynetdicom DULServiceProvider.receive_pdu"] = receiver

    @functools.wraps(receiver)
    def receive_pdu(self: Any, wait: bool = False, timeout: float | None = None) -> Any:
        association = self.assoc
        limits = _LIMITS.get(association.ae)
        if (
            limits is None
            or not wait
            or not association.is_acceptor
            or association.requestor.primitive is not None
        ):
            return receiver(self, wait, timeout)
        return _await_association_request(self, receiver, limits, timeout)

    _read_pdu_data_guarded._cxr_guard = True  # type: ignore[attr-defined]
    DULServiceProvider._read_pdu_data = _read_pdu_data_guarded  # type: ignore[method-assign]
    DULServiceProvider.receive_pdu = receive_pdu  # type: ignore[method-assign]
    return install_dimse_request_guards()


def _await_association_request(
    dul: Any, receiver: Callable[..., Any], limits: FrontDoorLimits, timeout: float | None
) -> Any:
    """Guard 2: the acceptor's wait for the A-ASSOCIATE-RQ. When it gives up, the ARTIM event
    (Evt18: close the transport, Sta1) lets pynetdicom's ``kill()`` end the threads at once."""
    if not limits.enter_pending():
        log.warning("too many connections waiting for an association request: one closed")
        dul.event_queue.put("Evt18")
        return None
    deadline = None if timeout is None else monotonic() + timeout
    try:
        while True:
            primitive = receiver(dul, True, _READ_SLICE_SECONDS)
            if primitive is not None:
                return primitive
            if not dul.is_alive() or _connection_gone(dul):
                return None  # free the thread at once
            if deadline is not None and monotonic() >= deadline:
                dul.event_queue.put("Evt18")
                return None
    finally:
        limits.leave_pending()


def _connection_gone(dul: Any) -> bool:
    """The DUL is idle again (Sta1) and its socket closed: the peer went before associating."""
    if dul.state_machine.current_state != "Sta1":
        return False
    raw = getattr(dul.socket, "socket", None)
    try:
        return raw is None or raw.fileno() == -1
    except (OSError, ValueError):
        return True


def _read_pdu_data_guarded(self: Any) -> None:
    """Guard 1: ``DULServiceProvider._read_pdu_data`` with limits and deadlines."""
    from cxr_node.dicom.handlers import for_log

    association = self.assoc
    limits = _LIMITS.get(association.ae)
    if limits is None:  # an AE without limits (a client, or installed on another version)
        return _REPLACED["pynetdicom DULServiceProvider._read_pdu_data"](self)
    sock = self.socket
    state = self.state_machine.current_state
    if state == "Sta13":  # nothing more to act on: discard until the peer closes
        if not _read_some(sock):
            self.event_queue.put("Evt17")
        return
    if state in ("Sta1", "Sta2"):  # the whole A-ASSOCIATE-RQ must come before ARTIM runs out
        # (Sta1: data may be read before the connection event itself is processed)
        deadline: float | None = monotonic() + max(self.artim_timer.remaining, 0.0)
        per_read = None
    else:  # each PDU within the network timeout, and no read waiting longer
        per_read = association.network_timeout
        deadline = None if per_read is None else monotonic() + per_read
    header = _read_exactly(sock, 6, deadline, per_read)
    if header is None or len(header) < 6:
        self.event_queue.put("Evt17")  # closed, or too slow: the transport is dropped
        return
    pdu_type, _, pdu_length = struct.unpack(">BBL", header)
    if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
        log.warning("unknown PDU type 0x%02X from %s: aborted", pdu_type, _peer(association))
        self.event_queue.put("Evt19")
        return
    limit = None
    if pdu_type == 0x04:
        local = association.acceptor if association.is_acceptor else association.requestor
        limit = local.maximum_length or None  # 0: no limit (PS3.8 D.1)
    else:
        limit = limits.max_request_bytes
    if limit is not None and pdu_length > limit:
        log.warning(
            "PDU of type 0x%02X declaring %d bytes (limit %d) from %s: aborted",
            pdu_type,
            pdu_length,
            limit,
            for_log(_peer(association)),
        )
        self.event_queue.put("Evt19")
        return
    body = _read_exactly(sock, pdu_length, deadline, per_read)
    if body is None or len(body) != pdu_length:
        log.warning(
            "PDU from %s incomplete (%s): connection dropped",
            for_log(_peer(association)),
            "too slow" if body is None else "closed",
        )
        self.event_queue.put("Evt17")
        return
    try:
        pdu, event = self._decode_pdu(header + body)
        if pdu_type == 0x01:
            pdu.to_primitive()  # what AE-6 does: its errors (an even context ID) kill the DUL
    except Exception as exc:
        log.warning("undecodable PDU from %s (%s)", for_log(_peer(association)), type(exc).__name__)
        self.event_queue.put("Evt19")
        return
    self.event_queue.put(event)
    self._recv_pdu.put(pdu)


def _peer(association: Any) -> str:
    try:
        return str(association.requestor.address or "")
    except Exception:
        return ""


def _read_some(sock: Any) -> bool:
    """Read and discard what is there; False when the connection is closed."""
    raw = getattr(sock, "socket", None)
    if raw is None:
        return False
    try:
        return bool(raw.recv(_DRAIN_BYTES))
    except (OSError, ValueError):
        return False


def _read_exactly(
    sock: Any, count: int, deadline: float | None, per_read: float | None
) -> bytearray | None:
    """``count`` bytes, or fewer when the peer closes; None when the deadline passes or a read
    waits longer than ``per_read``. The socket's own timeout is restored afterwards."""
    raw = getattr(sock, "socket", None)
    if raw is None:
        return bytearray()
    data = bytearray()
    previous = raw.gettimeout()
    try:
        while len(data) < count:
            wait = per_read
            if deadline is not None:
                left = deadline - monotonic()
                if left <= 0:
                    return None
                wait = left if wait is None else min(wait, left)
            raw.settimeout(wait)
            try:
                chunk = raw.recv(min(count - len(data), _DRAIN_BYTES))
            except TimeoutError:
                return None
            except (OSError, ValueError):
                return data
            if not chunk:
                return data
            data += chunk
        return data
    finally:
        with contextlib.suppress(OSError, ValueError):
            raw.settimeout(previous)


class _DiscardedDataSet:
    """Stands in for a chunked receive's partial file once its watcher said stop: the rest of
    the data set is read from the network and dropped (pynetdicom writes, flushes, closes it
    and unlinks it by ``name``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.file = self

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


def _watch_chunked_receive(message: Any, association: Any, complete: bool) -> None:
    """Guard 3, after pynetdicom decoded a P-DATA into ``message``."""
    partial = getattr(message, "_data_set_file", None)
    if partial is None or association is None:
        return
    key = id(association)
    with _PARTIAL_LOCK:
        messages = _PARTIAL.setdefault(key, {})
        if complete:
            messages.pop(id(message), None)
            if not messages:
                del _PARTIAL[key]
        else:
            messages[id(message)] = message
    watch = _WATCHES.get(association.ae)
    if watch is None or isinstance(partial, _DiscardedDataSet):
        return
    path = str(partial.name)
    reason = watch.grew(association, path, partial.tell())
    if reason is not None:
        partial.close()
        with open(path, "r+b") as stream:  # keep the File Meta, drop what came of the data set
            stream.truncate(_file_meta_end(path))
        message._data_set_file = _DiscardedDataSet(path)


def _file_meta_end(path: str) -> int:
    """Where the data set starts in a Part 10 file pynetdicom wrote (PS3.10 7.1)."""
    with open(path, "rb") as stream:
        stream.seek(128 + 4 + 8)
        group_length = int.from_bytes(stream.read(4), "little")
    return 128 + 4 + 12 + group_length


def discard_partial_receives(event: Any) -> None:
    """``evt.EVT_ABORTED`` / ``evt.EVT_CONN_CLOSE`` / ``evt.EVT_RELEASED``: close and hand to
    the watcher the partial files of C-STORE data sets the association never completed."""
    association = event.assoc
    with _PARTIAL_LOCK:
        messages = _PARTIAL.pop(id(association), {})
    watch = _WATCHES.get(association.ae)
    for message in messages.values():
        partial = getattr(message, "_data_set_file", None)
        if partial is None:
            continue
        with contextlib.suppress(OSError):
            partial.close()
        path = str(partial.name)
        if watch is not None:
            watch.abandoned(path)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
