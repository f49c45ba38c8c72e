"""proxy/http_collector.HttpCollector against a real local HTTP/1.1 server: kept-alive
POSTs, content-length and chunked answers (the body kept for the Datadog agent's rates),
a collector that closes (redialled once), one that answers garbage or not at all."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from sofamesh.proxy.http_collector import HttpCollector


class Collector:
    """Answers each request with the next of `answers` (bytes, or None: say nothing)."""

    def __init__(self, answers: list[bytes | None]) -> None:
        self.answers = answers
        self.requests: list[bytes] = []
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self._serve(reader, writer)
        except (asyncio.CancelledError, asyncio.IncompleteReadError, ConnectionError):
            writer.close()  # the client went away, or the test ended

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            n = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            self.requests.append(head + await reader.readexactly(n))
            answer = self.answers.pop(0) if self.answers else None
            if answer is None:
                await asyncio.sleep(10)
                return
            writer.write(answer)
            await writer.drain()
            if b"connection: close" in answer.lower():
                writer.close()
                return


async def _run(answers: list[bytes | None], posts: int, timeout: float = 5.0):
    col = Collector(answers)
    srv = await asyncio.start_server(col.handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    host = SimpleNamespace(address="127.0.0.1", port=port, healthy=True)
    server = SimpleNamespace(clusters={"zipkin": SimpleNamespace(hosts=[host])})
    c = HttpCollector(server, "zipkin")
    out = []
    try:
        for i in range(posts):
            try:
                st = await c.post(
                    "/api/v2/spans", "zipkin", "application/json", b"[%d]" % i, timeout=timeout
                )
                out.append((st, c.body))
            except Exception as e:  # noqa: BLE001
                out.append(type(e).__name__)
    finally:
        c.drop()
        srv.close()
    return out, col


def test_kept_alive_posts_with_length_and_chunked_answers():
    ok = b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}"
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"
    )
    out, col = asyncio.run(_run([ok, chunked, ok], 3))
    assert out == [(202, b"{}"), (200, b"abcde"), (202, b"{}")]
    assert col.connections == 1
    assert col.requests[1].startswith(b"POST /api/v2/spans HTTP/1.1\r\nhost: zipkin\r\n")
    assert col.requests[1].endswith(b"content-length: 3\r\n\r\n[1]")


def test_a_collector_that_closes_is_redialled():
    close = b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    out, col = asyncio.run(_run([close, close, close], 3))
    assert out == [(202, b""), (202, b""), (202, b"")]
    assert col.connections == 3


def test_garbage_and_silence_fail_the_post_and_the_next_one_goes():
    ok = b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n"
    out, _ = asyncio.run(_run([b"SSH-2.0-nope\r\n\r\n", ok], 2))
    assert out == ["ValueError", (202, b"")]
    out, col = asyncio.run(_run([None, None, ok], 2, timeout=0.5))
    assert out == ["TimeoutError", (202, b"")]  # timed out, redialled once, timed out again
    assert col.connections == 3


def test_no_host_is_none():
    c = HttpCollector(SimpleNamespace(clusters={}), "zipkin")
    assert asyncio.run(c.post("/", "z", "application/json", b"[]")) is None


@pytest.mark.parametrize("bad", [b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n"])
def test_bad_framing_is_an_error(bad):
    out, _ = asyncio.run(_run([bad], 1))
    assert out == ["ValueError"]
