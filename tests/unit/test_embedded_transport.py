"""The embedded queue's transport (cxr_node.embedded_transport): messages appear whole."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

from cxr_node import embedded_transport
from cxr_node.queue import EMBEDDED_TRANSPORT


def _connection(folder: Path) -> Connection:
    return Connection(
        "filesystem://localhost//",
        transport=EMBEDDED_TRANSPORT,
        transport_options={"data_folder_in": str(folder), "data_folder_out": str(folder)},
    )


def test_a_message_is_never_visible_under_its_final_name_before_it_is_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kombu's own transport opens the final name, then writes: a consumer can read it empty."""
    opened_for_writing: list[str] = []
    real_open = open

    def spying_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "w" in mode:
            opened_for_writing.append(os.path.basename(str(file)))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spying_open)
    with _connection(tmp_path) as connection:
        channel = connection.default_channel
        channel._put("analysis", {"body": "x" * 10_000})
    (name,) = os.listdir(tmp_path)
    assert name.endswith(".analysis.msg")
    assert opened_for_writing == [name + ".part"]


def test_a_consumer_polling_while_messages_are_written_gets_every_one(tmp_path: Path) -> None:
    count = 500
    received: list[Any] = []
    errors: list[BaseException] = []
    with _connection(tmp_path) as producer, _connection(tmp_path) as consumer:
        done = threading.Event()

        def consume() -> None:
            channel = consumer.default_channel
            while len(received) < count:
                try:
                    received.append(channel._get("analysis"))
                except embedded_transport.filesystem.Empty:
                    if done.is_set() and not any(tmp_path.glob("*.analysis.msg")):
                        return
                except Exception as exc:  # a partial message
                    errors.append(exc)

        reader = threading.Thread(target=consume)
        reader.start()
        channel = producer.default_channel
        for index in range(count):
            channel._put("analysis", {"index": index, "padding": "y" * 4096})
        done.set()
        reader.join(60)
    assert errors == []
    assert sorted(m["index"] for m in received) == list(range(count))
