"""The embedded queue's transport: Kombu's file-system transport, with whole messages only.

Kombu's ``filesystem`` transport creates a message file under its final name and then writes
it, while a consumer in another process renames and reads any file with that name as soon as
it lists the folder: a consumer that comes between the two reads an empty or partial message,
fails to decode it and drops it. (The ledger still recovers such a study, but only after
``RESEND_QUEUED_AFTER_SECONDS``.) The transport here writes a message under a name no consumer
takes (``.part`` after the queue suffix) and renames it into place, which POSIX makes atomic.
That means overriding a private kombu method, so the class comes from
:func:`cxr_node.compat.embedded_filesystem_transport`, which gives kombu's own transport on a
kombu series it was not checked against.
"""

from __future__ import annotations

from kombu.transport import filesystem

from cxr_node import compat

__all__ = ["Channel", "Transport", "filesystem"]

Transport = compat.embedded_filesystem_transport()
"""Kombu transport class for ``broker_transport`` (see :mod:`cxr_node.queue`)."""

Channel = Transport.Channel
