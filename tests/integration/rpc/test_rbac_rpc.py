"""RBAC for RPC (sofamesh.filters.rpc.rbac in dubbo_filters / bolt_filters): real
sofa-rpc-node Bolt and dubbo-remoting peers; an allowed call passes, a denied one gets the
protocol's own error reply with its request id, and the network RBAC stats count both."""

from __future__ import annotations

import pytest

from sofamesh._core.codecs import bolt, dubbo
from sofamesh._core.codecs.hessian import h2_encode_simple

from .conftest import (
    BOLT_TYPE,
    DUBBO_TYPE,
    SERVICE,
    NodeServer,
    RawUpstream,
    bootstrap,
    cluster,
    free_port,
    listener,
    node_client,
    raw_exchange,
    sofamesh,
    stats,
)

RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"


def _hdr(name: str, exact: str) -> dict:
    return {"header": {"name": name, "string_match": {"exact": exact}}}


def rbac_filter(stat_prefix: str) -> dict:
    """plus and echo on the test service from loopback; svc.Silent only with tenant t1."""
    return {
        "name": "sofamesh.filters.rpc.rbac",
        "config": {
            "@type": RBAC_TYPE,
            "stat_prefix": stat_prefix,
            "shadow_rules_stat_prefix": "audit.",
            "rules": {
                "action": "ALLOW",
                "policies": {
                    "node-calls": {
                        "permissions": [
                            {
                                "and_rules": {
                                    "rules": [
                                        _hdr(":service", SERVICE),
                                        {
                                            "or_rules": {
                                                "rules": [
                                                    _hdr(":method", "plus"),
                                                    _hdr(":method", "echo"),
                                                ]
                                            }
                                        },
                                    ]
                                }
                            }
                        ],
                        "principals": [
                            {"direct_remote_ip": {"address_prefix": "127.0.0.0", "prefix_len": 8}}
                        ],
                    },
                    "tenant-t1": {
                        "permissions": [
                            {
                                "and_rules": {
                                    "rules": [_hdr(":service", "svc.Silent"), _hdr("tenant", "t1")]
                                }
                            }
                        ],
                        "principals": [{"any": True}],
                    },
                    "versioned": {
                        "permissions": [
                            {
                                "and_rules": {
                                    "rules": [
                                        _hdr(":service", "svc.Versioned"),
                                        _hdr(":version", "2.0"),
                                    ]
                                }
                            }
                        ],
                        "principals": [{"any": True}],
                    },
                },
            },
            # shadow: would deny everything not from 10/8
            "shadow_rules": {
                "action": "DENY",
                "policies": {
                    "not-10": {
                        "permissions": [{"any": True}],
                        "principals": [
                            {
                                "not_id": {
                                    "remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}
                                }
                            }
                        ],
                    }
                },
            },
        },
    }


