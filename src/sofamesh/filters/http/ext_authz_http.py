"""envoy.filters.http.ext_authz's `http_service`: the check as a plain HTTP/1.1 request to the
authorization server (server_uri.cluster), Envoy 1.40's way (ext_authz_http_impl.cc):

    request  <method> <path_prefix><path>  Host: <the request's authority>
             the request's headers that authorization_request.allowed_headers allows
             (authorization always), headers_to_add, content-length (the buffered body,
             with_request_body, else 0), x-envoy-internal: true,
             x-envoy-expected-rq-timeout-ms: <server_uri.timeout>
    answer   200  -> allowed: headers matching allowed_upstream_headers set on the upstream
                     request, allowed_upstream_headers_to_append added to it, the ones in
                     x-envoy-auth-headers-to-remove removed from it, and
                     allowed_client_headers_on_success added to the client's response
             5xx  -> the service's error (failure_mode_allow / status_on_error)
             else -> denied with that status, body and headers (allowed_client_headers;
                     all but the framing ones when unset)
    no answer in server_uri.timeout, refused, unreadable -> the service's error

The exchange is an asyncio task on the event loop, on keep-alive connections kept per host
(a few idle ones); the stream that asked waits, others go on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from sofamesh.filters.http.ext_authz import H_ADD, H_SET, Result, check_request
from sofamesh.proxy.grpc_unary import cluster_target

log = logging.getLogger("sofamesh.ext_authz")

_PSEUDO = (":method", ":path", ":authority", ":scheme")
# request headers sent whatever allowed_headers says (Envoy's defaults besides the pseudo ones)
_ALWAYS = frozenset(("authorization", "x-envoy-auth-partial-body"))
# answer headers that frame the answer, never passed on to the client
_FRAMING = frozenset((b"content-length", b"transfer-encoding", b"connection", b"keep-alive"))
# a denial's headers that reach the client whatever allowed_client_headers says
_CLIENT_ALWAYS = frozenset((b"www-authenticate", b"location"))
_REMOVE_HEADER = b"x-envoy-auth-headers-to-remove"
_MAX_HEAD = 64 * 1024
_MAX_BODY = 1 << 20
_MAX_IDLE = 8


def _matchers(lsm: Any, path: str) -> tuple | None:
    from sofamesh.proxy.routes import string_matcher

    if not len(lsm.patterns):
        return None
    return tuple(string_matcher(p, f"{path}.patterns[{i}]") for i, p in enumerate(lsm.patterns))


def _match(ms: tuple | None, name: bytes) -> bool:
    return ms is not None and any(m.test(name) for m in ms)


class _Answer:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class HttpClient:
    """Checks as HTTP requests to the server_uri cluster's hosts."""

    def __init__(self, hs: Any, f: Any, path: str) -> None:
        from sofamesh.proxy.errors import UnsupportedConfig

        self.f = f
        self.cluster = hs.server_uri.cluster
        if not hs.server_uri.HasField("timeout"):
            raise UnsupportedConfig(f"{path}.server_uri.timeout is required")
        self.timeout = hs.server_uri.timeout.ToNanoseconds() / 1e9
        self.prefix = hs.path_prefix
        if self.prefix and not self.prefix.startswith("/"):
            raise UnsupportedConfig(f"{path}.path_prefix: must start with /")
        rq, rs = hs.authorization_request, hs.authorization_response
        self.allowed = _matchers(
            rq.allowed_headers, f"{path}.authorization_request.allowed_headers"
        )
        self.to_add = tuple((h.key.lower(), h.value) for h in rq.headers_to_add)
        rp = f"{path}.authorization_response"
        self.upstream = _matchers(rs.allowed_upstream_headers, f"{rp}.allowed_upstream_headers")
        self.upstream_append = _matchers(
            rs.allowed_upstream_headers_to_append, f"{rp}.allowed_upstream_headers_to_append"
        )
        self.client = _matchers(rs.allowed_client_headers, f"{rp}.allowed_client_headers")
        self.client_ok = _matchers(
            rs.allowed_client_headers_on_success, f"{rp}.allowed_client_headers_on_success"
        )
        self._idle: dict[tuple[str, int], list[tuple[Any, Any]]] = {}
        self._tasks: set[asyncio.Task] = set()

    def _target(self) -> tuple[str, int] | None:
        return cluster_target(self.f.clusters, self.cluster)

    def _request(self, req: Any) -> bytes:
        http = req.attributes.request.http
        body = http.raw_body or http.body.encode()
        lines = [f"{http.method} {self.prefix}{http.path} HTTP/1.1", f"host: {http.host}"]
        added = {k for k, _ in self.to_add}
        for k, v in http.headers.items():
            if k in _PSEUDO or k == "content-length" or k in added:
                continue
            if k in _ALWAYS or _match(self.allowed, k.encode()):
                lines.append(f"{k}: {v}")
        for k, v in self.to_add:
            lines.append(f"{k}: {v}")
        lines.append(f"content-length: {len(body)}")
        lines.append("x-envoy-internal: true")
        lines.append(f"x-envoy-expected-rq-timeout-ms: {int(self.timeout * 1000)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    def check(self, s: Any, st: Any, per_route: Any, done: Any) -> None:
        f = self.f
        addr = self._target()
        if addr is None:
            f.loop.call_soon(done, None)
            return
        data = self._request(check_request(f, s, st, per_route))
        task = f.loop.create_task(self._exchange(addr, data, done))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _exchange(self, addr: tuple[str, int], data: bytes, done: Any) -> None:
        t0 = time.monotonic()
        result = None
        try:
            answer = await asyncio.wait_for(self._roundtrip(addr, data), self.timeout)
            result = self._result(answer, int((time.monotonic() - t0) * 1000))
        except asyncio.CancelledError:
            return
        except Exception as e:  # noqa: BLE001 (refused, slow, garbage: the service's error)
            log.debug("%s: authorization server %s:%s: %r", self.f.path, *addr, e)
        done(result)

    async def _roundtrip(self, addr: tuple[str, int], data: bytes) -> _Answer:
        idle = self._idle.get(addr)
        while idle:
            reader, writer = idle.pop()
            if not reader.at_eof() and not writer.is_closing():
                break
            writer.close()
        else:
            reader, writer = await asyncio.open_connection(addr[0], addr[1], limit=_MAX_HEAD)
        try:
            writer.write(data)
            answer, keep = await _read_answer(reader)
        except BaseException:
            writer.close()
            raise
        if keep and len(self._idle.setdefault(addr, [])) < _MAX_IDLE:
            self._idle[addr].append((reader, writer))
        else:
            writer.close()
        return answer

    def _result(self, a: _Answer, ms: int) -> Result | None:
        if a.status >= 500 or a.status < 200:
            return None
        if a.status == 200:
            r = Result(True)
            for k, v in a.headers:
                if k == _REMOVE_HEADER:
                    r.remove.extend(x.strip().lower() for x in v.split(b",") if x.strip())
                    continue
                if _match(self.upstream, k):
                    r.request_ops.append((H_SET, k, v))
                if _match(self.upstream_append, k):
                    r.request_ops.append((H_ADD, k, v))
                if _match(self.client_ok, k):
                    r.response_ops.append((H_ADD, k, v))
            return r
        r = Result(False)
        r.status = a.status
        r.body = a.body
        # the router's header on the answer, as Envoy's async client passes it on
        headers = a.headers + [(b"x-envoy-upstream-service-time", str(ms).encode())]
        r.headers = [
            (k, v)
            for k, v in headers
            if k not in _FRAMING
            and (self.client is None or k in _CLIENT_ALWAYS or _match(self.client, k))
        ]
        return r

    def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for conns in self._idle.values():
            for _, w in conns:
                w.close()
        self._idle.clear()


async def _read_answer(reader: Any) -> tuple[_Answer, bool]:
    """One HTTP/1.1 response: (answer, connection reusable)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ValueError(f"not an HTTP/1 status line: {lines[0][:40]!r}")
    status = int(parts[1])
    headers = []
    for line in lines[1:]:
        k, sep, v = line.partition(b":")
        if not sep:
            raise ValueError("malformed header line")
        headers.append((k.strip().lower(), v.strip()))
    hd = dict(headers)
    keep = hd.get(b"connection", b"").lower() != b"close" and parts[0] == b"HTTP/1.1"
    if hd.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = bytearray()
        while True:
            n = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if n == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            if len(body) + n > _MAX_BODY:
                raise ValueError("answer body too large")
            body += await reader.readexactly(n)
            await reader.readexactly(2)
        return _Answer(status, headers, bytes(body)), keep
    if b"content-length" in hd:
        n = int(hd[b"content-length"])
        if n > _MAX_BODY:
            raise ValueError("answer body too large")
        return _Answer(status, headers, await reader.readexactly(n) if n else b""), keep
    if status in (204, 304) or 100 <= status < 200:
        return _Answer(status, headers, b""), keep
    return _Answer(status, headers, await reader.read(_MAX_BODY)), False
