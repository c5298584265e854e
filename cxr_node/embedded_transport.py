"""The embedded queue's transport: Kombu's file-system transport, with whole messages only.

Kombu's ``filesystem`` transport creates a message file under its final name and then writes
it, while a consumer in another process renames and reads any file with that name as soon as
it lists the folder: a consumer that comes between the two reads an empty or partial message,
fails to decode it and drops it. (The ledger still recovers such a study, but only after
``RESEND_QUEUED_AFTER_SECONDS``.) Here a message is written under a name no consumer takes
(``.part`` after the queue suffix) and renamed into place, which POSIX makes atomic.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    """File-system channel whose messages appear whole or not at all."""

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + ".part"  # not "<queue>.msg": consumers skip it
        # (the ignore: kombu's own filesystem Channel and its base name the argument differently)
        try:
            with open(partial, "wb") as stream:
                stream.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot add a message to {queue!r}") from exc


class Transport(filesystem.Transport):
    """Kombu transport class for ``broker_transport`` (see :mod:`cxr_node.queue`)."""

    Channel = Channel
