"""Listener.filter_chain_matcher (istiod's shape for waypoints: an xds matcher on network
inputs naming the filter chain) against Envoy 1.40. Each chain answers with its own name
(direct_response), clients connect from several loopback source addresses with HTTP/1.1
or HTTP/1.0 (the http_inspector's application protocol), and both proxies must pick the
same chains: an IP range tree (the most specific range), nested trees and lists, an exact
map on the application protocol, the enclosing on_no_match when a nested matcher matches
nothing, and the default_filter_chain when nothing matches at all."""

from __future__ import annotations

import socket
import time

import pytest

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.support.envoy import ProxyProcess, admin_get

NET = "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3."
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
CHAINS = ("two", "h11", "list", "nomatch", "prefix")


def _input(kind: str) -> dict:
    return {"name": kind, "typed_config": {"@type": NET + kind}}


def _action(name: str) -> dict:
    return {
        "action": {
            "name": name,
            "typed_config": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": name,
            },
        }
    }


def _chain(name: str) -> dict:
    return {
        "name": name,
        "filters": [
            {
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": HCM,
                    "stat_prefix": name,
                    "http_protocol_options": {"accept_http_10": True},
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
                        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}
                    ],
                },
            }
        ],
    }


def _matcher(port: int, root_no_match: bool) -> dict:
    ranges = [
        {"ranges": [{"address_prefix": "127.0.0.2", "prefix_len": 32}], "on_match": _action("two")},
        {
            "ranges": [{"address_prefix": "127.0.0.0", "prefix_len": 8}],
            "on_match": {
                "matcher": {
                    "matcher_tree": {
                        "input": _input("ApplicationProtocolInput"),
                        "exact_match_map": {"map": {"'http/1.1'": _action("h11")}},
                    }
                }
            },
        },
        {
            "ranges": [{"address_prefix": "127.0.0.4", "prefix_len": 32}],
            "on_match": {
                "matcher": {
                    "matcher_list": {
                        "matchers": [
                            {
                                "predicate": {
                                    "single_predicate": {
                                        "input": _input("DestinationPortInput"),
                                        "value_match": {"exact": str(port)},
                                    }
                                },
                                "on_match": _action("list"),
                            }
                        ]
                    }
                }
            },
        },
        {
            "ranges": [{"address_prefix": "127.0.0.5", "prefix_len": 32}],
            "on_match": {
                "matcher": {
                    "matcher_tree": {
                        "input": _input("SourceIPInput"),
                        "prefix_match_map": {
                            "map": {"127.0": _action("nomatch"), "127.0.0.": _action("prefix")}
                        },
                    }
                }
            },
        },
    ]
    m: dict = {
        "matcher_tree": {
            "input": _input("SourceIPInput"),
            "custom_match": {
                "name": "ip",
                "typed_config": {
                    "@type": "type.googleapis.com/xds.type.matcher.v3.IPMatcher",
                    "range_matchers": ranges,
                },
            },
        }
    }
    if root_no_match:
        m["on_no_match"] = _action("nomatch")
    return m


def _bootstrap(ports: dict[str, int], admin: int) -> dict:
    listeners = []
    for name, root_no_match in (("a", True), ("b", False)):
        lst = {
            "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": ports[name]}},
            "listener_filters": [
                {
                    "name": "envoy.filters.listener.http_inspector",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.listener"
                        ".http_inspector.v3.HttpInspector"
                    },
                }
            ],
            "filter_chains": [_chain(c) for c in CHAINS],
            "filter_chain_matcher": _matcher(ports[name], root_no_match),
        }
        if not root_no_match:
            lst["default_filter_chain"] = _chain("default")
        listeners.append(lst)
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": listeners},
    }


def _ask(port: int, source: str, version: str) -> str:
    try:
        with socket.socket() as s:
            s.settimeout(5)
            s.bind((source, 0))
            s.connect(("127.0.0.1", port))
            s.sendall(f"GET / {version}\r\nhost: x\r\n\r\n".encode())
            data = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                data += b
                if b"\r\n\r\n" in data:
                    head, _, body = data.partition(b"\r\n\r\n")
                    n = [
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ]
                    if n and len(body) >= n[0]:
                        return body[: n[0]].decode()
            return "closed"
    except OSError as e:
        return type(e).__name__


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = {}
    for kind in ("envoy", "sofamesh"):
        ports = {"a": free_port(), "b": free_port()}
        admin = free_port()
        boot = _bootstrap(ports, admin)
        wd = tmp_path_factory.mktemp(kind)
        proc = (
            ProxyProcess.envoy(envoy_binary(), boot, wd)
            if kind == "envoy"
            else ProxyProcess.sofamesh(sofamesh_command(), boot, wd)
        )
        with proc:
            got = {}
            for lst in ("a", "b"):
                for source in ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"):
                    for version in ("HTTP/1.1", "HTTP/1.0"):
                        got[f"{lst} {source} {version}"] = _ask(ports[lst], source, version)
            time.sleep(0.2)
            _, text = admin_get(admin, "/stats")
            stats = {
                k: int(v)
                for k, _, v in (line.partition(": ") for line in text.splitlines())
                if k.endswith("no_filter_chain_match") and v.strip().isdigit()
            }
            out[kind] = (got, stats)
    return out


def test_filter_chain_matcher_as_envoy(results):
    env, ours = results["envoy"][0], results["sofamesh"][0]
    assert env["a 127.0.0.2 HTTP/1.1"] == "two", env
    assert env["a 127.0.0.1 HTTP/1.1"] == "h11", env
    assert env["b 127.0.0.3 HTTP/1.0"] == "default", env
    assert set(env.values()) == {"two", "h11", "list", "nomatch", "prefix", "default"}, env
    diffs = {k: (env[k], ours.get(k)) for k in env if env[k] != ours.get(k)}
    assert not diffs, diffs


def test_no_match_counted_as_envoy(results):
    env, ours = results["envoy"][1], results["sofamesh"][1]
    names = set(env) | set(ours)
    assert {k: env.get(k, 0) for k in names} == {k: ours.get(k, 0) for k in names}
