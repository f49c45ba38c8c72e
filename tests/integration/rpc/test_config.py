"""RPC filter configs: Envoy's DubboProxy and sofamesh's BoltProxy load from a bootstrap through
json_format; bad configs fail at start-up naming the field; routes match as configured."""

from __future__ import annotations

import json

import pytest

from sofamesh._core.codecs import bolt, dubbo
from sofamesh._core.codecs.hessian import h2_encode_simple
from sofamesh.config import load_bootstrap
from sofamesh.filters import registry
from sofamesh.filters.network import _proto
from sofamesh.filters.network.rpc_routes import compile_routes
from sofamesh.proxy.errors import UnsupportedConfig
from sofamesh.proxy.server import Server

from .conftest import bolt_filter, bootstrap, cluster, dubbo_filter, listener


def boot_with(flt: dict) -> object:
    b = bootstrap([listener("l", 0, [flt])], [cluster("c1", [1]), cluster("c2", [2])])
    return load_bootstrap(config_yaml=json.dumps(b))


def test_filters_are_registered_by_name_and_type():
    for kind, key in (
        ("network", "envoy.filters.network.dubbo_proxy"),
        ("network", "sofamesh.filters.network.bolt_proxy"),
        ("network", "envoy.filters.network.tcp_proxy"),
        ("network", _proto.TYPE_URL),
    ):
        assert registry.lookup(kind, key) is not None, key


def test_bolt_proxy_loads_through_json_format():
    b = boot_with(
        bolt_filter(
            [
                {
                    "interface": "a.B",
                    "routes": [
                        {
                            "match": {"method": {"name": {"prefix": "get"}}},
                            "route": {"cluster": "c1"},
                        }
                    ],
                }
            ],
            default_timeout_ms=250,
        )
    )
    anyc = b.static_resources.listeners[0].filter_chains[0].filters[0].typed_config
    msg = _proto.BoltProxy()
    assert anyc.Unpack(msg)
    assert msg.route_config[0].routes[0].match.method.name.prefix == "get"
    assert msg.default_timeout_ms == 250


@pytest.mark.parametrize(
    "flt,where",
    [
        (
            dubbo_filter(
                [
                    {
                        "interface": "a.B",
                        "routes": [
                            {
                                "match": {"method": {"name": {"exact": "m"}}},
                                "route": {"cluster": "nope"},
                            }
                        ],
                    }
                ]
            ),
            "route_config[0].routes[0].route.cluster",
        ),
        (
            dubbo_filter(
                [
                    {
                        "interface": "a.B",
                        "routes": [
                            {
                                "match": {
                                    "method": {
                                        "name": {"exact": "m"},
                                        "params_match": {"0": {"exact_match": "x"}},
                                    }
                                },
                                "route": {"cluster": "c1"},
                            }
                        ],
                    }
                ]
            ),
            "params_match",
        ),
        (bolt_filter([{"interface": "a.B", "routes": [{"match": {}}]}]), "routes[0].route"),
        (
            dubbo_filter(
                [
                    {
                        "interface": "a.B",
                        "routes": [
                            {
                                "match": {"method": {"name": {"exact": "m"}}},
                                "route": {
                                    "cluster": "c1",
                                    "metadata_match": {"filter_metadata": {"envoy.lb": {"v": "1"}}},
                                },
                            }
                        ],
                    }
                ]
            ),
            "metadata_match",
        ),
    ],
)
async def test_bad_configs_fail_at_start_naming_the_field(flt, where):
    srv = Server(boot_with(flt))
    with pytest.raises(UnsupportedConfig, match=where.replace("[", r"\[").replace("]", r"\]")):
        await srv.start()
    await srv.stop()


