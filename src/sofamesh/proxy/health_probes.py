"""Active health check probes (HTTP/1.1, TCP, gRPC): one check of one host, as Envoy runs it.

Work done per interval, so plain asyncio Python (STYLE.md). A probe's `check()` returns a
result code; the caller (`proxy.health_check.Session`) bounds it with the check's timeout
and calls `close()` when it times out. Connections are kept between checks when the
config's `reuse_connection` is true (Envoy's default), except after a failure that closes
them (Envoy closes on a reset, a timeout, `connection: close`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger("sofamesh.health_check")

# result codes (Envoy's HealthCheckFailureType, and success)
OK = 0
OK_DEGRADED = 1
FAIL_ACTIVE = 2  # a wrong answer: the host is unhealthy at once (threshold ignored)
FAIL_RETRIABLE = 3  # a retriable status: counts toward unhealthy_threshold
FAIL_NETWORK = 4  # connect failure, reset, EOF: counts toward unhealthy_threshold
FAIL_TIMEOUT = 5  # no answer within `timeout` (NETWORK_TIMEOUT)

MAX_HEAD = 64 * 1024
USER_AGENT = "Envoy/HC"


class Probe:
    """One host's probe; subclasses implement `check()`."""

    def __init__(self, cfg: Any, address: str, port: int) -> None:
        self.cfg = cfg
        self.address = address
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.exclude = False  # HTTP: x-envoy-immediate-health-check-fail on a failure
        self.status = 0  # HTTP: the last response's status (0: none)
        self.verified = False  # HTTP: service_name_matcher was checked (verify_cluster)

    async def _connect(self) -> None:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.address, self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
        self.reader = self.writer = None

    async def check(self) -> int:
        raise NotImplementedError


def _in_ranges(code: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(lo <= code < hi for lo, hi in ranges)


class HttpProbe(Probe):
    """`http_health_check` over HTTP/1.1: GET <path>, Host <host or cluster name>,
    user-agent Envoy/HC, then the configured header adds/removes."""

    async def check(self) -> int:
        cfg = self.cfg
        self.exclude = False
        self.status = 0
        self.verified = False
        try:
            await self._connect()
            assert self.writer is not None and self.reader is not None
            self.writer.write(cfg.http_request)
            status, headers, keep = await self._read_response(self.reader)
        except (
            OSError,
            EOFError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
        ) as e:
            log.debug("health check %s:%d: %s", self.address, self.port, e)
            self.close()
            return FAIL_NETWORK
        self.status = status
        if not keep or not cfg.reuse_connection:
            self.close()
        if not _in_ranges(status, cfg.expected_statuses):
            if "x-envoy-immediate-health-check-fail" in headers:
                self.exclude = True
            if _in_ranges(status, cfg.retriable_statuses):
                return FAIL_RETRIABLE
            return FAIL_ACTIVE
        if cfg.service_matcher is not None:  # Envoy: after the status, before degraded
            self.verified = True
            name = headers.get("x-envoy-upstream-healthchecked-cluster", "")
            if not cfg.service_matcher.test(name.encode("latin-1")):
                return FAIL_ACTIVE
        return OK_DEGRADED if "x-envoy-degraded" in headers else OK

    @staticmethod
    async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bool]:
        while True:  # 1xx heads are skipped
            head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > MAX_HEAD:
                raise ValueError("response head too large")
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
                raise ValueError(f"bad status line {lines[0]!r}")
            status = int(parts[1])
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if line:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
            if 100 <= status < 200 and status != 101:
                continue
            break
        conn = headers.get("connection", "").lower()
        keep = parts[0] == "HTTP/1.1" and "close" not in conn or "keep-alive" in conn
        if status in (204, 304):
            return status, headers, keep
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass  # trailers
                    break
                await reader.readexactly(size + 2)
        elif "content-length" in headers:
            await reader.readexactly(int(headers["content-length"]))
        else:
            await reader.read()  # until close
            keep = False
        return status, headers, keep


