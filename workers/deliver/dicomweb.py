"""A study's result objects to an archive by STOW-RS (PS3.18 10.5), with dicomweb-client.

One POST per study of the objects the archive has not acknowledged yet (multipart/related,
application/dicom). The archive's own answer is read per instance (PS3.18 10.5.3: Referenced
SOP Sequence stored, Failed SOP Sequence with a Failure Reason): each stored one is recorded at
once; a failure of resources (0xA7xx), an answer that confirms nothing, HTTP 5xx, 401, 408 or
429, a redirect, a timeout or a refused connection retry the destination later; other HTTP 4xx
and other failure reasons refuse that study's delivery with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset, dcmread

from cxr_node.destination_kinds import DicomWebDestination
from cxr_node.dicom import status
from workers.deliver.policy import DeliveryRejected, DestinationUnreachable, http_failure

log = logging.getLogger(__name__)


def session_for(destination: DicomWebDestination) -> requests.Session:
    """An HTTP session with the destination's authentication and TLS settings."""
    session = requests.Session()
    if destination.username is not None and destination.password is not None:
        session.auth = (destination.username, destination.password.get_secret_value())
    if destination.token is not None:
        session.headers["Authorization"] = f"Bearer {destination.token.get_secret_value()}"
    session.verify = destination.ca_file or destination.verify_tls
    return session


def client_for(destination: DicomWebDestination, session: requests.Session) -> DICOMwebClient:
    """A client for the destination over ``session``, with no retries of its own (the delivery
    policy retries, with the ledger's backoff)."""
    client = DICOMwebClient(
        url=destination.url.rstrip("/"), session=session, timeout=destination.timeout_seconds
    )
    client.set_http_retry_params(retry=False)
    return client


def _answer(response: requests.Response) -> Dataset | None:
    """The store response's data set (PS3.18 10.5.3.1): empty for an empty body, None when a
    body is there but cannot be read as DICOM JSON (whatever parameters its type carries)."""
    if not response.content:
        return Dataset()
    content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type not in ("application/dicom+json", "application/json", ""):
        return None
    try:
        return Dataset.from_json(response.json())
    except (ValueError, TypeError, KeyError):
        return None


def _failures(answer: Dataset) -> list[tuple[str, int | None]]:
    return [
        (str(item.get("ReferencedSOPInstanceUID", "?")), item.get("FailureReason"))
        for item in answer.get("FailedSOPSequence", []) or []
    ]


def _settle(
    answer: Dataset, sent: Mapping[str, Path], on_stored: Callable[[str], None], http: int
) -> int:
    """Record what the archive says it stored; raise for what it did not."""
    referenced = answer.get("ReferencedSOPSequence")
    failures = _failures(answer)
    failed = {uid for uid, _ in failures}
    stored = (
        [str(item.get("ReferencedSOPInstanceUID", "")) for item in referenced]
        if referenced is not None
        else [uid for uid in sent if uid not in failed]  # a 200 without a body: all stored
    )
    stored = [uid for uid in stored if uid in sent and uid not in failed]
    for uid in stored:
        on_stored(uid)
    if not failures:
        missing = set(sent) - set(stored)
        if missing:
            raise DestinationUnreachable(f"HTTP {http}: {len(missing)} instance(s) not confirmed")
        return len(stored)
    reasons = ", ".join(
        f"{uid[-12:]}: 0x{code:04X}" if isinstance(code, int) else f"{uid[-12:]}: no reason"
        for uid, code in failures
    )
    detail = f"{len(failures)} instance(s) failed ({reasons}); {len(stored)} stored"
    if all(isinstance(code, int) and status.is_retryable(code) for _, code in failures):
        raise DestinationUnreachable(f"HTTP {http}: {detail}")
    raise DeliveryRejected(f"HTTP {http}: {detail}")


def _read(files: Mapping[Path, str]) -> list[Dataset]:
    try:
        return [dcmread(path) for path in files]
    except FileNotFoundError:
        raise DeliveryRejected("a result file is missing (purged from the spool?)") from None


_TRANSPORT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


def _post(destination: DicomWebDestination, datasets: list[Dataset]) -> requests.Response:
    """POST the objects; the archive's own answer, whatever dicomweb-client made of it (it
    reads a body only when the Content-Type is exactly DICOM JSON, and raises on 4xx/5xx)."""
    answers: list[requests.Response] = []
    with session_for(destination) as session:
        session.hooks["response"].append(lambda response, *_a, **_k: answers.append(response))
        session.headers["Accept"] = "application/dicom+json"
        session.max_redirects = 0  # a redirect is a configuration to fix, not to follow
        try:
            client_for(destination, session).store_instances(datasets)
        except (requests.HTTPError, requests.TooManyRedirects, KeyError, ValueError):
            pass  # the answer is read below, from what the archive sent
        except _TRANSPORT_ERRORS as exc:
            raise DestinationUnreachable(f"STOW-RS failed ({type(exc).__name__})") from None
        except (requests.RequestException, OSError) as exc:  # a URL, header or CA file to fix
            raise DestinationUnreachable(
                f"STOW-RS not possible with this configuration ({type(exc).__name__})"
            ) from None
    if not answers:
        raise DestinationUnreachable("STOW-RS: no answer")
    return answers[-1]


def send_study(
    destination: DicomWebDestination,
    files: Mapping[Path, str],
    on_stored: Callable[[str], None],
) -> int:
    """STOW-RS the files (path -> SOP Instance UID) in one request; ``on_stored`` gets each SOP
    Instance UID the archive acknowledged. Returns how many it stored."""
    if not files:
        return 0
    sent = {uid: path for path, uid in files.items()}
    response = _post(destination, _read(files))
    code = response.status_code
    if 300 <= code < 400:
        raise DestinationUnreachable(
            f"HTTP {code}: redirected; configure the archive's final STOW-RS URL"
        )
    answer = _answer(response)
    named = answer is not None and bool(
        answer.get("FailedSOPSequence") or answer.get("ReferencedSOPSequence")
    )
    if code >= 400 and not named:
        raise http_failure(code, response.reason or "")
    if answer is None:
        raise DestinationUnreachable(f"HTTP {code}: the store response could not be read")
    if code != 200 and not named:
        raise DestinationUnreachable(f"HTTP {code}: the store response names no instance")
    return _settle(answer, sent, on_stored, code)
