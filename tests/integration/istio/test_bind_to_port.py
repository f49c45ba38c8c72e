"""`bind_to_port: false` (istiod's outbound listeners, reached through virtualOutbound's
use_original_dst): a static listener built and listed but given no socket, as Envoy 1.40
does; nothing listens on its port. From LDS it stays refused (listeners from xDS always
bind in sofamesh)."""

from __future__ import annotations

import json
import socket

import pytest

from tests.conftest import free_port
from tests.integration.admin.helpers import get, start_envoy, start_sofamesh, stop_with_workers

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def bootstrap(admin: int, bound: int, unbound: int, upstream: int) -> dict:
    def lst(name: str, port: int, bind: bool) -> dict:
        out = {
            "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [
                {
                    "filters": [
                        {
                            "name": "envoy.filters.network.tcp_proxy",
                            "typed_config": {
                                "@type": TCP_PROXY,
                                "stat_prefix": name,
                                "cluster": "c",
                            },
                        }
                    ]
                }
            ],
        }
        if not bind:
            out["bind_to_port"] = False
        return out

    addr = {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [lst("bound", bound, True), lst("10.96.0.1_443", unbound, False)],
            "clusters": [
                {
                    "name": "c",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "c",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": addr}}]}],
                    },
                }
            ],
        },
    }


@pytest.fixture
def echo():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    yield srv
    srv.close()


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except ConnectionRefusedError:
        return False


@pytest.mark.parametrize("workers", [1, 2])
def test_unbound_listener_as_envoy(tmp_path, echo, workers):
    seen = {}
    for who, start in (("envoy", start_envoy), ("sofamesh", start_sofamesh)):
        admin, bound, unbound = free_port(), free_port(), free_port()
        cfg = tmp_path / f"{who}.json"
        cfg.write_text(json.dumps(bootstrap(admin, bound, unbound, echo.getsockname()[1])))
        extra = ("--concurrency", str(workers)) if who == "sofamesh" else ()
        proc = start(cfg, admin, *extra)
        try:
            listing = get(admin, "/listeners")[1]
            lj = json.loads(get(admin, "/listeners?format=json")[1])
            seen[who] = (
                listing.replace(str(bound), "B").replace(str(unbound), "U"),
                [s["name"] for s in lj["listener_statuses"]],
                _connects(bound),
                _connects(unbound),
            )
        finally:
            stop_with_workers(proc)
    assert seen["sofamesh"] == seen["envoy"]
    assert seen["envoy"][2:] == (True, False)


def test_unbound_listener_from_lds_is_refused():
    from envoy.config.listener.v3 import listener_pb2
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2  # noqa: F401
    from google.protobuf import json_format

    from sofamesh.config.validate import validate_resource

    doc = bootstrap(1, 2, 3, 4)["static_resources"]["listeners"][1]
    problems = validate_resource(json_format.ParseDict(doc, listener_pb2.Listener()))
    assert [str(p) for p in problems] == [
        (
            "bind_to_port: Listener.bind_to_port false is not implemented by sofamesh: only "
            "true for listeners from LDS (a static listener may be left unbound)"
        )
    ]
