"""One policy for every kind of delivery: what a failure means.

- :class:`DestinationUnreachable`: the destination cannot take anything now (no connection, a
  timeout, a closed connection, out of resources, HTTP 5xx, 401, 408 or 429, a configuration
  to fix, no HL7 acknowledgement): the whole destination is retried with exponential backoff,
  and nothing is lost meanwhile;
- :class:`DestinationRefused`: it refuses us for good (a permanent association rejection):
  what is due to it fails with the reason;
- :class:`StudyDeferred`: this study is to be tried again later (an HL7 AE answer), the
  destination goes on with the others;
- :class:`DeliveryRejected`: it refuses this study's results for good (a DIMSE failure status,
  HTTP 4xx but 401, failed SOP instances, an HL7 AR answer): that delivery fails with the
  reason and is not retried; the destination stays usable for the next study.
"""

from __future__ import annotations

from cxr_node.errors import CxrNodeError, TransientError


class DestinationUnreachable(TransientError):
    """The destination cannot take anything now; try it again later."""


class DestinationRefused(CxrNodeError):
    """The destination refuses us for good (PS3.8 Table 9-21 result 1)."""


AssociationRefused = DestinationRefused
"""The DICOM name of a permanent refusal (kept for the C-STORE sender's callers)."""


class DeliveryRejected(CxrNodeError):
    """The destination refused one study's objects for good; retrying will not help."""


RETRYABLE_HTTP = frozenset({408, 425, 429})
"""4xx answers that mean "not now" (request timeout, too early, too many requests)."""


class StudyDeferred(TransientError):
    """This study, not the destination, should be tried again later (an HL7 AE answer about
    it): the destination goes on with the others."""


def http_failure(status: int, detail: str) -> CxrNodeError:
    """The exception an HTTP status stands for (RFC 9110 15.5, 15.6; PS3.18 10.5.3). A 401 backs
    off the destination (credentials to fix: the backlog goes once they are right); a 403, as
    other 4xx, refuses this study."""
    if status >= 500 or status in RETRYABLE_HTTP:
        return DestinationUnreachable(f"HTTP {status}: {detail}")
    if status == 401:
        return DestinationUnreachable(f"HTTP 401 (not authorised; check the credentials): {detail}")
    return DeliveryRejected(f"HTTP {status}: {detail}")
