"""The admin listener: a small HTTP/1.1 server on asyncio (not a hot path).

Keep-alive, Content-Length request bodies, HEAD; one request at a time per connection.
Bad requests get 400 and the connection closes; nothing a client sends reaches the loop's
exception handler.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from typing import Any

from sofamesh.admin.handlers import AdminState, Response, dispatch

log = logging.getLogger("sofamesh.admin")

MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def admin_log_paths(bootstrap: Any) -> list[str]:
    """The admin access logs of a bootstrap (FileAccessLog entries, deprecated path)."""
    from sofamesh.config import protos

    paths = []
    adm = bootstrap.admin
    if adm.access_log_path:
        paths.append(adm.access_log_path)
    for al in adm.access_log:
        fl = protos.unpack_any(al.typed_config)
        path = str(getattr(fl, "path", "") or "")
        if path:
            paths.append(path)
    return paths


class AccessLog:
    """Envoy's default access log format, one line per admin request."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = list(paths)
        self.files = []
        for p in paths:
            try:
                self.files.append(open(p, "a", buffering=1))  # noqa: SIM115 - lives with the server
            except OSError as e:
                log.error("admin access log %s: %s", p, e)

    def write(
        self,
        method: str,
        target: str,
        version: str,
        status: int,
        rx: int,
        tx: int,
        started: float,
        headers: dict[str, str],
    ) -> None:
        if not self.files:
            return
        t = time.gmtime(started)
        ms = int((started % 1) * 1000)
        start = time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{ms:03d}Z"
        dur = int((time.time() - started) * 1000)

        def h(name: str) -> str:
            return headers.get(name) or "-"

        line = (
            f'[{start}] "{method} {target} {version}" {status} - {rx} {tx} {dur} - '
            f'"{h("x-forwarded-for")}" "{h("user-agent")}" "{h("x-request-id")}" '
            f'"{h("host")}" "-"\n'
        )
        for f in self.files:
            try:
                f.write(line)
            except OSError:  # a full disk must not stop admin
                pass

    def close(self) -> None:
        for f in self.files:
            f.close()
        self.files = []

    def reopen(self) -> None:
        """Envoy's /reopen_logs and SIGUSR1: after logrotate moved the files."""
        self.close()
        self.files = AccessLog(self.paths).files


class AdminServer:
    def __init__(self, state: AdminState) -> None:
        self.state = state
        self.server: asyncio.base_events.Server | None = None
        self.address: tuple[str, int] | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self.access_log = AccessLog(admin_log_paths(state.bootstrap))
        state.reopen_hooks.append(self.access_log.reopen)

    async def start(self, host: str, port: int, sock: Any = None) -> tuple[str, int]:
        """Listens on host:port, or on `sock` (the previous epoch's, after a hot restart)."""
        if sock is not None:
            self.server = await asyncio.start_server(self._client, sock=sock)
        else:
            self.server = await asyncio.start_server(self._client, host, port, reuse_address=True)
        sock = self.server.sockets[0]
        self.address = sock.getsockname()[:2]
        return self.address

    async def stop(self) -> None:
        """Stops listening and closes idle keep-alive connections, so that every handler
        ends by itself before the loop goes away (none is left to be cancelled)."""
        if self.server is not None:
            self.server.close()
        for w in list(self._clients):
            w.close()
        deadline = asyncio.get_running_loop().time() + 1.0
        while self._clients and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        if self.server is not None:
            try:
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
            except (TimeoutError, OSError):
                log.debug("admin listener did not close in time")
        self.access_log.close()

    def _count(self, name: str) -> None:
        c = self.state.admin_stats.counter(name)
        c.value += 1
        c.used = True

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._count("http.admin.downstream_cx_total")
        self._clients.add(writer)
        requests = _Requests(reader)
        try:
            while True:
                try:
                    head = await requests.head()
                except asyncio.IncompleteReadError:
                    return
                except asyncio.LimitOverrunError:
                    await self._send(writer, "GET", Response(431, "headers too large\n"), False)
                    await _linger(reader, writer)
                    return
                try:
                    if head is None:  # refused as its first bytes came, as Envoy's codec does
                        raise ValueError("malformed request line")
                    method, target, version, headers = _parse_head(head)
                except ValueError as e:
                    self._count("http.admin.downstream_rq_rx_reset")
                    await self._send(writer, "GET", Response(400, f"{e}\n"), False)
                    await _linger(reader, writer)
                    return
                length = headers.get("content-length", "0")
                if not length.isdigit() or int(length) > MAX_BODY:
                    await self._send(
                        writer,
                        method,
                        Response(413 if length.isdigit() else 400, "bad body\n"),
                        False,
                    )
                    return
                started = time.time()
                if int(length):
                    await requests.body(int(length))
                conn = headers.get("connection", "").lower()
                keep = (version == "HTTP/1.1" and conn != "close") or conn == "keep-alive"
                self._count("http.admin.downstream_rq_total")
                resp = await dispatch(self.state, method, target)
                self._count(f"http.admin.downstream_rq_{resp.status // 100}xx")
                await self._send(writer, method, resp, keep)
                self.access_log.write(
                    method,
                    target,
                    version,
                    resp.status,
                    int(length),
                    len(resp.data()),
                    started,
                    headers,
                )
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._clients.discard(writer)
            writer.close()

    @staticmethod
    async def _send(writer: Any, method: str, resp: Response, keep: bool) -> None:
        if writer.is_closing():
            # the client went while the answer was made: uvloop raises RuntimeError on a
            # write to a closed transport (found by tests/fuzz/proxy_campaign.py)
            return
        body = resp.data()
        lines = [
            f"HTTP/1.1 {resp.status} {REASONS.get(resp.status, 'Unknown')}",
            f"content-type: {resp.content_type}",
            "cache-control: no-cache, max-age=0",
            "x-content-type-options: nosniff",
            f"date: {email.utils.formatdate(usegmt=True)}",
            "server: sofamesh",
            f"content-length: {len(body)}",
        ]
        for k, v in resp.headers.items():
            lines.append(f"{k}: {v}")
        if not keep:
            lines.append("connection: close")
        writer.write(
            ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if method == "HEAD" else body)
        )
        await writer.drain()


