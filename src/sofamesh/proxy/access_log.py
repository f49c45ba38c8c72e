"""Envoy's file access log (`envoy.access_loggers.file`), written in batches.

Each finished request (or tcp_proxy connection) that passes the logger's filter formats one
line into a list; the list goes to the file with one os.write per batch (every
`flush_interval` seconds or `max_batch` lines), never per request. Without `log_format` the
line is Envoy's default one, built by hand below (the cheapest path); with one, it is the
compiled format of sofamesh.proxy.log_format. AccessLogSet fans one stream out to several
loggers (an HCM with more than one `access_log`).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from sofamesh.proxy.log_format import DEFAULT_FORMAT

log = logging.getLogger("sofamesh.access_log")


def _start_time(t: float) -> str:
    ms = int((t % 1) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{ms:03d}Z"


def _s(v: bytes | None) -> str:
    return "-" if not v else v.decode("latin-1")


class FileAccessLog:
    # log_format compiled for HTTP streams / tcp_proxy entries (None: Envoy's default line),
    # and the filters' predicates (None: every request is logged)
    fmt: Any = None
    tcp_fmt: Any = None
    test: Any = None
    tcp_test: Any = None
    format_errors = 0  # lines lost because formatting one raised (counted per logger)

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
        fmt = self.fmt
        test = self.test
        if fmt is not None or test is not None:
            try:
                if test is not None and not test(s, duration_ms):
                    return
                if fmt is not None:
                    line = fmt.format(s, duration_ms, time.time_ns() - int(duration_ms * 1e6))
                    self._add(line)
                    return
            except Exception as e:  # noqa: BLE001  (the request is served; its line is lost)
                self._format_failed(e)
                return
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
        self._add(line)

    def log_tcp(self, entry: tuple) -> None:
        """A tcp_proxy connection closed (entry: rpc_tcp.TcpDownstream.log_entry())."""
        ms = entry[1] * 1000.0
        try:
            test = self.tcp_test
            if test is not None and not test(entry, ms):
                return
            fmt = self.tcp_fmt
            if fmt is None:
                from sofamesh.proxy.log_format import compile_text

                fmt = self.tcp_fmt = compile_text(DEFAULT_FORMAT, "access_log", tcp=True)
            line = fmt.format(entry, ms, int(entry[0] * 1e9))
        except Exception as e:  # noqa: BLE001  (the close goes on; the entry is counted lost)
            self._format_failed(e)
            return
        self._add(line)

    def _format_failed(self, e: Exception) -> None:
        """A line that could not be formatted: counted (format_errors), said once."""
        self.format_errors += 1
        if self.format_errors == 1:
            log.warning("access log %s: a line could not be formatted (%r)", self.path, e)

    def _add(self, line: str) -> None:
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


class AccessLogSet:
    """Several loggers on one connection manager: each gets every request (and applies its
    own filter); one logger failing does not keep the stream from the others."""

    def __init__(self, loggers: list) -> None:
        self.loggers = tuple(loggers)
        self.errors = 0

    def log(self, s: Any, duration_ms: float) -> None:
        for lg in self.loggers:
            try:
                lg.log(s, duration_ms)
            except Exception:  # noqa: BLE001  (a logger failing never stops the others)
                self.errors += 1

    def log_tcp(self, entry: tuple) -> None:
        for lg in self.loggers:
            try:
                lg.log_tcp(entry)
            except Exception:  # noqa: BLE001  (a logger failing never stops the others)
                self.errors += 1


class FilteredLog:
    """A logger of its own kind (the gRPC ALS) behind an access log `filter`."""

    def __init__(self, inner: Any, test: Any, tcp: bool) -> None:
        self.inner = inner
        self.test = test
        self.errors = 0  # filter evaluations that raised (the entry is not sent)
        if tcp:
            self.log_tcp = self._log_tcp
        else:
            self.log = self._log

    def _log(self, s: Any, duration_ms: float) -> None:
        if self.test(s, duration_ms):
            self.inner.log(s, duration_ms)

    def _log_tcp(self, entry: tuple) -> None:
        try:
            keep = self.test(entry, entry[1] * 1000.0)
        except Exception:  # noqa: BLE001  (the connection's close goes on)
            self.errors += 1
            return
        if keep:
            self.inner.log_tcp(entry)
