"""Exceptions that decide policy: permanent rejections are never retried, transient ones are."""


class CxrNodeError(Exception):
    """Base class for every error cxr-node raises on purpose."""


class ConfigurationError(CxrNodeError):
    """The configuration is invalid; the message names the key and what is allowed."""


class RejectedInput(CxrNodeError):
    """Input that will never succeed however often it is retried (a permanent failure)."""

    def __init__(self, reason_code: str, reason: str) -> None:
        super().__init__(f"{reason_code}: {reason}")
        self.reason_code = reason_code
        self.reason = reason


class TransientError(CxrNodeError):
    """A failure that may succeed later (destination down, resource busy): retry with backoff."""


class ModelBundleError(CxrNodeError):
    """A model bundle is missing, malformed or does not match its declared sha256."""
