"""One kept-alive HTTP/1.1 client connection to a span collector (Zipkin, the Datadog agent,
OTLP/HTTP): `HttpCollector.post(...)` -> the response status, or None when the cluster has
no host. A plain asyncio Protocol: the request written in one call, the response parsed as
its bytes arrive, one timer for the timeout.
PERF(benchmarks/instr_per_request.py --tracing 1): asyncio streams with wait_for cost ~200k
instructions a POST (a task and a timer per await, readline per header line)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("sofamesh.tracing")

MAX_RESPONSE = 1 << 20  # a collector's answer larger than this is refused (rates are small)


class _Exchange(asyncio.Protocol):
    """The connection: one request at a time; `waiter` gets (status, body, close)."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.closed = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        w = self.waiter
        if w is None or w.done():
            if len(self.buf) > MAX_RESPONSE:
                self.transport.close()
            return
        try:
            got = _parse(self.buf)
        except ValueError as e:
            self.transport.close()
            w.set_exception(e)
            return
        if got is not None:
            del self.buf[: got[3]]
            w.set_result(got[:3])

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        w = self.waiter
        if w is not None and not w.done():
            w.set_exception(EOFError("collector closed the connection"))

    async def exchange(self, data: bytes, timeout: float) -> tuple[int, bytes, bool]:
        loop = asyncio.get_running_loop()
        self.waiter = w = loop.create_future()
        self.buf.clear()
        timer = loop.call_later(timeout, _expire, w)
        self.transport.write(data)
        try:
            return await w
        finally:
            timer.cancel()
            self.waiter = None


def _expire(w: asyncio.Future) -> None:
    if not w.done():
        w.set_exception(TimeoutError("collector did not answer in time"))


def _parse(buf: bytearray) -> tuple[int, bytes, bool, int] | None:
    """(status, body, connection close, bytes used) of a whole response in buf; None: not
    all of it yet. ValueError: not an HTTP/1 response."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_RESPONSE:
            raise ValueError("collector response head too large")
        return None
    lines = bytes(buf[:end]).split(b"\r\n")
    parts = lines[0].split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP/1 response: {lines[0][:80]!r}")
    status = int(parts[1])
    length, chunked, close = 0, False, False
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        k, v = k.strip().lower(), v.strip().lower()
        if k == b"content-length":
            if not v.isdigit():
                raise ValueError(f"bad content-length {v[:40]!r}")
            length = int(v)
        elif k == b"transfer-encoding" and b"chunked" in v:
            chunked = True
        elif k == b"connection" and v == b"close":
            close = True
    pos = end + 4
    if not chunked:
        if length > MAX_RESPONSE:
            raise ValueError("collector response body too large")
        if len(buf) < pos + length:
            return None
        return status, bytes(buf[pos : pos + length]), close, pos + length
    body = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = buf[pos:eol].split(b";")[0].strip()
        try:
            n = int(size, 16)
        except ValueError:
            raise ValueError(f"bad chunk size {bytes(size[:20])!r}") from None
        if len(buf) < eol + 2 + n + 2:
            return None
        body += buf[eol + 2 : eol + 2 + n]
        pos = eol + 2 + n + 2
        if len(body) > MAX_RESPONSE:
            raise ValueError("collector response body too large")
        if n == 0:
            return status, bytes(body), close, pos


class HttpCollector:
    """One kept-alive HTTP/1.1 connection to a collector cluster's first healthy host,
    redialled once when the collector closed it."""

    def __init__(self, server: Any, cluster: str) -> None:
        self.server = server
        self.cluster = cluster
        self.conn: _Exchange | None = None
        self.body = b""  # the last response's body

    def host(self) -> Any:
        cl = self.server.clusters.get(self.cluster)
        if cl is None:
            return None
        hosts = [h for h in cl.hosts if h.healthy] or list(cl.hosts)
        return hosts[0] if hosts else None

    async def post(
        self,
        path: str,
        authority: str,
        content_type: str,
        body: bytes,
        extra: list[tuple[str, str]] = (),  # type: ignore[assignment]
        timeout: float = 5.0,
    ) -> int | None:
        host = self.host()
        if host is None:
            return None
        lines = [f"POST {path} HTTP/1.1", f"host: {authority}", f"content-type: {content_type}"]
        lines += [f"{k}: {v}" for k, v in extra]
        lines.append(f"content-length: {len(body)}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        for attempt in range(2):  # a kept-alive connection the collector closed: redial
            try:
                if self.conn is None or self.conn.closed:
                    loop = asyncio.get_running_loop()
                    _, self.conn = await asyncio.wait_for(
                        loop.create_connection(_Exchange, host.address, host.port), timeout
                    )
                assert self.conn is not None
                status, self.body, close = await self.conn.exchange(data, timeout)
                if close:
                    self.drop()
                return status
            except (TimeoutError, OSError, ConnectionError, EOFError) as e:
                self.drop()
                if attempt:
                    raise
                log.debug("collector %s connection lost (%s); redialing", self.cluster, e)
            except ValueError:
                self.drop()
                raise
        return None

    def drop(self) -> None:
        if self.conn is not None:
            if self.conn.transport is not None:
                self.conn.transport.close()
            self.conn.closed = True
        self.conn = None
