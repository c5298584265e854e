"""Fast deep copies of in-memory datasets (highdicom content items included).

``copy.deepcopy`` of a pydicom Dataset goes through the generic copy protocol element by
element and costs about 30 us per element; the encoders reuse subtrees that highdicom built
once (TID 1500 templates, equipment items) and copy them per document, so they need the same
result much faster. ``clone`` keeps every object's class (a highdicom ``ContentItem`` stays
one, a ``ContentSequence`` keeps its root / SR flags and its index by concept name), copies
mutable values (sequences, multi-values) and shares immutable ones (str, UID, numbers, bytes,
person names, dates) and highdicom ``CodedConcept`` items: code triples (PS3.3 8.8) that are
values, never changed once made, which highdicom itself puts as one instance into every item
that uses a concept.

The copy works on pydicom's and highdicom's internal state, so it lives with the other
workarounds in :mod:`cxr_node.compat`, which falls back to ``copy.deepcopy`` on library
versions it was not written for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from cxr_node import compat

D = TypeVar("D", bound=Dataset)

_NO_UIDS: Mapping[str, str] = {}


def clone(dataset: D, uids: Mapping[str, str] = _NO_UIDS) -> D:
    """A copy of ``dataset`` that shares nothing mutable with it but CodedConcept items (see
    above); UI values found in ``uids`` are replaced by their mapping.

    The replacement lets a template built once with placeholder UIDs become a document's
    subtree in the same pass (the value is set through pydicom, so it is converted and
    validated as if it had been set by the code that built the template).
    """
    return compat.clone(dataset, uids)


def clone_element(element: DataElement, uids: Mapping[str, str] = _NO_UIDS) -> DataElement:
    """A deep copy of one data element (see ``clone``)."""
    return compat.clone_element(element, uids)
