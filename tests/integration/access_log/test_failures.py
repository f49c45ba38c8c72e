"""Access log lines of requests that fail before or at the upstream, against Envoy 1.40: no
healthy host (UH), a refused connection (UF), no route (NR), a direct response, a proxied
answer. RESPONSE_CODE_DETAILS and UPSTREAM_TRANSPORT_FAILURE_REASON of a refused connection
are Envoy's detail strings that sofamesh does not know: it writes "-" there (asserted)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.integration.access_log.conftest import FILE
from tests.integration.http_filters.conftest import ScriptedUpstream
from tests.support.envoy import ProxyProcess

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
FMT = (
    "%REQ(:PATH)%|%RESPONSE_CODE%|%RESPONSE_FLAGS%|%RESPONSE_FLAGS_LONG%|%UPSTREAM_CLUSTER%|"
    "%UPSTREAM_HOST%|%UPSTREAM_REQUEST_ATTEMPT_COUNT%|%BYTES_SENT%|%RESPONSE_CODE_DETAILS%|"
    "%UPSTREAM_TRANSPORT_FAILURE_REASON%\n"
)


def _addr(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _cluster(name: str, ports: list[int]) -> dict:
    eps = [{"endpoint": {"address": _addr(p)}} for p in ports]
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": eps}]},
    }


def _bootstrap(port: int, admin: int, log: Path, up: int, dead: int) -> dict:
    routes = [
        {"match": {"prefix": "/nohost"}, "route": {"cluster": "empty"}},
        {"match": {"prefix": "/dead"}, "route": {"cluster": "dead"}},
        {"match": {"prefix": "/direct"}, "direct_response": {"status": 204}},
        {"match": {"prefix": "/api"}, "route": {"cluster": "backend"}},
    ]
    hcm = {
        "@type": HCM,
        "stat_prefix": "in",
        "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": routes}]},
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
                    "log_format": {"text_format": FMT},
                },
            }
        ],
    }
    return {
        "admin": {"address": _addr(admin)},
        "static_resources": {
            "listeners": [
                {
                    "name": "l",
                    "address": _addr(port),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                _cluster("backend", [up]),
                _cluster("empty", []),
                _cluster("dead", [dead]),
            ],
        },
    }


def _get(port: int, path: str) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(f"GET {path} HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n".encode())
        while c.recv(65536):
            pass


def _lines(path: Path, n: int) -> list[str]:
    deadline = time.monotonic() + 15
    while True:
        got = path.read_text().splitlines() if path.exists() else []
        if len(got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def test_failure_lines_like_envoy(tmp_path):
    up = ScriptedUpstream().start()
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    got = {}
    try:
        for kind in ("envoy", "sofamesh"):
            work = tmp_path / kind
            work.mkdir()
            port, log = free_port(), work / "access.log"
            boot = _bootstrap(port, free_port(), log, up.port, dead_port)
            p = (
                ProxyProcess.envoy(envoy_binary(), boot, work)
                if kind == "envoy"
                else ProxyProcess.sofamesh(sofamesh_command(), boot, work)
            )
            p.start()
            try:
                for path in ("/api/ok", "/nohost", "/dead", "/nowhere", "/direct"):
                    _get(port, path)
                got[kind] = _lines(log, 5)
            finally:
                p.stop()
    finally:
        up.stop()
        dead.close()

    def fields(line: str) -> list[str]:
        f = line.split("|")
        f[5] = f[5].rsplit(":", 1)[0] if f[5] != "-" else f[5]  # each side's upstream port
        return f

    e = [fields(x) for x in got["envoy"]]
    o = [fields(x) for x in got["sofamesh"]]
    assert len(e) == 5 and len(o) == 5, got
    for le, lo in zip(e, o, strict=True):
        if le[0] == "/dead":  # the refused connect's details: Envoy's strings, "-" here
            assert lo[8:] == ["-", "-"], lo
            assert le[9] != "-", le
            le, lo = le[:8], lo[:8]
        assert lo == le
    assert [x[:4] for x in o] == [
        ["/api/ok", "200", "-", "-"],
        ["/nohost", "503", "UH", "NoHealthyUpstream"],
        ["/dead", "503", "UF", "UpstreamConnectionFailure"],
        ["/nowhere", "404", "NR", "NoRouteFound"],
        ["/direct", "204", "-", "-"],
    ]
