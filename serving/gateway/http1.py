"""The hot path's HTTP/1.1 client: a POST to Triton and its streamed answer back, over keep-alive connections.

Every answer crosses this hop, so it is kept to what the hop needs: one request at a time per
connection, ``Content-Length`` request bodies, answers parsed by ``httptools`` (the C parser uvicorn
serves with), each read returning every body byte that has arrived. Measured against aiohttp as the
gateway's Triton client (docs/performance.md, "The gateway's upstream client"): the hop over a zero-work
model cost 0.58 ms at p50 through a minimal aiohttp proxy and 0.31 ms through this one. The control
calls (readiness, model configs) stay on aiohttp; they are not on the hot path.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from typing import cast
from urllib.parse import urlsplit

import httptools

#: An idle connection older than this is closed, not reused: a middlebox may have dropped it silently
#: (no FIN, no RST), and a request sent on it would wait its whole timeout. aiohttp's default too.
IDLE_S = 30.0


class ConnectionLostError(ConnectionError):
    """The connection broke (closed, reset, or an unparsable answer).

    ``answered`` says whether any byte of the answer had arrived: a keep-alive connection the server
    closed while idle breaks before it, and its request never ran.
    """

    def __init__(self, message: str, *, answered: bool) -> None:
        super().__init__(message)
        self.answered = answered


class Connection(asyncio.Protocol):
    """One keep-alive connection and the answer to the request it carries (``status`` once ``start`` returns)."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._body: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: ConnectionLostError | None = None
        self._idle: list[Connection] | None = None
        self._open: set[Connection] | None = None
        self._framed = False
        self.idle_since = 0.0
        self.status = 0
        self.answered = False
        self.headers_done = False
        self.complete = False
        self.keep_alive = True

    # -- asyncio.Protocol -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not its subclasses

    def data_received(self, data: bytes) -> None:
        self.answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"the answer is not HTTP/1.1: {exc}")
            self.close()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._open is not None:
            self._open.discard(self)
        if not self.complete and exc is None and self.headers_done and not self._framed:
            self.complete = True  # neither Content-Length nor chunked: the body ends with the connection
        if not self.complete:
            self._fail(f"the connection was closed: {exc!r}" if exc else "the server closed the connection")
        self._wake()

    # -- httptools callbacks ----------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True
        if self._idle is not None:  # released before its last bytes came: reusable now, if the server allows
            if self.keep_alive:
                self._rest_in(self._idle)
            else:
                self.close()
            self._idle = None

    # -- the client's side ------------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Idle, open and free of errors: fit for the next request."""
        return self._transport is not None and not self._transport.is_closing() and self._error is None

    def send(self, data: bytes) -> None:
        assert self._transport is not None
        self.status, self.answered, self.headers_done, self.complete, self._framed = 0, False, False, False, False
        self._body.clear()
        self._transport.write(data)

    async def start(self) -> None:
        """Wait for the answer's status line and headers."""
        while not self.headers_done:
            self._raise_if_lost()
            await self._wait()

    async def read(self) -> bytes | None:
        """Every body byte that has arrived since the last read (waiting for some); None at the end."""
        while True:
            if self._body:
                data = b"".join(self._body) if len(self._body) > 1 else self._body[0]
                self._body.clear()
                return data
            if self.complete:
                return None
            self._raise_if_lost()
            await self._wait()

    async def read_all(self) -> bytes:
        parts = []
        while (data := await self.read()) is not None:
            parts.append(data)
        return b"".join(parts)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _release_to(self, idle: list[Connection]) -> None:
        """Back to ``idle`` for the next request: now if the answer is complete, else when it completes."""
        if not self.keep_alive or not self.usable:
            self.close()
        elif self.complete:
            self._rest_in(idle)
        else:
            self._idle = idle

    def _rest_in(self, idle: list[Connection]) -> None:
        self.idle_since = time.monotonic()
        idle.append(self)

    def _raise_if_lost(self) -> None:
        if self._error is not None:
            raise self._error

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _fail(self, message: str) -> None:
        if self._error is None:
            self._error = ConnectionLostError(message, answered=self.answered)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class Pool:
    """Keep-alive connections to one server (``http://`` or ``https://``, with an optional path prefix)."""

    def __init__(self, url: str, *, limit: int, connect_timeout_s: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"an upstream URL is http://host[:port][/prefix] or https://..., got {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._prefix = parts.path.rstrip("/").encode()
        # An IPv6 address goes in brackets.
        host = self.host.encode("idna") if ":" not in self.host else b"[" + self.host.encode() + b"]"
        self._host_header = host + (b":%d" % parts.port if parts.port else b"")
        self._connect_timeout_s = connect_timeout_s
        self._idle: list[Connection] = []
        self._open: set[Connection] = set()
        self._limit = limit
        self._slots: asyncio.Semaphore | None = None

    async def post(self, path: str, body: bytes, content_type: bytes = b"application/json") -> Connection:
        """Send ``body`` to ``path`` and wait for the answer's headers; ``release`` it when done.

        A reused connection that breaks before any byte of its answer (the server closed it while it
        was idle) is replaced once, by a new connection: a request is sent at most twice.
        """
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._limit)
        await self._slots.acquire()
        request = b"".join((
            b"POST ", self._prefix, path.encode(), b" HTTP/1.1\r\nHost: ", self._host_header,
            b"\r\nContent-Type: ", content_type, b"\r\nContent-Length: ", str(len(body)).encode(), b"\r\n\r\n", body,
        ))  # fmt: skip
        try:
            fresh = False
            while True:
                connection, reused = await self._connection(fresh=fresh)
                connection.send(request)
                try:
                    await connection.start()
                    return connection
                except ConnectionLostError as exc:
                    connection.close()
                    if not reused or exc.answered:
                        raise
                    fresh = True
                except BaseException:
                    connection.close()
                    raise
        except BaseException:
            self._slots.release()
            raise

    def release(self, connection: Connection, *, reuse: bool) -> None:
        """Done with ``connection``'s answer: it serves a later request if ``reuse`` and the server allows."""
        if reuse:
            connection._release_to(self._idle)
        else:
            connection.close()
        assert self._slots is not None
        self._slots.release()

    def close(self) -> None:
        """Close every connection: idle, parked until its answer completes, or still carrying one."""
        for connection in list(self._open):
            connection.close()
        self._idle.clear()

    async def _connection(self, *, fresh: bool) -> tuple[Connection, bool]:
        """The newest idle connection fit for reuse (unless ``fresh``), else a new one; and whether it is reused."""
        stale = time.monotonic() - IDLE_S
        while self._idle and self._idle[0].idle_since < stale:
            self._idle.pop(0).close()
        while self._idle and not fresh:
            connection = self._idle.pop()
            if connection.usable:
                return connection, True
            connection.close()
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout_s):
            _, connection = await loop.create_connection(
                Connection, self.host, self.port, ssl=self._ssl, server_hostname=self.host if self._ssl else None
            )
        connection._open = self._open
        self._open.add(connection)
        return connection, False
