"""Route tables compiled from Envoy RouteConfiguration protos, matched against parsed heads."""

from __future__ import annotations

import collections

import pytest
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format

from sofamesh._core.codecs import http1
from sofamesh.proxy.errors import UnsupportedConfig
from sofamesh.proxy.routes import compile_route_config


def table(vhosts, **kw):
    rc = json_format.ParseDict({"virtual_hosts": vhosts}, route_pb2.RouteConfiguration())
    return compile_route_config(rc, **kw)


def head(path="/", host="example.com", headers=()):
    raw = (
        f"GET {path} HTTP/1.1\r\nhost: {host}\r\n".encode()
        + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers)
        + b"\r\n"
    )
    n, h = http1.parse_request_head(raw)
    assert n > 0
    return h


def vh(name, domains, routes=None):
    return {
        "name": name,
        "domains": domains,
        "routes": routes or [{"match": {"prefix": "/"}, "route": {"cluster": name}}],
    }


def pick(t, **kw):
    r = t.match(head(**kw))
    return None if r is None else r.cluster


def test_domain_precedence():
    t = table(
        [
            vh("star", ["*"]),
            vh("exact", ["api.foo.com"]),
            vh("long_suffix", ["*.foo.com"]),
            vh("short_suffix", ["*.com"]),
            vh("prefix", ["api.*"]),
            vh("port", ["web.foo.com:8080"]),
        ]
    )
    assert pick(t, host="api.foo.com") == "exact"
    assert pick(t, host="API.FOO.COM") == "exact"
    assert pick(t, host="www.foo.com") == "long_suffix"
    assert pick(t, host="bar.com") == "short_suffix"
    assert pick(t, host="api.bar.org") == "prefix"  # suffix beats prefix, none here
    assert pick(t, host="x.org") == "star"
    assert pick(t, host="foo.com") == "short_suffix"
    assert pick(t, host="web.foo.com:8080") == "port"
    assert pick(t, host="api.foo.com:8080") == "prefix"  # the port is part of the domain
    t2 = table([vh("exact", ["api.foo.com"])], strip_port=True)
    assert pick(t2, host="api.foo.com:8080") == "exact"
    assert pick(t2, host="other") is None


def test_wildcard_needs_a_non_empty_part():
    t = table([vh("suffix", ["*.foo.com"])])
    assert pick(t, host=".foo.com") is None
    assert pick(t, host="a.foo.com") == "suffix"


def test_duplicate_domain_is_rejected():
    with pytest.raises(ValueError, match="more than one virtual host"):
        table([vh("a", ["x.com"]), vh("b", ["X.com"])])


def r(match, cluster):
    return {"match": match, "route": {"cluster": cluster}}


def test_path_matchers_in_order():
    t = table(
        [
            vh(
                "v",
                ["*"],
                [
                    r({"path": "/exact"}, "path"),
                    r({"safe_regex": {"regex": "/users/[0-9]+"}}, "regex"),
                    r({"path_separated_prefix": "/api"}, "sep"),
                    r({"prefix": "/CI", "case_sensitive": False}, "ci"),
                    r({"prefix": "/"}, "default"),
                ],
            )
        ]
    )
    assert pick(t, path="/exact") == "path"
    assert pick(t, path="/exact?x=1") == "path"
    assert pick(t, path="/exact/") == "default"
    assert pick(t, path="/users/12") == "regex"
    assert pick(t, path="/users/12?a") == "regex"
    assert pick(t, path="/users/12a") == "default"
    assert pick(t, path="/api") == "sep"
    assert pick(t, path="/api/v1") == "sep"
    assert pick(t, path="/apix") == "default"
    assert pick(t, path="/ci/thing") == "ci"


