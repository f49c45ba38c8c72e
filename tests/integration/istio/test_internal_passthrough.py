"""What crosses into an internal listener besides bytes, against Envoy 1.40: the shapes
Istio's waypoint (`proxyconfig_main_internal.json`) and ambient's connect listeners use to
carry a connection's original destination from one listener to the next.

- `set_filter_state` with `shared_with_upstream`, through a cluster whose transport socket
  is `internal_upstream` (without it nothing passes): the value of
  `envoy.filters.listener.original_dst.local_ip` reaches the internal listener's connection,
  whose `original_dst` listener filter restores it as the local address; filter chains
  match on it and an ORIGINAL_DST cluster dials it. ONCE stops after one hop (unless the
  next listener copies it with `%FILTER_STATE(...:PLAIN)%` and shares it again, as Istio's
  `connect_authority` does); TRANSITIVE goes on.
- `internal_upstream`'s `passthrough_metadata` (host): the endpoint's
  `envoy.filters.listener.original_dst` metadata `local` address, restored the same way.
- From an HTTP connection manager chain (Istio's `direct-http`): the connection's shared
  value travels with its requests' upstream connection.

The same bootstrap runs in both proxies; compared per path: what the client got back,
which upstream saw the request, and the counters of each hop.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request

import pytest

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.support.envoy import ProxyProcess
from tests.support.http_upstream import RecordingUpstream

LOCAL_IP = "envoy.filters.listener.original_dst.local_ip"
ORIG_DST = {
    "name": "envoy.filters.listener.original_dst",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
    },
}


def _addr(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _set_state(value: str, share: str) -> dict:
    return {
        "name": "envoy.filters.network.set_filter_state",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.set_filter_state.v3.Config",
            "on_new_connection": [
                {
                    "object_key": LOCAL_IP,
                    "format_string": {"text_format_source": {"inline_string": value}},
                    "shared_with_upstream": share,
                }
            ],
        },
    }


def _tcp(prefix: str, cluster: str) -> dict:
    return {
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": prefix,
            "cluster": cluster,
        },
    }


def _internal_cluster(
    name: str, listener: str, metadata: dict | None = None, transport: bool = True
) -> dict:
    ep: dict = {
        "endpoint": {
            "address": {
                "envoy_internal_address": {"server_listener_name": listener, "endpoint_id": name}
            }
        }
    }
    c: dict = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [ep]}]},
    }
    if metadata is not None:
        ep["metadata"] = {"filter_metadata": metadata}
    if transport:
        c["transport_socket"] = {
            "name": "internal_upstream",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport",
                "passthrough_metadata": [
                    {"kind": {"host": {}}, "name": "envoy.filters.listener.original_dst"}
                ]
                if metadata is not None
                else [],
                "transport_socket": {
                    "name": "raw_buffer",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
                    },
                },
            },
        }
    return c


def _hcm(prefix: str, cluster: str) -> dict:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": prefix,
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
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


def bootstrap(admin: int, fronts: dict[str, int], up: dict[str, int]) -> dict:
    """Front listeners (names -> ports) into internal listeners `inner` and `inner2`;
    `up` names the recording upstream's ports (c: copied on, e: ONCE stops, f: TRANSITIVE,
    d: host metadata, g: from an HCM chain, b: one hop)."""
    a = "127.0.0.1:"
    listeners = [
        {
            "name": "once_one_hop",
            "address": _addr(fronts["once_one_hop"]),
            "filter_chains": [
                {"filters": [_set_state(a + str(up["b"]), "ONCE"), _tcp("f1", "to_inner")]}
            ],
        },
        {
            "name": "once_copied",
            "address": _addr(fronts["once_copied"]),
            "filter_chains": [
                {"filters": [_set_state(a + str(up["c"]), "ONCE"), _tcp("f2", "to_inner")]}
            ],
        },
        {
            "name": "once_two_hops",
            "address": _addr(fronts["once_two_hops"]),
            "filter_chains": [
                {"filters": [_set_state(a + str(up["e"]), "ONCE"), _tcp("f3", "to_inner")]}
            ],
        },
        {
            "name": "transitive",
            "address": _addr(fronts["transitive"]),
            "filter_chains": [
                {"filters": [_set_state(a + str(up["f"]), "TRANSITIVE"), _tcp("f4", "to_inner")]}
            ],
        },
        {
            "name": "metadata",
            "address": _addr(fronts["metadata"]),
            "filter_chains": [{"filters": [_tcp("f5", "to_inner_md")]}],
        },
        {
            "name": "http",
            "address": _addr(fronts["http"]),
            "filter_chains": [
                {"filters": [_set_state(a + str(up["g"]), "ONCE"), _hcm("h6", "to_inner")]}
            ],
        },
        {
            "name": "not_an_address",
            "address": _addr(fronts["not_an_address"]),
            "filter_chains": [
                {"filters": [_set_state("not-an-address", "ONCE"), _tcp("f7", "to_inner")]}
            ],
        },
        {
            "name": "no_transport",
            "address": _addr(fronts["no_transport"]),
            "filter_chains": [
                {"filters": [_set_state(a + str(up["b"]), "ONCE"), _tcp("f8", "to_inner_plain")]}
            ],
        },
        {
            "name": "inner",
            "internal_listener": {},
            "listener_filters": [ORIG_DST],
            "filter_chains": [
                {
                    "name": "copy",
                    "filter_chain_match": {"destination_port": up["c"]},
                    "filters": [
                        _set_state(f"%FILTER_STATE({LOCAL_IP}:PLAIN)%", "ONCE"),
                        _tcp("i_copy", "to_inner2"),
                    ],
                },
                {
                    "name": "on",
                    "filter_chain_match": {"destination_port": up["e"]},
                    "filters": [_tcp("i_on_e", "to_inner2")],
                },
                {
                    "name": "on_f",
                    "filter_chain_match": {"destination_port": up["f"]},
                    "filters": [_tcp("i_on_f", "to_inner2")],
                },
                {"name": "direct", "filters": [_tcp("i_direct", "orig")]},
            ],
        },
        {
            "name": "inner2",
            "internal_listener": {},
            "listener_filters": [ORIG_DST],
            "filter_chains": [{"filters": [_tcp("i2", "orig")]}],
        },
    ]
    for lst in listeners:
        if "internal_listener" not in lst:
            lst["listener_filters"] = []
    return {
        "admin": {"address": _addr(admin)},
        "bootstrap_extensions": [
            {
                "name": "envoy.bootstrap.internal_listener",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"
                },
            }
        ],
        "static_resources": {
            "listeners": listeners,
            "clusters": [
                _internal_cluster("to_inner", "inner"),
                _internal_cluster("to_inner2", "inner2"),
                _internal_cluster("to_inner_plain", "inner", transport=False),
                _internal_cluster(
                    "to_inner_md",
                    "inner",
                    {"envoy.filters.listener.original_dst": {"local": a + str(up["d"])}},
                ),
                {
                    "name": "orig",
                    "type": "ORIGINAL_DST",
                    "lb_policy": "CLUSTER_PROVIDED",
                    "connect_timeout": "1s",
                },
            ],
        },
    }


def _request(port: int) -> bytes:
    """What the client gets back; b"" when the proxy closed or reset the connection without
    an answer. (A proxy that gives up at once, as Envoy 1.40 does when the destination is
    missing, can reset the connection before the client's connect() has even returned:
    that too is a connection closed without an answer.)"""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
    except ConnectionResetError:
        return b""
    try:
        try:
            s.sendall(b"GET /probe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            return b""
        got = b""
        while True:
            try:
                more = s.recv(65536)
            except ConnectionResetError:  # closed with the request unread: as a FIN here
                return got
            if not more:
                return got
            got += more
    finally:
        s.close()


def _counters(admin: int) -> dict[str, int]:
    """The counters once they stop moving: a refused hop's close reaches the client before
    the proxy's last internal hops are counted, more so on a loaded machine."""
    last = _read_counters(admin)
    for _ in range(50):
        time.sleep(0.1)
        now = _read_counters(admin)
        if now == last:
            return now
        last = now
    return last


