"""Envoy's file access log (`envoy.access_loggers.file`, default format), written in batches.

Each finished request formats one line into a list; the list goes to the file with one
os.write per batch (every `flush_interval` seconds or `max_batch` lines), never per request.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

log = logging.getLogger("sofamesh.access_log")

DEFAULT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
)


def _start_time(t: float) -> str:
    ms = int((t % 1) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{ms:03d}Z"


def _s(v: bytes | None) -> str:
    return "-" if not v else v.decode("latin-1")


class FileAccessLog:
    def __init__(self, path: str, loop: Any, flush_interval: float = 1.0, max_batch: int = 512):
        self.path = path
        self.loop = loop
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        self.lines: list[str] = []
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._timer: Any = None
        self.dropped = 0
        self.reopen_failed = 0

    def log(self, s: Any, duration_ms: float) -> None:
        """Called by the proxy when a request ends; `s` is the stream (DownstreamConn)."""
        wall = time.time() - duration_ms / 1000.0
        parse_error = s.resp_flags == "DPE"
        if parse_error:
            method = path = authority = xff = ua = rid = "-"
            proto = "HTTP/1.1"
        else:
            method = _s(s.method)
            path = _s(s.get_request_header(b"x-envoy-original-path") or s.path)
            proto = s.protocol
            authority = _s(s.authority)
            xff = _s(s.get_request_header(b"x-forwarded-for"))
            ua = _s(s.get_request_header(b"user-agent"))
            rid = _s(s.get_request_header(b"x-request-id") or s.request_id)
        st = s.service_ms
        line = (
            f'[{_start_time(wall)}] "{method} {path} {proto}" {s.resp_status} {s.resp_flags} '
            f"{s.bytes_rx} {s.bytes_tx} {int(duration_ms)} {st if st >= 0 else '-'} "
            f'"{xff}" "{ua}" "{rid}" "{authority}" "{s.upstream_host}"\n'
        )
        self.lines.append(line)
        if len(self.lines) >= self.max_batch:
            self.flush()
        elif self._timer is None:
            self._timer = self.loop.call_later(self.flush_interval, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        if not self.lines:
            return
        data = "".join(self.lines).encode("latin-1", "replace")
        self.lines = []
        try:
            while data:
                n = os.write(self.fd, data)
                data = data[n:]
        except OSError:
            self.dropped += 1

    def reopen(self) -> None:
        """POST /reopen_logs and SIGUSR1, as Envoy: what is buffered goes to the file open
        now, later lines to the path opened anew (logrotate moved the old file away). If the
        path cannot be opened, the old file is kept and the failure counted."""
        self.flush()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as e:
            self.reopen_failed += 1
            log.warning(
                "access log %s: cannot reopen (%s); still writing the old file", self.path, e
            )
            return
        os.close(self.fd)
        self.fd = fd

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
        os.close(self.fd)
