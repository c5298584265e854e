"""kombu: the embedded queue's file-system transport writing whole messages only, and the
Redis transport's reconnect guard.

Part of :mod:`cxr_node.compat`: each workaround says why it exists and how it falls back.
"""

from __future__ import annotations

import functools
import logging
import os
import uuid
from time import monotonic
from typing import Any, TypeVar

from pydicom.dataset import Dataset

from cxr_node.compat.versions import kombu_supported

log = logging.getLogger(__name__)

D = TypeVar("D", bound=Dataset)


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
