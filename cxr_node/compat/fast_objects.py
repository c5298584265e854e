"""pydicom and highdicom: the fast Part 10 writer's view of a data set, fast deep copies of
data sets and content items, and SR documents built without re-parsing their content.

Part of :mod:`cxr_node.compat`: each workaround says why it exists and how it falls back.
"""

from __future__ import annotations

import copy
import datetime
import decimal
import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID
from pydicom.valuerep import DA, DT, IS, TM, DSfloat, PersonName

from cxr_node.compat.versions import highdicom_supported, pydicom_supported

log = logging.getLogger(__name__)

D = TypeVar("D", bound=Dataset)


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