async def _linger(reader: asyncio.StreamReader, writer: Any) -> None:
    """Lingering close: after an error reply, stop sending and discard what the client is
    still sending (bounded), so the close does not reset the connection before the client
    has read the reply."""
    try:
        if writer.is_closing():
            return
        if writer.can_write_eof():
            writer.write_eof()
        deadline = time.monotonic() + 1.0
        budget = 4 * 1024 * 1024
        while budget > 0 and time.monotonic() < deadline:
            chunk = await asyncio.wait_for(reader.read(65536), deadline - time.monotonic())
            if not chunk:
                break
            budget -= len(chunk)
    except (TimeoutError, ConnectionError, OSError):
        pass


_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_MAX_METHOD = 32


class _Requests:
    """The admin connection's bytes, taken a request head (and body) at a time."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.buf = bytearray()

    async def head(self) -> bytes | None:
        """A request head through its blank line; None as soon as what came cannot begin
        a request line (a method of token characters, then a space), so garbage (a TLS
        hello, a binary protocol) gets its 400 at once, not after MAX_HEAD bytes or never.
        IncompleteReadError at EOF; LimitOverrunError past MAX_HEAD."""
        buf = self.buf
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                if end + 4 > MAX_HEAD:
                    raise asyncio.LimitOverrunError("headers too large", end)
                head = bytes(buf[: end + 4])
                del buf[: end + 4]
                return head
            if len(buf) > MAX_HEAD:
                raise asyncio.LimitOverrunError("headers too large", len(buf))
            space = buf.find(b" ", 0, _MAX_METHOD + 1)
            method = buf[: space if space >= 0 else _MAX_METHOD + 1]
            if space == 0 or any(c not in _TOKEN for c in method):
                return None
            if space < 0 and len(buf) > _MAX_METHOD:
                return None
            chunk = await self.reader.read(65536)
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(buf), None)
            buf += chunk

    async def body(self, n: int) -> bytes:
        if len(self.buf) < n:
            self.buf += await self.reader.readexactly(n - len(self.buf))
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
        raise ValueError("bad request") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        raise ValueError("malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        k, sep, v = line.partition(":")
        if not sep or not k or k != k.strip():
            raise ValueError("malformed header")
        headers[k.lower()] = v.strip()
    return parts[0].upper(), parts[1], parts[2], headers