def _any_route(interface: str, cluster_name: str) -> dict:
    return {
        "name": interface,
        "interface": interface,
        "routes": [
            {
                "match": {"method": {"name": {"safe_regex": {"regex": ".*"}}}},
                "route": {"cluster": cluster_name},
            }
        ],
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with (
        NodeServer(dubbo=True, tag="d") as dsrv,
        NodeServer(tag="b") as bsrv,
        RawUpstream("silent") as silent,
    ):
        dport, bport = free_port(), free_port()
        routes = [
            _any_route(SERVICE, "node"),
            _any_route("svc.Silent", "silent"),
            _any_route("svc.Versioned", "silent"),
        ]
        broutes = [
            _any_route(SERVICE, "bnode"),
            _any_route("svc.Silent", "silent"),
            _any_route("svc.Versioned", "silent"),
        ]
        boot = bootstrap(
            [
                listener(
                    "dubbo",
                    dport,
                    [
                        {
                            "name": "envoy.filters.network.dubbo_proxy",
                            "typed_config": {
                                "@type": DUBBO_TYPE,
                                "stat_prefix": "din",
                                "route_config": routes,
                                "dubbo_filters": [
                                    rbac_filter("drbac"),
                                    {"name": "envoy.filters.dubbo.router"},
                                ],
                            },
                        }
                    ],
                ),
                listener(
                    "bolt",
                    bport,
                    [
                        {
                            "name": "sofamesh.filters.network.bolt_proxy",
                            "typed_config": {
                                "@type": BOLT_TYPE,
                                "stat_prefix": "bin",
                                "route_config": broutes,
                                "bolt_filters": [rbac_filter("brbac")],
                            },
                        }
                    ],
                ),
            ],
            [
                cluster("node", [dsrv.port]),
                cluster("bnode", [bsrv.port]),
                cluster("silent", [silent.port]),
            ],
        )
        with sofamesh(boot, tmp_path_factory.mktemp("rbac_rpc")) as proxy:
            yield {"proxy": proxy, "dubbo": dport, "bolt": bport, "silent": silent}


def _dubbo_req(rid: int, service: str, method: str = "m", version: str = "1.0", **att) -> bytes:
    return dubbo.encode_request(
        rid, "2.0.2", service, version, method, "I", h2_encode_simple(1), att
    )


def _bolt_req(rid: int, service: str, method: str = "m", **headers) -> bytes:
    return bolt.BoltFrame(
        request_id=rid,
        class_name=bolt.SOFA_REQUEST_CLASS,
        headers={"service": service, "sofa_head_method_name": method, **headers},
        content=b"\x91",
        timeout=300,
    ).encode()


@pytest.mark.parametrize("mode", ["dubbo", "bolt"])
def test_real_clients_allowed_and_denied(world, mode):
    prefix = "drbac" if mode == "dubbo" else "brbac"
    before = stats(world["proxy"])
    calls = [
        {"method": "plus", "args": [40, 2]},
        {"method": "who"},
        {"method": "echo", "args": ["hi"]},
    ]
    res = node_client(world[mode], calls, mode=mode)
    assert res[0] == {"ok": True, "result": 42}
    assert res[2] == {"ok": True, "result": "hi"}
    assert not res[1]["ok"], res[1]
    if mode == "dubbo":
        assert "RBAC: access denied" in res[1]["error"], res[1]
    after = stats(world["proxy"])

    def delta(name: str) -> int:
        return after.get(name, 0) - before.get(name, 0)

    assert delta(f"{prefix}.rbac.allowed") == 2
    assert delta(f"{prefix}.rbac.denied") == 1
    assert delta(f"{prefix}.rbac.audit.shadow_denied") == 3  # loopback is not 10/8
    assert delta(f"{prefix}.rbac.audit.shadow_allowed") == 0
    # the denied call never reached the upstream
    assert delta(f"cluster.{'node' if mode == 'dubbo' else 'bnode'}.upstream_rq_total") == 2


def test_dubbo_denied_reply_carries_request_id_and_status(world):
    rid = (1 << 62) + 7
    (f,) = raw_exchange(
        world["dubbo"], _dubbo_req(rid, "svc.Silent", tenant="t2"), dubbo.DubboDecoder(), 1
    )
    assert (f.request_id, f.status, f.is_request) == (rid, dubbo.DUBBO_SERVICE_ERROR, False)
    assert f.error_message() == "RBAC: access denied"
    # the attachment named by a header rule is read: tenant t1 is routed (then times out)
    (g,) = raw_exchange(
        world["dubbo"],
        _dubbo_req(8, "svc.Silent", tenant="t1", timeout="200"),
        dubbo.DubboDecoder(),
        1,
    )
    assert (g.request_id, g.status) == (8, dubbo.DUBBO_SERVER_TIMEOUT)
    # :version
    (h,) = raw_exchange(
        world["dubbo"], _dubbo_req(9, "svc.Versioned", version="1.0"), dubbo.DubboDecoder(), 1
    )
    assert (h.request_id, h.status) == (9, dubbo.DUBBO_SERVICE_ERROR)
    (k,) = raw_exchange(
        world["dubbo"],
        _dubbo_req(10, "svc.Versioned", version="2.0", timeout="200"),
        dubbo.DubboDecoder(),
        1,
    )
    assert (k.request_id, k.status) == (10, dubbo.DUBBO_SERVER_TIMEOUT)


def test_bolt_denied_reply_carries_request_id_and_status(world):
    (f,) = raw_exchange(
        world["bolt"], _bolt_req(4242, "svc.Silent:1.0", tenant="t2"), bolt.BoltDecoder(), 1
    )
    assert (f.request_id, f.type, f.status) == (
        4242,
        bolt.BOLT_TYPE_RESPONSE,
        bolt.STATUS_SERVER_EXCEPTION,
    )
    (g,) = raw_exchange(
        world["bolt"], _bolt_req(4243, "svc.Silent:1.0", tenant="t1"), bolt.BoltDecoder(), 1
    )
    assert (g.request_id, g.status) == (4243, bolt.STATUS_TIMEOUT)
    # :version is the service name's second part
    (h,) = raw_exchange(world["bolt"], _bolt_req(4244, "svc.Versioned:1.0"), bolt.BoltDecoder(), 1)
    assert (h.request_id, h.status) == (4244, bolt.STATUS_SERVER_EXCEPTION)
    (k,) = raw_exchange(world["bolt"], _bolt_req(4245, "svc.Versioned:2.0"), bolt.BoltDecoder(), 1)
    assert (k.request_id, k.status) == (4245, bolt.STATUS_TIMEOUT)
