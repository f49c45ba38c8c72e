"""The gRPC access log service logger beside a file logger on one connection manager, each
with its own filter, in Envoy 1.40 and sofamesh: the service gets only the entries its
filter lets through, the file gets its lines, the same for both proxies."""

from __future__ import annotations

import http.client
import time

import pytest

from tests.conftest import envoy_binary, sofamesh_command
from tests.integration.mixer.conftest import http_bootstrap
from tests.integration.mixer.test_tcp_grpc_access_log import RecordingAls
from tests.support.envoy import ProxyProcess
from tests.support.http_upstream import RecordingUpstream
from tests.support.servers import free_ports

ALS = "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"
FILE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
ERRORS = {
    "status_code_filter": {
        "comparison": {"op": "GE", "value": {"default_value": 400, "runtime_key": "k"}}
    }
}


@pytest.fixture
def upstream():
    with RecordingUpstream(["a"]) as u:
        yield u


def _run(kind: str, tmp_path, app: int, als: RecordingAls) -> tuple[list[str], list]:
    admin, listen = free_ports(2)
    log = tmp_path / f"{kind}.log"
    loggers = [
        {
            "name": "envoy.access_loggers.http_grpc",
            "typed_config": {
                "@type": ALS,
                "common_config": {
                    "log_name": "errors",
                    "transport_api_version": "V3",
                    "grpc_service": {"envoy_grpc": {"cluster_name": "mixer"}},
                    "buffer_flush_interval": "0.1s",
                },
            },
            "filter": ERRORS,
        },
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": FILE,
                "path": str(log),
                "log_format": {"text_format": "%RESPONSE_CODE% %REQ(:PATH)%\n"},
            },
            "filter": {"not_health_check_filter": {}},
        },
    ]
    b = http_bootstrap(
        node=kind, admin=admin, listen=listen, app=app, mixer=als.port, access_log=loggers
    )
    p = (
        ProxyProcess.envoy(envoy_binary(), b, tmp_path / kind)
        if kind == "envoy"
        else ProxyProcess.sofamesh(sofamesh_command(), b, tmp_path / kind)
    )
    p.start()
    try:
        for path, action in (("/ok", None), ("/missing", "status=404"), ("/ok2", None)):
            c = http.client.HTTPConnection("127.0.0.1", listen, timeout=5)
            headers = {"x-upstream-action": action} if action else {}
            c.request("GET", path, headers=headers)
            c.getresponse().read()
            c.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            lines = log.read_text().splitlines() if log.exists() else []
            entries = [e for m in list(als.messages) for e in m.http_logs.log_entry]
            if len(lines) >= 3 and entries:
                break
            time.sleep(0.1)
        time.sleep(0.5)  # nothing more arrives
        entries = [e for m in list(als.messages) for e in m.http_logs.log_entry]
        return log.read_text().splitlines(), entries
    finally:
        p.stop()


def test_grpc_and_file_loggers_each_with_its_filter(tmp_path, upstream):
    got = {}
    for kind in ("envoy", "sofamesh"):
        with RecordingAls() as als:
            lines, entries = _run(kind, tmp_path, upstream.ports["a"], als)
            got[kind] = (
                lines,
                [(e.request.path, e.response.response_code.value) for e in entries],
            )
    assert got["sofamesh"] == got["envoy"]
    assert got["sofamesh"] == (["200 /ok", "404 /missing", "200 /ok2"], [("/missing", 404)])
