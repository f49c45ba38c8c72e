"""Access logs reopen on POST /reopen_logs and on SIGUSR1, as Envoy's do: after logrotate
moves the file away, the next lines go to a new file at the configured path."""

from __future__ import annotations

import http.client
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, sofamesh_command
from tests.support.envoy import ProxyProcess

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def _bootstrap(port: int, log_path: Path) -> dict:
    return {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "in",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": HCM,
                                        "stat_prefix": "in",
                                        "access_log": [
                                            {
                                                "name": "envoy.access_loggers.file",
                                                "typed_config": {
                                                    "@type": FILE_LOG,
                                                    "path": str(log_path),
                                                },
                                            }
                                        ],
                                        "route_config": {
                                            "virtual_hosts": [
                                                {
                                                    "name": "all",
                                                    "domains": ["*"],
                                                    "routes": [
                                                        {
                                                            "match": {"prefix": "/"},
                                                            "direct_response": {"status": 200},
                                                        }
                                                    ],
                                                }
                                            ]
                                        },
                                        "http_filters": [
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {"@type": ROUTER},
                                            }
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ]
        },
    }


def _get(port: int, path: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path)
    assert conn.getresponse().status == 200
    conn.close()


def _wait_lines(path: Path, want: list[str], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        if all(w in text for w in want):
            return
        assert time.monotonic() < deadline, (path, text, want)
        time.sleep(0.05)


@pytest.mark.parametrize("concurrency", [1, 2])
@pytest.mark.parametrize("how", ["admin", "sigusr1"])
def test_reopen_after_logrotate(tmp_path, how, concurrency):
    port = free_port()
    log_path = tmp_path / "access.log"
    boot = _bootstrap(port, log_path)
    argv = [*sofamesh_command(), "proxy", "--concurrency", str(concurrency), "-l", "warning"]
    with ProxyProcess("sofamesh", argv, boot, tmp_path) as proxy:
        admin = boot["admin"]["address"]["socket_address"]["port_value"]
        _get(port, "/before")
        _wait_lines(log_path, ['"GET /before HTTP/1.1" 200'])
        rotated = tmp_path / "access.log.1"
        os.rename(log_path, rotated)
        if how == "admin":
            conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
            conn.request("POST", "/reopen_logs")
            assert conn.getresponse().status == 200
            conn.close()
        else:
            os.kill(proxy.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while not log_path.exists():  # the reopen creates the new file
            assert time.monotonic() < deadline, "access log not reopened"
            time.sleep(0.05)
        for _ in range(concurrency * 4):  # fresh connections reach every worker
            _get(port, "/after")
        _wait_lines(log_path, ['"GET /after HTTP/1.1" 200'])
        assert "/after" not in rotated.read_text()
        assert "/before" not in log_path.read_text()
