"""A tiny asyncio HTTP server on loopback for tests: answers every request with `status`
(changeable at any time), after `delay` seconds, with `body`; records the request lines.
`interim` sends a 1xx answer first; `tls` serves HTTPS."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field


@dataclass
class HttpStub:
    status: int = 200
    delay: float = 0.0
    body: bytes = b"ok"
    requests: list[str] = field(default_factory=list)
    port: int = 0
    interim: int | None = None
    tls: ssl.SSLContext | None = None
    _server: asyncio.Server | None = None

    async def start(self) -> HttpStub:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = (await reader.readline()).decode(errors="replace").strip()
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            self.requests.append(request_line)
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.interim is not None:
                writer.write(f"HTTP/1.1 {self.interim} Wait\r\nX-Note: interim\r\n\r\n".encode())
            head = (
                f"HTTP/1.1 {self.status} Stub\r\nContent-Length: {len(self.body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + self.body)
            await writer.drain()
        except (ConnectionError, ssl.SSLError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
