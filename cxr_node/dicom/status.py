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

UNRECOGNIZED_OPERATION = 0x0211
"""General: Failure, Unrecognized operation (PS3.7 C.4.2): a DIMSE service this node does not
provide (C-FIND, C-GET, C-MOVE, N-GET, N-SET, N-ACTION, N-CREATE, N-DELETE, N-EVENT-REPORT)."""

INVALID_REQUEST_UID = 0xC001
"""Storage: Error, Cannot understand (PS3.4 B.2.3, C000-CFFF): the Affected SOP Instance or
Class UID of the C-STORE *request* (the command, not the data set) is missing, empty, over 64
characters, has control characters or is not a UID (PS3.5 9.1). A Cannot understand code and
not 0xA900: the command itself is malformed, whatever the data set holds."""

NO_DATA_SET = 0xC002
"""Storage: Error, Cannot understand (PS3.4 B.2.3, C000-CFFF): the C-STORE request declares no
data set (Command Data Set Type 0x0101, PS3.7 E.1-1): nothing to store."""

PATIENT_CONFLICT = 0xC003
"""Storage: Error, Cannot understand (PS3.4 B.2.3, C000-CFFF): the instance's Study or SOP
Instance UID is already known here for another patient (Patient ID, Name or Birth Date differ).

Why this code: 0xA900 (Data Set does not match SOP Class) says the data set is wrong for its
SOP class, which it is not; 0xA7xx (Out of Resources) is retried by senders and would never
succeed; 0x0110 (Processing failure) says the node failed. PS3.4 B.2.3 leaves C000-CFFF, Cannot
understand, to the SCP for a data set it cannot accept as it is: a distinct code in that range
tells the sender's operators that this instance, as sent, is refused for good, and why (the
node's ledger records the conflict with reason PATIENT_CONFLICT)."""

RETRYABLE_PREFIXES = (0xA7,)
"""Status high bytes that mean a destination is temporarily unable to store: retry later."""


def is_retryable(status: int) -> bool:
    """True for statuses that are worth retrying (Out of Resources, 0xA7xx)."""
    return (status >> 8) in RETRYABLE_PREFIXES
