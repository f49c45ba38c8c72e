"""Several plaintext filter chains per listener, chosen as Envoy 1.40 chooses them, for the
FilterChainMatch fields Istio's virtualInbound/virtualOutbound use besides TLS ones
(destination_port, prefix_ranges, source_type, source_prefix_ranges, source_ports,
direct_source_prefix_ranges) and default_filter_chain. One bootstrap, Envoy and sofamesh:
each client (a chosen source port, or any) sees the same chain, or the same refusal, and
no_filter_chain_match counts the same. Everything stays on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.conftest import free_port
from tests.integration.admin.helpers import get, start_envoy, start_sofamesh, stop

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)


def _chain(name: str, match: dict | None) -> dict:
    hcm = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM,
            "stat_prefix": name,
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "v",
                        "domains": ["*"],
                        "routes": [
                            {
                                "match": {"prefix": "/"},
                                "direct_response": {
                                    "status": 200,
                                    "body": {"inline_string": name},
                                },
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
        },
    }
    chain: dict = {"name": name, "filters": [hcm]}
    if match is not None:
        chain["filter_chain_match"] = match
    return chain


def listeners(ports: dict[str, int], src_port: int) -> list[dict]:
    def lst(name: str, chains: list, default: dict | None = None) -> dict:
        out = {
            "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports[name]}},
            "filter_chains": chains,
        }
        if default is not None:
            out["default_filter_chain"] = default
        return out

    lo = [{"address_prefix": "127.0.0.1", "prefix_len": 32}]
    net8 = [{"address_prefix": "127.0.0.0", "prefix_len": 8}]
    other = [{"address_prefix": "10.0.0.0", "prefix_len": 8}]
    return [
        # destination port: a chain for another port loses to the port-less ones
        lst(
            "dport",
            [
                _chain("other-port", {"destination_port": ports["dport"] + 1}),
                _chain("dst-ip", {"prefix_ranges": lo}),
                _chain("dst-net", {"prefix_ranges": net8}),
            ],
            _chain("default", None),
        ),
        # this listener's port wins over no port
        lst(
            "dport_exact",
            [
                _chain("exact-port", {"destination_port": ports["dport_exact"]}),
                _chain("any-port", {"prefix_ranges": lo}),
            ],
        ),
        # source levels: type, then IP, then port
        lst(
            "source",
            [
                _chain("src-port", {"source_prefix_ranges": lo, "source_ports": [src_port]}),
                _chain("src-net", {"source_prefix_ranges": net8}),
                _chain("src-local", {"source_type": "SAME_IP_OR_LOOPBACK"}),
            ],
            _chain("default", None),
        ),
        lst(
            "source_ip",
            [
                _chain("src-port", {"source_prefix_ranges": lo, "source_ports": [src_port]}),
                _chain("src-ip", {"source_prefix_ranges": lo}),
                _chain("src-net", {"source_prefix_ranges": net8}),
            ],
        ),
        # nothing matches: the default chain, or none
        lst(
            "nomatch_default",
            [_chain("direct-other", {"direct_source_prefix_ranges": other})],
            _chain("default", None),
        ),
        lst("nomatch", [_chain("direct-other", {"direct_source_prefix_ranges": other})]),
        lst("direct", [_chain("direct-lo", {"direct_source_prefix_ranges": lo})]),
    ]


NAMES = ("dport", "dport_exact", "source", "source_ip", "nomatch_default", "nomatch", "direct")


def _ask(port: int, src_port: int | None) -> str:
    """The chain that answered, or how the connection ended."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(5)
    try:
        if src_port is not None:
            for _ in range(50):  # the last connection from that port may still be closing
                try:
                    s.bind(("127.0.0.1", src_port))
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                s.bind(("127.0.0.1", src_port))
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                # closed with the request unread: a reset or a FIN, by timing alone
                return "refused" if not data else "reset after data"
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    if not data:
        return "refused"
    return data.split(b"\r\n\r\n", 1)[1].decode()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fcm")
    out = {}
    for who, start in (("envoy", start_envoy), ("sofamesh", start_sofamesh)):
        admin = free_port()
        ports = {n: free_port() for n in NAMES}
        src_port = free_port()
        doc = {
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {"listeners": listeners(ports, src_port)},
        }
        cfg = tmp / f"{who}.json"
        cfg.write_text(json.dumps(doc))
        proc = start(cfg, admin, *(("--concurrency", "1") if who == "sofamesh" else ()))
        try:
            seen = {}
            for n in NAMES:
                seen[(n, "any source port")] = _ask(ports[n], None)
                seen[(n, "the chosen source port")] = _ask(ports[n], src_port)
            stats = get(admin, "/stats?filter=^listener\\.127.*no_filter_chain_match")[1]
        finally:
            stop(proc)
        for n in NAMES:
            stats = stats.replace(f"127.0.0.1_{ports[n]}", n)
        out[who] = (seen, sorted(stats.splitlines()))
    return out


@pytest.mark.parametrize(
    "case", [(n, s) for n in NAMES for s in ("any source port", "the chosen source port")]
)
def test_same_chain_as_envoy(results, case):
    assert results["sofamesh"][0][case] == results["envoy"][0][case]


def test_envoy_chose_what_the_cases_are_about(results):
    seen = results["envoy"][0]
    assert seen[("dport", "any source port")] == "dst-ip"
    assert seen[("dport_exact", "any source port")] == "exact-port"
    assert seen[("nomatch_default", "any source port")] == "default"
    assert seen[("nomatch", "any source port")] == "refused"
    assert seen[("source_ip", "the chosen source port")] == "src-port"
    assert seen[("source_ip", "any source port")] == "src-ip"


def test_no_filter_chain_match_counted_as_envoy(results):
    assert results["sofamesh"][1] == results["envoy"][1]
