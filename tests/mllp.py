"""A RIS for tests: an MLLP listener built with python-hl7 (its asyncio server), in a thread.

It keeps every message it receives and answers each with an ACK whose code the test sets
(AA, AE, AR), or not at all (``None``). It can be stopped and started again on the same port,
as a RIS that goes down and comes back; while it is down (and before its first start) the port
stays bound, not listening, so connections are refused and no other process takes the port.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from typing import Any

import hl7
from hl7.mllp import start_hl7_server


class MllpListener:
    """python-hl7's MLLP server on 127.0.0.1, answering with ``self.answer``."""

    def __init__(
        self,
        port: int | None = None,
        answer: str | None = "AA",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._reserved: socket.socket | None = None
        self.port = self._reserve(port or 0)
        self.answer = answer
        self.tls = tls
        self.received: list[hl7.Message] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def _reserve(self, port: int) -> int:
        """Bind the port without listening: connections are refused, the port stays ours."""
        reserved = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reserved.bind(("127.0.0.1", port))
        self._reserved = reserved
        return int(reserved.getsockname()[1])

    def _release(self) -> None:
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None

    async def _handle(self, reader: Any, writer: Any) -> None:
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                self.received.append(message)
                if self.answer is None:
                    continue
                writer.writemessage(message.create_ack(self.answer))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def start(self) -> MllpListener:
        """Listen (again) on the port."""
        self._release()
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop

            async def serve() -> None:
                self._server = await start_hl7_server(
                    self._handle,
                    "127.0.0.1",
                    self.port,
                    encoding="utf-8",
                    ssl=self.tls,
                    reuse_address=True,
                )
                ready.set()

            loop.run_until_complete(serve())
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="mllp-listener", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the MLLP listener did not start")
        return self

    def stop(self, keep_port: bool = False) -> None:
        """Stop listening (a RIS that is down refuses connections); with ``keep_port`` the port
        stays reserved for a later :meth:`start`."""
        if self._loop is None or self._thread is None:
            if not keep_port:
                self._release()
            return
        loop, server = self._loop, self._server

        async def close() -> None:
            server.close()
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        self._loop = self._thread = None
        if keep_port:
            self._reserve(self.port)

    def messages_for(self, control_prefix: str = "") -> list[hl7.Message]:
        """Messages received whose control ID starts with ``control_prefix``."""
        return [m for m in self.received if str(m.segment("MSH")[10]).startswith(control_prefix)]
