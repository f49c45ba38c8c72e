"""gRPC over TLS both ways: a grpcio client with TLS (ALPN h2) to the proxy's TLS listener
(HCM codec AUTO: ALPN h2 picks HTTP/2), the proxy to a grpcio server that requires a client
certificate, over an HTTP/2 cluster with an UpstreamTlsContext that names no ALPN (the
HTTP/2 pool offers h2 itself, as Envoy's). Envoy 1.40 and sofamesh on the same bootstrap:
unary, server streaming and bidi calls give the same answers."""

from __future__ import annotations

from concurrent import futures
from pathlib import Path

import grpc
import pytest

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.support.certs import make_ca, make_leaf
from tests.support.envoy import ProxyProcess

SERVICE = "sofamesh.test.Echo"
TLS_UP = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
TLS_DOWN = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca("grpc CA")
    (d / "ca.crt").write_bytes(ca.cert_pem)
    for name in ("backend", "proxy", "proxyclient"):
        make_leaf(ca, cn=name).write(d, name)
    return d


@pytest.fixture(scope="module")
def backend(pki):
    def unary(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        return b"echo:" + req

    def stream(req: bytes, ctx: grpc.ServicerContext):
        for i in range(int(req)):
            yield b"%d" % i

    def chat(it, ctx: grpc.ServicerContext):
        for m in it:
            yield b"re:" + m

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4), options=[("grpc.so_reuseport", 0)]
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(unary),
                    "Stream": grpc.unary_stream_rpc_method_handler(stream),
                    "Chat": grpc.stream_stream_rpc_method_handler(chat),
                },
            ),
        )
    )
    creds = grpc.ssl_server_credentials(
        [((pki / "backend.key").read_bytes(), (pki / "backend.crt").read_bytes())],
        root_certificates=(pki / "ca.crt").read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    yield port
    server.stop(0)


def _addr(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def bootstrap(pki: Path, port: int, admin: int, backend: int) -> dict:
    def cert(name: str) -> list[dict]:
        return [
            {
                "certificate_chain": {"filename": str(pki / f"{name}.crt")},
                "private_key": {"filename": str(pki / f"{name}.key")},
            }
        ]

    return {
        "admin": {"address": _addr(admin)},
        "static_resources": {
            "listeners": [
                {
                    "name": "in",
                    "address": _addr(port),
                    "filter_chains": [
                        {
                            "transport_socket": {
                                "name": "envoy.transport_sockets.tls",
                                "typed_config": {
                                    "@type": TLS_DOWN,
                                    "common_tls_context": {
                                        "tls_certificates": cert("proxy"),
                                        "alpn_protocols": ["h2", "http/1.1"],
                                    },
                                },
                            },
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters"
                                        ".network.http_connection_manager.v3"
                                        ".HttpConnectionManager",
                                        "stat_prefix": "in",
                                        "route_config": {
                                            "virtual_hosts": [
                                                {
                                                    "name": "all",
                                                    "domains": ["*"],
                                                    "routes": [
                                                        {
                                                            "match": {"prefix": "/"},
                                                            "route": {"cluster": "backend"},
                                                        }
                                                    ],
                                                }
                                            ]
                                        },
                                        "http_filters": [
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {
                                                    "@type": "type.googleapis.com/envoy"
                                                    ".extensions.filters.http.router.v3.Router"
                                                },
                                            }
                                        ],
                                    },
                                }
                            ],
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "backend",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3"
                            ".HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "transport_socket": {
                        "name": "envoy.transport_sockets.tls",
                        "typed_config": {
                            "@type": TLS_UP,
                            "sni": "localhost",
                            "common_tls_context": {
                                "tls_certificates": cert("proxyclient"),
                                "validation_context": {
                                    "trusted_ca": {"filename": str(pki / "ca.crt")}
                                },
                            },
                        },
                    },
                    "load_assignment": {
                        "cluster_name": "backend",
                        "endpoints": [
                            {"lb_endpoints": [{"endpoint": {"address": _addr(backend)}}]}
                        ],
                    },
                }
            ],
        },
    }


def calls(pki: Path, port: int) -> dict:
    creds = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.crt").read_bytes())
    opts = [("grpc.ssl_target_name_override", "localhost")]
    out = {}
    with grpc.secure_channel(f"127.0.0.1:{port}", creds, options=opts) as ch:
        unary = ch.unary_unary(f"/{SERVICE}/Unary")
        stream = ch.unary_stream(f"/{SERVICE}/Stream")
        chat = ch.stream_stream(f"/{SERVICE}/Chat")
        out["unary"] = unary(b"hello", timeout=5)
        out["stream"] = list(stream(b"5", timeout=5))
        out["bidi"] = list(chat(iter([b"a", b"b", b"c"]), timeout=5))
        out["big"] = len(unary(b"x" * 1_000_000, timeout=10))
    return out


@pytest.mark.parametrize("kind", ["envoy", "sofamesh"])
def test_grpc_over_tls_both_ways(pki, backend, tmp_path, kind):
    port, admin = free_port(), free_port()
    boot = bootstrap(pki, port, admin, backend)
    proc = (
        ProxyProcess.envoy(envoy_binary(), boot, tmp_path)
        if kind == "envoy"
        else ProxyProcess.sofamesh(sofamesh_command(), boot, tmp_path)
    )
    with proc:
        got = calls(pki, port)
    assert got == {
        "unary": b"echo:hello",
        "stream": [b"0", b"1", b"2", b"3", b"4"],
        "bidi": [b"re:a", b"re:b", b"re:c"],
        "big": 1_000_005,
    }
