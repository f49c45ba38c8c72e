"""tcp_proxy's access_log: a tcp_grpc logger is built and kept by the server; a file logger
with a format and a filter is built too, a filter kind that needs HTTP headers is refused by
path, and an HCM refuses tcp_grpc."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import any_pb2, json_format

from sofamesh._core.stats import Store
from sofamesh.filters.network import tcp_proxy
from sofamesh.proxy.errors import UnsupportedConfig
from sofamesh.proxy.tcp_grpc_access_log import TcpGrpcAccessLog

TCP_GRPC = "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig"
FILE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def _build(logger: dict):
    from envoy.extensions.access_loggers.file.v3 import file_pb2  # noqa: F401
    from envoy.extensions.access_loggers.grpc.v3 import als_pb2  # noqa: F401

    cfg = json_format.ParseDict(
        {"stat_prefix": "t", "cluster": "app", "access_log": [logger]}, tcp_proxy_pb2.TcpProxy()
    )
    a = any_pb2.Any()
    a.Pack(cfg)
    loop = asyncio.new_event_loop()
    server = SimpleNamespace(
        clusters={"app": None, "als": None},
        bootstrap=SimpleNamespace(node=base_pb2.Node(id="n")),
        stats=Store(),
        _access_logs=[],
    )
    ctx = {"clusters": server.clusters, "stats": server.stats, "loop": loop, "server": server}
    try:
        return tcp_proxy.build(a, {**ctx, "path": "lst"}), server
    finally:
        loop.close()


def test_tcp_grpc_logger_is_built():
    common = {"log_name": "x", "grpc_service": {"envoy_grpc": {"cluster_name": "als"}}}
    built, server = _build(
        {"name": "l", "typed_config": {"@type": TCP_GRPC, "common_config": common}}
    )
    (logger,) = built.access_logs
    assert isinstance(logger, TcpGrpcAccessLog)
    assert server._access_logs == [logger]


def test_file_logger_on_tcp_proxy_formats_an_entry(tmp_path):
    path = tmp_path / "tcp.log"
    fmt = {"text_format_source": {"inline_string": "%UPSTREAM_CLUSTER% %BYTES_SENT% %REQ(X)%\n"}}
    built, _ = _build(
        {"name": "f", "typed_config": {"@type": FILE, "path": str(path), "log_format": fmt}}
    )
    (logger,) = built.access_logs
    entry = (1.0, 0.002, ("127.0.0.1", 5), ("127.0.0.1", 6), None, None, "app", 3, 4, "", "")
    logger.max_batch = 1  # written at once: no flush timer on the (closed) test loop
    logger.log_tcp(entry)
    logger.close()
    assert path.read_text() == "app 4 -\n"


def test_header_filter_on_tcp_proxy_is_refused_by_path(tmp_path):
    flt = {"header_filter": {"header": {"name": "x", "present_match": True}}}
    with pytest.raises(UnsupportedConfig, match=r"^lst\.typed_config\.access_log\[0\]\.filter"):
        _build(
            {
                "name": "f",
                "typed_config": {"@type": FILE, "path": str(tmp_path / "x.log")},
                "filter": flt,
            }
        )
