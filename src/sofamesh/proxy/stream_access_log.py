"""envoy.access_loggers.stdout and envoy.access_loggers.stderr: the file logger's lines
(sofamesh.proxy.access_log: Envoy's default line, or `log_format` compiled by
proxy/log_format) written to the process's standard output or standard error, batched as the
file log is (one write per batch). With --concurrency N every worker writes its own lines to
the same inherited descriptor, each batch in one write(2), as Envoy's workers do.
"""

from __future__ import annotations

from typing import Any

from sofamesh.proxy.access_log import FileAccessLog

STDOUT_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
STDERR_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog"


class StreamAccessLog(FileAccessLog):
    """The file log on an inherited descriptor (1 or 2): never opened, reopened or closed."""

    def __init__(self, fd: int, loop: Any) -> None:
        self.path = f"/dev/{'stdout' if fd == 1 else 'stderr'}"
        self.loop = loop
        self.flush_interval = 1.0
        self.max_batch = 512
        self.lines: list[str] = []
        self.fd = fd
        self._timer: Any = None
        self.dropped = 0
        self.reopen_failed = 0

    def reopen(self) -> None:
        self.flush()  # nothing to reopen: the descriptor is the process's own

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()


def build(any_config: Any, loop: Any, server: Any, path: str) -> StreamAccessLog:
    from sofamesh.proxy.access_log_config import _stream_logger

    return _stream_logger(any_config.type_url, any_config, loop, f"{path}.typed_config", False)


def _register() -> None:
    from sofamesh.config.support import register_extension
    from sofamesh.proxy import access_loggers

    for url in (STDOUT_TYPE, STDERR_TYPE):
        register_extension(url, "sofamesh.proxy.stream_access_log")
        access_loggers.register(url, build)


_register()