def _read_counters(admin: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?format=json", timeout=5) as r:
        stats = json.load(r)["stats"]
    wanted = (
        ".downstream_cx_total",
        ".downstream_cx_no_route",
        ".upstream_cx_total",
        ".upstream_cx_none_healthy",
    )
    return {
        s["name"]: s["value"]
        for s in stats
        if "value" in s
        and s["name"].endswith(wanted)
        and s["name"].startswith(
            ("tcp.", "cluster.orig.", "cluster.to_inner", "listener.envoy_internal")
        )
    }


def run(kind: str, tmp_path) -> dict:
    names = ["b", "c", "d", "e", "f", "g"]
    up = RecordingUpstream(names).start()
    try:
        fronts = {
            n: free_port()
            for n in (
                "once_one_hop",
                "once_copied",
                "once_two_hops",
                "transitive",
                "metadata",
                "http",
                "not_an_address",
                "no_transport",
            )
        }
        admin = free_port()
        boot = bootstrap(admin, fronts, up.ports)
        proc = (
            ProxyProcess.envoy(envoy_binary(), boot, tmp_path / kind)
            if kind == "envoy"
            else ProxyProcess.sofamesh(sofamesh_command(), boot, tmp_path / kind)
        )
        out: dict = {}
        with proc:
            # the start-up's readiness probes connect to every front, as often as the
            # proxy takes to come up: only what the requests below add is compared
            before = _counters(admin)
            for name, port in fronts.items():
                n0 = len(up.snapshot())
                got = _request(port)
                if name == "http":  # a second request on another connection: same path
                    got += _request(port)
                recs = up.wait_records(n0 + (2 if name == "http" else 1), timeout=1.0)[n0:]
                status = got.split(b"\r\n", 1)[0]
                out[name] = (status, sorted(r.listener for r in recs))
            after = _counters(admin)
            out["counters"] = {k: v - before.get(k, 0) for k, v in after.items()}
        return out
    finally:
        up.stop()


def test_passthrough_as_envoy(tmp_path):
    envoy = run("envoy", tmp_path)
    ours = run("sofamesh", tmp_path)
    # what Envoy shows, so that the comparison is about something
    assert envoy["once_one_hop"] == (b"HTTP/1.1 200 OK", ["b"])
    assert envoy["once_copied"] == (b"HTTP/1.1 200 OK", ["c"])
    assert envoy["once_two_hops"] == (b"", [])  # ONCE: inner2 has no destination
    assert envoy["transitive"] == (b"HTTP/1.1 200 OK", ["f"])
    assert envoy["metadata"] == (b"HTTP/1.1 200 OK", ["d"])
    assert envoy["http"][1] == ["g", "g"]
    assert envoy["not_an_address"] == (b"", [])
    # a cluster of internal endpoints without the internal_upstream transport passes nothing
    assert envoy["no_transport"] == (b"", [])
    assert ours == envoy, json.dumps({"envoy": envoy, "ours": ours}, default=str, indent=1)


pytestmark = pytest.mark.timeout(120)


def test_clients_that_leave_at_once_harm_no_one(tmp_path):
    """Clients that connect and leave before the internal connection behind them is made
    (a readiness probe, a port scan): the proxy keeps serving, and every request after them
    is answered. (uvloop attaches a connecting socket object to its transport only after
    connection_made; a tcp_proxy that closed it there left the object to close the
    descriptor a second time when collected, by then another connection's: its response was
    lost, then uvloop's epoll aborted the process. Four runs of four died before the fix.)"""
    up = RecordingUpstream(["b", "c", "d", "e", "f", "g"]).start()
    try:
        names = ("once_one_hop", "once_copied", "once_two_hops", "transitive", "metadata")
        fronts = {n: free_port() for n in (*names, "http", "not_an_address", "no_transport")}
        admin = free_port()
        proc = ProxyProcess.sofamesh(
            sofamesh_command(), bootstrap(admin, fronts, up.ports), tmp_path / "s"
        )
        answered = 0
        with proc:
            for _ in range(20):
                for _ in range(3):
                    socket.create_connection(("127.0.0.1", fronts["once_one_hop"])).close()
                if _request(fronts["once_one_hop"]).startswith(b"HTTP/1.1 200 OK"):
                    answered += 1
            alive = proc.proc is not None and proc.proc.poll() is None
    finally:
        up.stop()
    assert alive
    assert answered == 20


def test_pools_never_mix_shared_state(tmp_path):
    """Two HTTP listeners share one internal cluster but not their shared filter state
    (each names its own original destination): requests alternate between a keep-alive
    connection to each, and every request reaches its own listener's destination, on
    Envoy (pools keyed by the shared objects) as on sofamesh (a host of its own per state)."""
    import http.client

    def once(kind: str) -> list:
        up = RecordingUpstream(["b", "c", "d", "e", "f", "g"]).start()
        try:
            names = ("once_one_hop", "once_copied", "once_two_hops", "transitive", "metadata")
            fronts = {n: free_port() for n in (*names, "http", "not_an_address", "no_transport")}
            boot = bootstrap(free_port(), fronts, up.ports)
            # a second HTTP listener, the same chain but naming upstream b
            second = json.loads(json.dumps(boot["static_resources"]["listeners"][5]))
            second["name"] = "http_b"
            port_b = free_port()
            second["address"] = _addr(port_b)
            fs = second["filter_chains"][0]["filters"][0]["typed_config"]["on_new_connection"][0]
            fs["format_string"]["text_format_source"]["inline_string"] = (
                f"127.0.0.1:{up.ports['b']}"
            )
            boot["static_resources"]["listeners"].append(second)
            wd = tmp_path / f"pools-{kind}"
            proc = (
                ProxyProcess.envoy(envoy_binary(), boot, wd)
                if kind == "envoy"
                else ProxyProcess.sofamesh(sofamesh_command(), boot, wd)
            )
            seen = []
            with proc:
                conns = {
                    "g": http.client.HTTPConnection("127.0.0.1", fronts["http"], timeout=5),
                    "b": http.client.HTTPConnection("127.0.0.1", port_b, timeout=5),
                }
                try:
                    for i in range(6):
                        want = "gb"[i % 2]
                        n0 = len(up.snapshot())
                        c = conns[want]
                        c.request("GET", f"/{i}", headers={"host": "x"})
                        r = c.getresponse()
                        r.read()
                        got = [rec.listener for rec in up.wait_records(n0 + 1, 2.0)[n0:]]
                        seen.append((want, r.status, got))
                finally:
                    for c in conns.values():
                        c.close()
            return seen
        finally:
            up.stop()

    envoy = once("envoy")
    assert envoy == [(w, 200, [w]) for w in "gbgbgb"]
    assert once("sofamesh") == envoy