def test_header_and_query_matchers():
    t = table(
        [
            vh(
                "v",
                ["*"],
                [
                    r(
                        {
                            "prefix": "/",
                            "headers": [
                                {"name": "x-a", "string_match": {"prefix": "ab"}},
                                {"name": "x-b", "present_match": True},
                            ],
                        },
                        "both",
                    ),
                    r(
                        {
                            "prefix": "/",
                            "headers": [
                                {
                                    "name": "x-c",
                                    "string_match": {"exact": "YES", "ignore_case": True},
                                }
                            ],
                        },
                        "ic",
                    ),
                    r(
                        {
                            "prefix": "/",
                            "headers": [{"name": "x-n", "range_match": {"start": 10, "end": 20}}],
                        },
                        "range",
                    ),
                    r(
                        {
                            "prefix": "/",
                            "headers": [
                                {
                                    "name": "x-inv",
                                    "string_match": {"exact": "a"},
                                    "invert_match": True,
                                }
                            ],
                        },
                        "inv",
                    ),
                    r(
                        {
                            "prefix": "/",
                            "query_parameters": [{"name": "debug", "present_match": True}],
                        },
                        "q",
                    ),
                    r({"prefix": "/"}, "default"),
                ],
            )
        ]
    )
    assert pick(t, headers=[("x-a", "abc"), ("x-b", "")]) == "both"
    # an absent header never matches a value matcher, inverted or not (Envoy)
    assert pick(t, headers=[("x-a", "abc")]) == "default"
    assert pick(t, headers=[("x-a", "abc"), ("x-inv", "b")]) == "inv"
    assert pick(t, headers=[("x-c", "yes"), ("x-inv", "a")]) == "ic"
    assert pick(t, headers=[("x-n", "15"), ("x-inv", "a")]) == "range"
    assert pick(t, headers=[("x-n", "20"), ("x-inv", "a")]) == "default"
    assert pick(t, path="/?debug", headers=[("x-inv", "a")]) == "q"
    assert pick(t, path="/?x=debug", headers=[("x-inv", "a")]) == "default"


def test_weighted_clusters_follow_weights():
    t = table(
        [
            vh(
                "v",
                ["*"],
                [
                    {
                        "match": {"prefix": "/"},
                        "route": {
                            "weighted_clusters": {
                                "clusters": [
                                    {"name": "a", "weight": 90},
                                    {"name": "b", "weight": 10},
                                ]
                            }
                        },
                    }
                ],
            )
        ]
    )
    route = t.match(head())
    seen = collections.Counter(route.pick_cluster() for _ in range(10000))
    assert 8700 < seen["a"] < 9300 and seen["a"] + seen["b"] == 10000


def test_action_details_compile():
    t = table(
        [
            vh(
                "v",
                ["*"],
                [
                    {
                        "match": {"prefix": "/"},
                        "route": {
                            "cluster": "c",
                            "timeout": "2.5s",
                            "prefix_rewrite": "/x",
                            "retry_policy": {"retry_on": "5xx,connect-failure", "num_retries": 3},
                            "upgrade_configs": [{"upgrade_type": "websocket"}],
                        },
                        "request_headers_to_add": [
                            {"header": {"key": "k", "value": "v"}},
                            {
                                "header": {"key": "o", "value": "w"},
                                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                            },
                        ],
                    }
                ],
            )
        ]
    )
    route = t.match(head())
    assert route.timeout == 2.5 and route.timeout_hdr == (
        b"x-envoy-expected-rq-timeout-ms",
        b"2500",
    )
    assert route.num_retries == 3 and route.retry_on != 0
    assert route.prefix_rewrite == b"/x" and route.upgrades == frozenset({b"websocket"})
    assert route.req_add == (b"k", b"v", b"o", b"w") and route.req_remove == frozenset({b"o"})
    t0 = table(
        [vh("v", ["*"], [{"match": {"prefix": "/"}, "route": {"cluster": "c", "timeout": "0s"}}])]
    )
    assert t0.match(head()).timeout_hdr == ()


def test_unknown_cluster_and_unsupported_fields_name_the_path():
    with pytest.raises(UnsupportedConfig, match=r"virtual_hosts\[0\]\.routes\[0\]\.route"):
        table([vh("v", ["*"])], clusters={"other"})
    with pytest.raises(UnsupportedConfig, match="retry_on"):
        table(
            [
                vh(
                    "v",
                    ["*"],
                    [
                        {
                            "match": {"prefix": "/"},
                            "route": {
                                "cluster": "c",
                                "retry_policy": {"retry_on": "retriable-headers"},
                            },
                        }
                    ],
                )
            ]
        )
