"""Fast deep copies of in-memory datasets (highdicom content items included).

``copy.deepcopy`` of a pydicom Dataset goes through the generic copy protocol element by
element and costs about 30 us per element; the encoders reuse subtrees that highdicom built
once (TID 1500 templates, equipment items) and copy them per document, so they need the same
result much faster. ``clone`` keeps every object's class (a highdicom ``ContentItem`` stays
one, a ``ContentSequence`` keeps its root / SR flags and its index by concept name), copies
mutable values (sequences, multi-values) and shares immutable ones (str, UID, numbers, bytes,
person names, dates) and highdicom ``CodedConcept`` items: code triples (PS3.3 8.8) that are
values, never changed once made, which highdicom itself puts as one instance into every item
that uses a concept. Anything else it does not know how to copy cheaply goes to
``copy.deepcopy``.
"""

from __future__ import annotations

import copy
import datetime
import decimal
from collections.abc import Mapping
from typing import Any, TypeVar

from highdicom.sr import CodedConcept, ContentSequence
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID
from pydicom.valuerep import DA, DT, IS, TM, DSfloat, PersonName

D = TypeVar("D", bound=Dataset)

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
_SEQUENCE_TYPES = frozenset({Sequence, ContentSequence})
_PER_DATASET_DICTS = ("_pixel_array_opts", "_pixel_id")
_NO_UIDS: Mapping[str, str] = {}


def clone(dataset: D, uids: Mapping[str, str] = _NO_UIDS) -> D:
    """A copy of ``dataset`` that shares nothing mutable with it but CodedConcept items (see
    above); UI values found in ``uids`` are replaced by their mapping.

    The replacement lets a template built once with placeholder UIDs become a document's
    subtree in the same pass (the value is set through pydicom, so it is converted and
    validated as if it had been set by the code that built the template).
    """
    if type(dataset) is CodedConcept:
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
        new_state["file_meta"] = clone(new_state["file_meta"])
    new_state["_dict"] = {tag: _clone_element(elem, uids) for tag, elem in state["_dict"].items()}
    result.__dict__.update(new_state)
    return result


def clone_element(element: DataElement, uids: Mapping[str, str] = _NO_UIDS) -> DataElement:
    """A deep copy of one data element (see ``clone``)."""
    result = _clone_element(element, uids)
    assert isinstance(result, DataElement)
    return result


def _clone_element(element: Any, uids: Mapping[str, str]) -> Any:
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
    elif kind in _SEQUENCE_TYPES or isinstance(value, Sequence):
        result._value = _clone_sequence(value, uids)
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


def _clone_sequence(sequence: Sequence, uids: Mapping[str, str]) -> Sequence:
    result = object.__new__(type(sequence))
    result.__dict__.update(sequence.__dict__)
    items = [clone(item, uids) for item in sequence._list]
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
