"""Named DIMSE status codes (PS3.7 Annex C, PS3.4 Annex B.2.3): never bare hex in handlers."""

SUCCESS = 0x0000
"""Success."""

OUT_OF_RESOURCES = 0xA700
"""Storage: Refused, Out of Resources (PS3.4 B.2.3)."""

DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
"""Storage: Error, Data Set does not match SOP Class (PS3.4 B.2.3)."""

CANNOT_UNDERSTAND = 0xC000
"""Storage: Error, Cannot understand (PS3.4 B.2.3)."""

PROCESSING_FAILURE = 0x0110
"""General: Failure, Processing failure (PS3.7 C.4.1)."""

RETRYABLE_PREFIXES = (0xA7,)
"""Status high bytes that mean a destination is temporarily unable to store: retry later."""


def is_retryable(status: int) -> bool:
    """True for statuses that are worth retrying (Out of Resources, 0xA7xx)."""
    return (status >> 8) in RETRYABLE_PREFIXES
