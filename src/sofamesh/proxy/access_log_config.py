"""An HCM's or tcp_proxy's `access_log` list (envoy.config.accesslog.v3.AccessLog) built into
loggers: the file, stdout and stderr loggers with their `log_format` (proxy/log_format) and
any logger's `filter` (proxy/log_filter); the others (the gRPC access log service) come from
their factories in proxy/access_loggers and are put behind their filter.

`build_access_logs(...)` returns (what the connection manager calls: None, one logger or an
AccessLogSet; whether a format or filter needs the response kept, log_fields.ResponseCapture).
"""

from __future__ import annotations

from typing import Any

from sofamesh.proxy.access_log import AccessLogSet, FileAccessLog, FilteredLog
from sofamesh.proxy.errors import UnsupportedConfig
from sofamesh.proxy.log_filter import FilterContext, compile_filter
from sofamesh.proxy.log_format import compile_json, compile_substitution, compile_text

FILE_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
STDOUT_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
STDERR_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog"


def _file_format(fl: Any, path: str, tcp: bool) -> Any:
    """The FileAccessLog's access_log_format oneof compiled (None: Envoy's default line)."""
    kind = fl.WhichOneof("access_log_format")
    if kind is None:
        return None
    if kind == "log_format":
        return compile_substitution(fl.log_format, f"{path}.log_format", tcp)
    if kind == "format":  # deprecated, as Envoy still accepts it
        return compile_text(fl.format, f"{path}.format", tcp)
    return compile_json(getattr(fl, kind), f"{path}.{kind}", tcp)


def _stream_logger(url: str, any_config: Any, loop: Any, path: str, tcp: bool) -> Any:
    from envoy.extensions.access_loggers.stream.v3 import stream_pb2

    from sofamesh.proxy.stream_access_log import StreamAccessLog

    out = url == STDOUT_TYPE
    msg = stream_pb2.StdoutAccessLog() if out else stream_pb2.StderrAccessLog()
    any_config.Unpack(msg)
    lg = StreamAccessLog(1 if out else 2, loop)
    if msg.HasField("log_format"):
        fmt = compile_substitution(msg.log_format, f"{path}.log_format", tcp)
        if tcp:
            lg.tcp_fmt = fmt
        else:
            lg.fmt = fmt
    return lg


def build_access_logs(
    access_log: Any,
    server: Any,
    path: str,
    *,
    tcp: bool = False,
    health_check_names: tuple = (),
    loop: Any = None,
) -> tuple[Any, bool]:
    """access_log: the repeated AccessLog of an HCM (tcp False) or a TcpProxy (tcp True).
    Each logger built is also added to server._access_logs (reopened and closed with the
    server's others). loop: the event loop (default: the server's)."""
    from sofamesh.proxy.access_loggers import factory_for

    if loop is None:
        loop = server._loop
    loggers: list = []
    capture = False
    for i, al in enumerate(access_log):
        apath = f"{path}.access_log[{i}]"
        url = al.typed_config.type_url
        ctx = FilterContext(health_check_names, tcp)
        test = compile_filter(al.filter, f"{apath}.filter", ctx) if al.HasField("filter") else None
        capture = capture or ctx.capture
        if url == FILE_TYPE or url in (STDOUT_TYPE, STDERR_TYPE):
            if url == FILE_TYPE:
                from envoy.extensions.access_loggers.file.v3 import file_pb2

                fl = file_pb2.FileAccessLog()
                al.typed_config.Unpack(fl)
                fmt = _file_format(fl, f"{apath}.typed_config", tcp)
                try:
                    lg: Any = FileAccessLog(fl.path, loop)
                except OSError as e:
                    raise UnsupportedConfig(
                        f"{apath}.typed_config.path: cannot open {fl.path}: {e}"
                    ) from None
                if tcp:
                    lg.tcp_fmt = fmt
                else:
                    lg.fmt = fmt
            else:
                lg = _stream_logger(url, al.typed_config, loop, f"{apath}.typed_config", tcp)
                fmt = lg.tcp_fmt if tcp else lg.fmt
            if fmt is not None and fmt.capture:
                capture = True
            if tcp:
                lg.tcp_test = test
            else:
                lg.test = test
            server._access_logs.append(lg)
            loggers.append(lg)
            continue
        build = factory_for(url)
        if build is None or (not tcp and url.endswith(".TcpGrpcAccessLogConfig")):
            raise UnsupportedConfig(
                f"{apath}.typed_config: access logger {url.rsplit('/', 1)[-1]} is not "
                "implemented by sofamesh"
            )
        lg = build(al.typed_config, loop, server, apath)
        if tcp and not hasattr(lg, "log_tcp"):
            lg.close()
            raise UnsupportedConfig(
                f"{apath}.typed_config: {url.rsplit('/', 1)[-1]} is not implemented by sofamesh "
                "for tcp_proxy"
            )
        server._access_logs.append(lg)
        loggers.append(FilteredLog(lg, test, tcp) if test is not None else lg)
    if not loggers:
        return None, False
    if len(loggers) == 1:
        return loggers[0], capture
    return AccessLogSet(loggers), capture