def _table(routes, proto_msg):
    b = boot_with(dubbo_filter(routes) if proto_msg == "dubbo" else bolt_filter(routes))
    anyc = b.static_resources.listeners[0].filter_chains[0].filters[0].typed_config
    if proto_msg == "dubbo":
        from envoy.extensions.filters.network.dubbo_proxy.v3 import dubbo_proxy_pb2

        msg = dubbo_proxy_pb2.DubboProxy()
    else:
        msg = _proto.BoltProxy()
    anyc.Unpack(msg)
    return compile_routes(msg.route_config, {"c1": 1, "c2": 2}, "x")


def test_dubbo_route_matching_interface_group_version_method_headers():
    t = _table(
        [
            {
                "interface": "a.B",
                "group": "g",
                "version": "2.0",
                "routes": [
                    {"match": {"method": {"name": {"exact": "m"}}}, "route": {"cluster": "c2"}}
                ],
            },
            {
                "interface": "a.B",
                "routes": [
                    {
                        "match": {
                            "method": {"name": {"safe_regex": {"regex": "get.*"}}},
                            "headers": [{"name": "x-env", "exact_match": "canary"}],
                        },
                        "route": {"cluster": "c2"},
                    },
                    {"match": {"method": {"name": {"prefix": "get"}}}, "route": {"cluster": "c1"}},
                ],
            },
        ],
        "dubbo",
    )

    def route(service, version, method, **att):
        (f,) = dubbo.DubboDecoder().feed(
            dubbo.encode_request(
                1, "2.0.2", service, version, method, "I", h2_encode_simple(1), att
            )
        )
        assert f.parse_invocation() == 0
        return t.cluster_for(f)

    assert route("a.B", "2.0", "m", group="g") == "c2"
    assert route("a.B", "1.0", "m", group="g") is None
    assert route("a.B", "1.0", "getX") == "c1"
    assert route("a.B", "1.0", "getX", **{"x-env": "canary"}) == "c2"
    assert route("a.C", "1.0", "getX") is None


def test_bolt_route_matching_service_header_and_method():
    t = _table(
        [
            {
                "interface": "a.B",
                "version": "1.0",
                "routes": [
                    {
                        "match": {"method": {"name": {"exact": "m", "ignore_case": True}}},
                        "route": {"weighted_clusters": {"clusters": [{"name": "c2", "weight": 1}]}},
                    },
                    {
                        "match": {"headers": [{"name": "zone", "present_match": True}]},
                        "route": {"cluster": "c1"},
                    },
                ],
            },
            {
                "interface": "*",
                "routes": [
                    {
                        "match": {
                            "headers": [{"name": "zone", "exact_match": "z9", "invert_match": True}]
                        },
                        "route": {"cluster": "c2"},
                    }
                ],
            },
        ],
        "bolt",
    )

    def route(service, method=None, **headers):
        h = {"service": service, **headers}
        if method:
            h["sofa_head_method_name"] = method
        (f,) = bolt.BoltDecoder().feed(bolt.BoltFrame(headers=h, class_name=b"X").encode())
        return t.cluster_for(f)

    assert route("a.B:1.0", "M") == "c2"
    assert route("a.B:1.0", "other", zone="z1") == "c1"
    assert route("a.B:2.0", "m") == "c2"  # the catch-all config: zone is not z9
    assert route("x.Y:1.0", zone="z9") is None


def test_weighted_clusters_split_by_weight():
    t = _table(
        [
            {
                "interface": "a.B",
                "routes": [
                    {
                        "match": {"method": {"name": {"exact": "m"}}},
                        "route": {
                            "weighted_clusters": {
                                "clusters": [
                                    {"name": "c1", "weight": 1},
                                    {"name": "c2", "weight": 3},
                                ]
                            }
                        },
                    }
                ],
            }
        ],
        "dubbo",
    )
    (f,) = dubbo.DubboDecoder().feed(
        dubbo.encode_request(1, "2.0.2", "a.B", "1.0", "m", "I", h2_encode_simple(1), {})
    )
    f.parse_invocation()
    picks = [t.cluster_for(f) for _ in range(4000)]
    assert 0.2 < picks.count("c1") / 4000 < 0.3 and set(picks) == {"c1", "c2"}