def _payload_match(want: tuple[bytes, ...], data: bytes) -> bool:
    """Envoy's PayloadMatcher: every segment found, in order."""
    pos = 0
    for seg in want:
        i = data.find(seg, pos)
        if i < 0:
            return False
        pos = i + len(seg)
    return True


class TcpProbe(Probe):
    """`tcp_health_check`: connect, write `send`, succeed once every `receive` segment has
    arrived in order; with no `receive`, a completed connect is a success (then closed)."""

    async def check(self) -> int:
        cfg = self.cfg
        try:
            await self._connect()
            assert self.writer is not None and self.reader is not None
            if not cfg.tcp_receive:
                self.close()
                return OK
            if cfg.tcp_send:
                self.writer.write(cfg.tcp_send)
            buf = b""
            while not _payload_match(cfg.tcp_receive, buf):
                chunk = await self.reader.read(65536)
                if not chunk:
                    raise EOFError("closed before the expected payload")
                buf += chunk
        except (OSError, EOFError) as e:
            log.debug("health check %s:%d: %s", self.address, self.port, e)
            self.close()
            return FAIL_NETWORK
        if not cfg.reuse_connection:
            self.close()
        return OK


def _encode_check_request(service: str) -> bytes:
    """grpc.health.v1.HealthCheckRequest{service}: field 1, length-delimited."""
    raw = service.encode()
    if not raw:
        return b""
    n, out = len(raw), bytearray(b"\x0a")
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out) + raw


def _decode_status(data: bytes) -> int:
    """grpc.health.v1.HealthCheckResponse.status (field 1, varint); 0 if absent."""
    i, status = 0, 0
    while i < len(data):
        key = data[i]
        i += 1
        wire = key & 7
        val = shift = 0
        if wire == 0:
            while True:
                b = data[i]
                i += 1
                val |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            if key >> 3 == 1:
                status = val
        elif wire == 2:
            ln = shift = 0
            while True:
                b = data[i]
                i += 1
                ln |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            i += ln
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return status


SERVING = 1
CHECK_METHOD = "/grpc.health.v1.Health/Check"


class GrpcProbe(Probe):
    """`grpc_health_check`: grpc.health.v1.Health/Check over HTTP/2 with grpcio's aio
    client (off the hot path). SERVING is a success; another status or a gRPC error is an
    active failure; an unreachable host (UNAVAILABLE) a network failure, after which the
    channel is closed and the next check connects anew (Envoy closes on a reset)."""

    def __init__(self, cfg: Any, address: str, port: int) -> None:
        super().__init__(cfg, address, port)
        self.channel: Any = None

    async def check(self) -> int:
        import grpc

        cfg = self.cfg
        if self.channel is None:
            target = (
                f"[{self.address}]:{self.port}"
                if ":" in self.address
                else (f"{self.address}:{self.port}")
            )
            self.channel = grpc.aio.insecure_channel(
                target,
                options=[
                    ("grpc.default_authority", cfg.grpc_authority),
                    ("grpc.enable_retries", 0),
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 1000),
                ],
            )
        call = self.channel.unary_unary(CHECK_METHOD)
        try:
            resp = await call(cfg.grpc_request, timeout=cfg.timeout + 1.0)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                log.debug("health check %s:%d: %s", self.address, self.port, e.details())
                self.close()
                return FAIL_NETWORK
            log.debug("health check %s:%d: gRPC %s", self.address, self.port, e.code())
            return FAIL_ACTIVE
        try:
            status = _decode_status(resp)
        except (ValueError, IndexError):
            return FAIL_ACTIVE
        if not cfg.reuse_connection:
            self.close()
        return OK if status == SERVING else FAIL_ACTIVE

    def close(self) -> None:
        ch, self.channel = self.channel, None
        if ch is not None:
            t = asyncio.get_running_loop().create_task(ch.close())
            _closing.add(t)
            t.add_done_callback(_closing.discard)


_closing: set[asyncio.Task] = set()  # channels being closed (a task needs a reference)


PROBES = {"http": HttpProbe, "tcp": TcpProbe, "grpc": GrpcProbe}
