"""The hot path's HTTP/1.1 client against a scripted server: streamed bodies, keep-alive, broken connections,
and ``TritonUpstream.stream`` reading Triton's event stream over it (the real Triton: tests/gateway/e2e)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from serving.gateway.errors import (
    UpstreamFailedError,
    UpstreamOverloadedError,
    UpstreamRejectedError,
    UpstreamUnavailableError,
)
from serving.gateway.http1 import ConnectionLostError, Pool
from serving.gateway.upstream import Sampling, TritonUpstream
from serving.triton.launcher import free_ports

#: What a scripted server does with one request on one connection: write the answer (or not) and say
#: whether to keep the connection open for the next one.
Script = Callable[[asyncio.StreamWriter, dict[str, Any]], Awaitable[bool]]


@dataclass
class Server:
    """A server that reads each request whole, records it, and answers it with the next script."""

    scripts: list[Script]
    port: int = 0
    connections: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        (self.port,) = free_ports(1)
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                headers = dict(line.split(": ", 1) for line in lines[1:] if line)
                body = await reader.readexactly(int(headers["Content-Length"]))
                self.requests.append({"line": lines[0], "headers": headers, "body": body})
                keep = await self.scripts.pop(0)(writer, self.requests[-1])
                await writer.drain()
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed its side
        finally:
            writer.close()
            self.closed.set()


def chunked(*pieces: bytes, delay_s: float = 0.0, end: bool = True, status: str = "200 OK") -> Script:
    async def script(writer: asyncio.StreamWriter, request: dict[str, Any]) -> bool:
        head = f"HTTP/1.1 {status}\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        writer.write(head.encode())
        for piece in pieces:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            if delay_s:
                await asyncio.sleep(delay_s)
        if end:
            writer.write(b"0\r\n\r\n")
        return end

    return script


def whole(body: bytes, status: str = "200 OK", keep: bool = True) -> Script:
    async def script(writer: asyncio.StreamWriter, request: dict[str, Any]) -> bool:
        writer.write(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        return keep

    return script


async def hang_up(writer: asyncio.StreamWriter, request: dict[str, Any]) -> bool:
    return False


async def _read_all(pool: Pool, path: str = "/p") -> tuple[int, bytes]:
    connection = await pool.post(path, b"{}")
    try:
        return connection.status, await connection.read_all()
    finally:
        pool.release(connection, reuse=True)


def test_a_streamed_body_arrives_and_the_connection_serves_the_next_request() -> None:
    async def go() -> None:
        async with Server([chunked(b"data: 1\n\n", b"data: 2\n\n", delay_s=0.01), whole(b"second")]) as server:
            pool = Pool(server.url, limit=4, connect_timeout_s=5)
            connection = await pool.post("/v2/models/m/generate_stream", b'{"a": 1}')
            assert connection.status == 200
            received = []
            while (data := await connection.read()) is not None:
                received.append(data)
            pool.release(connection, reuse=True)
            assert b"".join(received) == b"data: 1\n\ndata: 2\n\n"
            assert len(received) == 2  # each piece as it came, not the whole body at the end
            assert await _read_all(pool) == (200, b"second")
            assert server.connections == 1
            first = server.requests[0]
            assert first["line"] == "POST /v2/models/m/generate_stream HTTP/1.1"
            assert first["headers"]["Host"] == f"127.0.0.1:{server.port}"
            assert first["headers"]["Content-Type"] == "application/json"
            assert first["body"] == b'{"a": 1}'
            pool.close()

    asyncio.run(go())


def test_the_url_path_is_a_prefix_and_a_bad_url_is_refused_by_name() -> None:
    async def go() -> None:
        async with Server([whole(b"ok")]) as server:
            pool = Pool(server.url + "/triton/", limit=1, connect_timeout_s=5)
            assert await _read_all(pool, "/v2/x") == (200, b"ok")
            assert server.requests[0]["line"] == "POST /triton/v2/x HTTP/1.1"
            pool.close()

    asyncio.run(go())
    with pytest.raises(ValueError, match="ftp://triton:8000"):
        Pool("ftp://triton:8000", limit=1, connect_timeout_s=1)


def test_a_keep_alive_connection_the_server_closed_while_idle_is_replaced() -> None:
    async def go() -> None:
        async with Server([whole(b"one", keep=False), whole(b"two")]) as server:
            pool = Pool(server.url, limit=2, connect_timeout_s=5)
            assert await _read_all(pool) == (200, b"one")
            await server.closed.wait()
            assert await _read_all(pool) == (200, b"two")
            assert server.connections == 2
            assert len(server.requests) == 2  # each request ran once
            pool.close()

    asyncio.run(go())


def test_a_connection_lost_before_or_during_the_answer_is_an_error_not_a_retry() -> None:
    async def go() -> None:
        async with Server([hang_up, chunked(b"data: 1\n\n", end=False)]) as server:
            pool = Pool(server.url, limit=2, connect_timeout_s=5)
            with pytest.raises(ConnectionLostError) as before:
                await pool.post("/p", b"{}")  # a fresh connection: the request may have run
            assert not before.value.answered
            connection = await pool.post("/p", b"{}")
            assert await connection.read() == b"data: 1\n\n"
            with pytest.raises(ConnectionLostError) as during:
                await connection.read()
            assert during.value.answered
            pool.release(connection, reuse=True)  # broken: closed, not reused
            assert len(server.requests) == 2
            pool.close()

    asyncio.run(go())


def test_release_without_reuse_closes_the_connection_and_a_limit_queues_requests() -> None:
    async def go() -> None:
        async with Server([chunked(b"data: 1\n\n", end=False), whole(b"after")]) as server:
            pool = Pool(server.url, limit=1, connect_timeout_s=5)
            first = await pool.post("/p", b"{}")
            waiting = asyncio.create_task(_read_all(pool))
            await asyncio.sleep(0.05)
            assert not waiting.done()  # the one slot is taken
            pool.release(first, reuse=False)  # what a client leaving midway does: Triton sees the close
            await asyncio.wait_for(server.closed.wait(), 5)
            assert await asyncio.wait_for(waiting, 5) == (200, b"after")
            assert server.connections == 2
            pool.close()

    asyncio.run(go())


def test_a_connection_released_before_its_last_bytes_is_reused_once_they_arrive() -> None:
    async def go() -> None:
        async with Server([chunked(b"data: last\n\n", delay_s=0.05), whole(b"next")]) as server:
            pool = Pool(server.url, limit=2, connect_timeout_s=5)
            connection = await pool.post("/p", b"{}")
            assert await connection.read() == b"data: last\n\n"
            assert not connection.complete
            pool.release(connection, reuse=True)
            await asyncio.sleep(0.2)
            assert await _read_all(pool) == (200, b"next")
            assert server.connections == 1
            pool.close()

    asyncio.run(go())


def test_a_request_is_sent_at_most_twice_however_many_idle_connections_break() -> None:
    async def go() -> None:
        async with Server([whole(b"a"), whole(b"b"), whole(b"c"), hang_up, hang_up, hang_up]) as server:
            pool = Pool(server.url, limit=3, connect_timeout_s=5)
            # Three connections, each back in the pool once its answer is read.
            held = [await pool.post("/p", b"{}") for _ in range(3)]
            for connection in held:
                await connection.read_all()
                pool.release(connection, reuse=True)
            with pytest.raises(ConnectionLostError):
                await pool.post("/p", b"{}")  # the server takes it and hangs up, on every connection
            assert len(server.requests) == 5  # three answered, then once on a reused connection and once on a new one
            assert server.connections == 4
            pool.close()

    asyncio.run(go())


def test_a_body_without_length_or_chunks_ends_with_the_connection() -> None:
    async def http10(writer: asyncio.StreamWriter, request: dict[str, Any]) -> bool:
        writer.write(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\noverloaded")
        return False

    async def go() -> None:
        async with Server([http10]) as server:
            pool = Pool(server.url, limit=1, connect_timeout_s=5)
            assert await _read_all(pool) == (503, b"overloaded")
            pool.close()

    asyncio.run(go())


def test_an_idle_connection_past_the_idle_limit_is_closed_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    import serving.gateway.http1 as http1

    async def go() -> None:
        async with Server([whole(b"one"), whole(b"two")]) as server:
            pool = Pool(server.url, limit=2, connect_timeout_s=5)
            assert await _read_all(pool) == (200, b"one")
            monkeypatch.setattr(http1, "IDLE_S", 0.0)
            await asyncio.sleep(0.01)
            assert await _read_all(pool) == (200, b"two")
            assert server.connections == 2
            await asyncio.wait_for(server.closed.wait(), 5)  # the stale one was closed
            pool.close()

    asyncio.run(go())


def test_closing_the_pool_closes_connections_still_carrying_an_answer() -> None:
    async def go() -> None:
        async with Server([chunked(b"data: 1\n\n", end=False)]) as server:
            pool = Pool(server.url, limit=1, connect_timeout_s=5)
            connection = await pool.post("/p", b"{}")
            assert await connection.read() == b"data: 1\n\n"
            pool.close()
            await asyncio.wait_for(server.closed.wait(), 5)
            with pytest.raises(ConnectionLostError):
                await connection.read()

    asyncio.run(go())


def test_nothing_listening_is_an_os_error() -> None:
    (port,) = free_ports(1)

    async def go() -> None:
        with pytest.raises(OSError):
            await Pool(f"http://127.0.0.1:{port}", limit=1, connect_timeout_s=5).post("/p", b"{}")

    asyncio.run(go())


# -- TritonUpstream.stream over the client -------------------------------------------------------------


def _event(text: str, finish: str = "", **extra: Any) -> bytes:
    outputs = {"text": text, "prompt_tokens": 5, "completion_tokens": 1, "model_version": "1", "finish_reason": finish}
    return b"data: " + json.dumps(outputs | extra).encode() + b"\n\n"


async def _stream(server: Server, upstream: TritonUpstream | None = None) -> list[str]:
    own = upstream is None
    upstream = upstream or TritonUpstream(server.url, 5)
    if own:
        await upstream.start()
    try:
        pieces = upstream.stream("m-v1", b"[]", Sampling(max_tokens=4))
        return [delta.text async for delta in pieces]
    finally:
        if own:
            await upstream.close()


def test_events_split_across_chunks_or_sharing_one_are_each_a_piece() -> None:
    one, two, three = _event("a"), _event(" b"), _event(" c", "stop")
    pieces = (one[:7], one[7:] + two[:3], two[3:] + three)

    async def go() -> None:
        async with Server([chunked(*pieces, delay_s=0.01)]) as server:
            assert await _stream(server) == ["a", " b", " c"]

    asyncio.run(go())


def test_a_last_event_without_its_newline_still_counts() -> None:
    async def go() -> None:
        async with Server([chunked(_event("a"), _event(" end", "length").rstrip())]) as server:
            assert await _stream(server) == ["a", " end"]

    asyncio.run(go())


def test_triton_errors_are_classified_before_and_after_the_first_event() -> None:
    refused = b'{"error":"\'max_tokens\' must be a whole number"}'

    async def go() -> None:
        async with Server([whole(refused, status="400 Bad Request")]) as server:
            with pytest.raises(UpstreamRejectedError, match="max_tokens"):
                await _stream(server)
        async with Server([chunked(_event("a"), b'data: {"error":"INTERNAL: out of memory"}\n\n')]) as server:
            with pytest.raises(UpstreamFailedError, match="out of memory"):
                await _stream(server)
        async with Server([chunked(b"data: {not json\n\n")]) as server:
            with pytest.raises(UpstreamFailedError, match="not JSON"):
                await _stream(server)
        async with Server([chunked(_event("a"), end=False)]) as server:
            with pytest.raises(UpstreamUnavailableError, match="broke off the answer"):
                await _stream(server)

    asyncio.run(go())


def test_a_refusal_read_to_its_end_leaves_the_connection_for_the_next_request() -> None:
    full = b'{"error":"Exceeds maximum queue size"}'

    async def go() -> None:
        async with Server([whole(full, status="503 Service Unavailable"), chunked(_event("a", "stop"))]) as server:
            upstream = TritonUpstream(server.url, 5)
            await upstream.start()
            try:
                with pytest.raises(UpstreamOverloadedError, match="queue size"):
                    await _stream(server, upstream)
                assert await _stream(server, upstream) == ["a"]
                assert server.connections == 1
            finally:
                await upstream.close()

    asyncio.run(go())


def test_a_stream_left_early_closes_its_connection_and_a_finished_one_is_reused() -> None:
    async def go() -> None:
        script = [chunked(_event("a"), _event(" b", "stop")), chunked(_event("x"), _event(" y"), delay_s=0.05)]
        async with Server(script) as server:
            upstream = TritonUpstream(server.url, 5)
            await upstream.start()
            assert await _stream(server, upstream) == ["a", " b"]
            pieces = upstream.stream("m-v1", b"[]", Sampling(max_tokens=4))
            assert (await anext(pieces)).text == "x"
            await pieces.aclose()  # the client left: Triton must see the connection close
            await asyncio.wait_for(server.closed.wait(), 5)
            assert server.connections == 1  # the finished stream's connection carried the second request
            await upstream.close()

    asyncio.run(go())
