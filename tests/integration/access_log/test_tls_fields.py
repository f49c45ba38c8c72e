"""Access log commands on TLS listeners, against Envoy 1.40: REQUESTED_SERVER_NAME (the SNI,
recorded where a tls_inspector reads it), the addresses, the route and cluster names, for
clients with and without SNI, on listeners with and without tls_inspector."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.integration.access_log.conftest import FILE
from tests.integration.tls.test_tls_downstream import (
    INSPECTOR,
    _addr,
    _client_ctx,
    _tls,
    make_pki,
    tls_exchange,
)
from tests.support.envoy import ProxyProcess

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
FMT = (
    "%REQUESTED_SERVER_NAME%|%REQ(:AUTHORITY)%|%ROUTE_NAME%|%RESPONSE_CODE%|%PROTOCOL%|"
    "%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%|%RESPONSE_CODE_DETAILS%|%UPSTREAM_CLUSTER%\n"
)


def _listener(name: str, port: int, pki: dict, log: Path, inspector: bool) -> dict:
    hcm = {
        "@type": HCM,
        "stat_prefix": name,
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "name": "tls-direct",
                            "match": {"prefix": "/"},
                            "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
                        }
                    ],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
        "access_log": [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": FILE,
                    "path": str(log),
                    "log_format": {"text_format_source": {"inline_string": FMT}},
                },
            }
        ],
    }
    out = {
        "name": name,
        "address": _addr(port),
        "filter_chains": [
            {
                "transport_socket": _tls(pki["plainhost"]),
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ],
            }
        ],
    }
    if inspector:
        out["listener_filters"] = [INSPECTOR]
    return out


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def _lines(path: Path, n: int) -> list[str]:
    deadline = time.monotonic() + 15
    while True:
        got = path.read_text().splitlines() if path.exists() else []
        if len(got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def test_tls_fields_like_envoy(tmp_path, pki):
    got = {}
    for kind in ("envoy", "sofamesh"):
        work = tmp_path / kind
        work.mkdir()
        ports = {"sni": free_port(), "plain": free_port()}
        logs = {k: work / f"{k}.log" for k in ports}
        boot = {
            "admin": {"address": _addr(free_port())},
            "static_resources": {
                "listeners": [
                    _listener("sni", ports["sni"], pki, logs["sni"], True),
                    _listener("plain", ports["plain"], pki, logs["plain"], False),
                ]
            },
        }
        p = (
            ProxyProcess.envoy(envoy_binary(), boot, work)
            if kind == "envoy"
            else ProxyProcess.sofamesh(sofamesh_command(), boot, work)
        )
        p.start()
        try:
            for listener in ("sni", "plain"):
                for sni in ("a.example.com", None):
                    req = b"GET /x HTTP/1.1\r\nhost: h.local\r\nconnection: close\r\n\r\n"
                    reply = tls_exchange(ports[listener], _client_ctx(pki), sni, req)
                    assert "200" in reply, reply
            # the readiness probes (TCP connects without TLS) log nothing: no request
            got[kind] = {k: _lines(v, 2) for k, v in logs.items()}
        finally:
            p.stop()
    assert got["sofamesh"] == got["envoy"]
    assert got["sofamesh"]["sni"][0] == (
        "a.example.com|h.local|tls-direct|200|HTTP/1.1|127.0.0.1|direct_response|-"
    )
    assert got["sofamesh"]["plain"][0].startswith("-|h.local|")
    assert not re.search(r"\d+\.\d+\.\d+\.\d+:\d+", "".join(got["sofamesh"]["sni"]))
