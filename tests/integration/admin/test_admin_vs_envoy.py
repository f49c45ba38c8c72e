"""sofamesh's admin API against real Envoy 1.40's on the same bootstrap: same endpoints,
same status codes, same JSON shapes and stat names that tooling (istioctl, pilot-agent,
Prometheus) reads."""

from __future__ import annotations

import json
import re
import socket
import time

import pytest

from tests.conftest import free_port
from tests.integration.admin.helpers import (
    get,
    post,
    request,
    start_envoy,
    start_sofamesh,
    stop,
    write_bootstrap,
)

pytestmark = pytest.mark.envoy


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("admin")
    upstream = free_port()
    ea, sa = free_port(), free_port()
    envoy = start_envoy(write_bootstrap(d / "envoy.yaml", admin=ea, upstream=upstream), ea)
    try:
        sm = start_sofamesh(
            write_bootstrap(d / "sofamesh.yaml", admin=sa, upstream=upstream),
            sa,
            "--concurrency",
            "1",
        )
    except BaseException:
        stop(envoy)
        raise
    try:
        yield {"envoy": ea, "sofamesh": sa}
    finally:
        stop(sm)
        stop(envoy)


def both(pair, fn):
    return fn(pair["envoy"]), fn(pair["sofamesh"])


def keyshape(v):
    """The keys of a JSON value, recursively (lists by their first element)."""
    if isinstance(v, dict):
        return {k: keyshape(x) for k, x in v.items()}
    if isinstance(v, list):
        return [keyshape(v[0])] if v else []
    return type(v).__name__


def test_ready_and_server_info(pair):
    e, s = both(pair, lambda p: get(p, "/ready"))
    assert e == s == (200, "LIVE\n")
    e, s = both(pair, lambda p: json.loads(get(p, "/server_info")[1]))
    assert set(e) == set(s)
    assert s["state"] == e["state"] == "LIVE"
    assert re.fullmatch(r"[0-9a-f]{40}/[\d.]+/Clean/RELEASE/\w+", s["version"])
    assert set(s["command_line_options"]) == set(e["command_line_options"])
    for k in (
        "concurrency",
        "mode",
        "drain_strategy",
        "log_format",
        "drain_time",
        "parent_shutdown_time",
        "local_address_ip_version",
        "file_flush_interval",
    ):
        assert s["command_line_options"][k] == e["command_line_options"][k], k
    assert s["node"]["id"] == e["node"]["id"] == "n1"


def test_post_only_endpoints_refuse_get(pair):
    for path in (
        "/healthcheck/fail",
        "/healthcheck/ok",
        "/quitquitquit",
        "/reset_counters",
        "/drain_listeners",
        "/logging",
    ):
        e, s = both(pair, lambda p, path=path: request(p, "GET", path))
        assert e[0] == s[0] == 405, path
        assert e[2] == s[2] == "Method GET not allowed, POST required.", path
    e, s = both(pair, lambda p: get(p, "/no/such/endpoint")[0])
    assert e == s == 404


def test_healthcheck_fail_makes_ready_draining(pair):
    try:
        assert both(pair, lambda p: post(p, "/healthcheck/fail")) == ((200, "OK\n"),) * 2
        e, s = both(pair, lambda p: get(p, "/ready"))
        assert e == s == (503, "DRAINING\n")
        e, s = both(pair, lambda p: json.loads(get(p, "/server_info")[1])["state"])
        assert e == s == "DRAINING"
        e, s = both(pair, lambda p: get(p, "/stats?filter=^server\\.(live|state)$")[1])
        assert e == s == "server.live: 0\nserver.state: 0\n"
    finally:
        both(pair, lambda p: post(p, "/healthcheck/ok"))
    assert both(pair, lambda p: get(p, "/ready")) == ((200, "LIVE\n"),) * 2


SERVER_STATS = {
    "server.state": 0,
    "server.live": 1,
    "server.concurrency": 1,
    "listener_manager.workers_started": 1,
    "listener_manager.total_listeners_active": 1,
    "cluster_manager.active_clusters": 1,
    "cluster.backend.membership_healthy": 1,
    "cluster.backend.membership_total": 1,
}


def parse_text_stats(body: str) -> dict[str, str]:
    out = {}
    for line in body.splitlines():
        name, sep, val = line.partition(": ")
        assert sep and re.fullmatch(r"[\w.\-:|\[\]]+", name), line
        out[name] = val
    return out


def test_stats_text_json_and_filter(pair):
    e, s = both(pair, lambda p: parse_text_stats(get(p, "/stats")[1]))
    for name, value in SERVER_STATS.items():
        assert e[name] == s[name] == str(value), name
    assert "server.uptime" in s
    e, s = both(pair, lambda p: json.loads(get(p, "/stats?format=json")[1]))
    assert set(e) == set(s) == {"stats"}
    sv = {x["name"]: x["value"] for x in s["stats"] if "name" in x}
    ev = {x["name"]: x["value"] for x in e["stats"] if "name" in x}
    for name, value in SERVER_STATS.items():
        assert ev[name] == sv[name] == value
    hist = [x for x in s["stats"] if "histograms" in x]
    ehist = [x for x in e["stats"] if "histograms" in x]
    assert keyshape(hist[0])["histograms"].keys() == keyshape(ehist[0])["histograms"].keys()
    assert (
        hist[0]["histograms"]["supported_quantiles"]
        == ehist[0]["histograms"]["supported_quantiles"]
    )
    e, s = both(pair, lambda p: get(p, "/stats?filter=^cluster_manager\\.active_clusters$"))
    assert e == s == (200, "cluster_manager.active_clusters: 1\n")
    e, s = both(
        pair, lambda p: json.loads(get(p, "/stats?format=json&usedonly&filter=^server\\.state$")[1])
    )
    assert e == s == {"stats": [{"name": "server.state", "value": 0}]}


def test_prometheus_tags(pair):
    e, s = both(pair, lambda p: get(p, "/stats/prometheus")[1])
    for line in (
        "# TYPE envoy_cluster_membership_healthy gauge",
        'envoy_cluster_membership_healthy{envoy_cluster_name="backend"} 1',
        "envoy_server_live{} 1",
        "envoy_listener_manager_workers_started{} 1",
        "# TYPE envoy_server_state gauge",
    ):
        assert line in e.splitlines(), line
        assert line in s.splitlines(), line
    e2, s2 = both(pair, lambda p: get(p, "/stats?format=prometheus&filter=^server\\.live$")[1])
    assert e2 == s2


def test_clusters_json_and_text(pair):
    e, s = both(pair, lambda p: json.loads(get(p, "/clusters?format=json")[1]))
    ec, sc = e["cluster_statuses"][0], s["cluster_statuses"][0]
    assert set(ec) == set(sc)
    assert ec["circuit_breakers"] == sc["circuit_breakers"]
    eh, sh = ec["host_statuses"][0], sc["host_statuses"][0]
    assert set(eh) == set(sh)
    assert eh["address"] == sh["address"]
    assert eh["health_status"] == sh["health_status"] == {"eds_health_status": "HEALTHY"}
    assert [x["name"] for x in eh["stats"]] == [x["name"] for x in sh["stats"]]
    assert [x.get("type") for x in eh["stats"]] == [x.get("type") for x in sh["stats"]]

    def keys(p):
        return {re.sub(r"::\d+$", "::N", line) for line in get(p, "/clusters")[1].splitlines()}

    e, s = both(pair, keys)
    assert e == s


def test_listeners(pair):
    e, s = both(pair, lambda p: json.loads(get(p, "/listeners?format=json")[1]))
    assert keyshape(e) == keyshape(s)
    for d in (e, s):
        la = d["listener_statuses"][0]
        assert la["name"] == "ingress"
        assert la["local_address"]["socket_address"]["port_value"] > 0
    e, s = both(pair, lambda p: get(p, "/listeners")[1])
    assert re.fullmatch(r"ingress::127\.0\.0\.1:\d+\n", s)
    assert re.fullmatch(r"ingress::127\.0\.0\.1:\d+\n", e)


def test_config_dump(pair):
    def types(p, q=""):
        return [c["@type"] for c in json.loads(get(p, "/config_dump" + q)[1])["configs"]]

    e, s = both(pair, types)
    assert e == s
    e, s = both(pair, lambda p: types(p, "?include_eds"))
    assert e == s
    e, s = both(pair, lambda p: json.loads(get(p, "/config_dump?resource=static_clusters")[1]))
    assert [c["@type"] for c in e["configs"]] == [c["@type"] for c in s["configs"]]
    assert e["configs"][0]["cluster"] == s["configs"][0]["cluster"]
    e, s = both(pair, lambda p: json.loads(get(p, "/config_dump")[1]))
    lst = next(c for c in s["configs"] if c["@type"].endswith("ListenersConfigDump"))
    elst = next(c for c in e["configs"] if c["@type"].endswith("ListenersConfigDump"))
    assert keyshape(lst) == keyshape(elst)
    assert lst["static_listeners"][0]["listener"] == elst["static_listeners"][0]["listener"]
    routes = [c for c in s["configs"] if c["@type"].endswith("RoutesConfigDump")]
    eroutes = [c for c in e["configs"] if c["@type"].endswith("RoutesConfigDump")]
    assert keyshape(routes) == keyshape(eroutes)
    e, s = both(pair, lambda p: get(p, "/config_dump?resource=dynamic_active_clusters"))
    assert e == s == (200, "{}\n") or (
        e[0] == s[0] == 200 and json.loads(e[1]) == json.loads(s[1]) == {}
    )


def test_runtime_certs_memory_logging(pair):
    for path in ("/runtime", "/certs", "/memory"):
        e, s = both(pair, lambda p, path=path: json.loads(get(p, path)[1]))
        assert keyshape(e).keys() == keyshape(s).keys(), path
    e, s = both(pair, lambda p: post(p, "/logging"))
    assert e[0] == s[0] == 200
    assert e[1].startswith("active loggers:") and s[1].startswith("active loggers:")
    e, s = both(pair, lambda p: post(p, "/logging?level=bogus"))
    assert e[0] == s[0] == 400
    assert e[1].startswith("error: unknown logger level") and s[1].startswith(
        "error: unknown logger level"
    )
    e, s = both(pair, lambda p: get(p, "/stats?filter=(")[0])
    assert e == s == 400
    e, s = both(pair, lambda p: get(p, "/config_dump?resource=bogus"))
    assert e == s == (404, "bogus not found in config dump\n") or (e[0] == s[0] == 404)


def test_drain_listeners_keeps_server_live(tmp_path):
    """Own pair: draining stops the listeners, so it cannot share the module's processes."""
    upstream = free_port()
    ea, sa = free_port(), free_port()
    envoy = start_envoy(write_bootstrap(tmp_path / "e.yaml", admin=ea, upstream=upstream), ea)
    try:
        sm = start_sofamesh(
            write_bootstrap(tmp_path / "s.yaml", admin=sa, upstream=upstream),
            sa,
            "--concurrency",
            "1",
        )
        try:
            pair = {"envoy": ea, "sofamesh": sa}
            ports = both(pair, lambda p: int(get(p, "/listeners")[1].strip().rsplit(":", 1)[1]))
            assert (
                both(pair, lambda p: post(p, "/drain_listeners?inboundonly"))
                == ((200, "OK\n"),) * 2
            )
            assert both(pair, lambda p: post(p, "/drain_listeners")) == ((200, "OK\n"),) * 2
            for port in ports:  # stopped at once (not graceful): new connections refused
                deadline = time.monotonic() + 5
                while True:
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    except ConnectionRefusedError:
                        break
                    assert time.monotonic() < deadline, f"listener {port} still accepting"
                    time.sleep(0.05)
            e, s = both(pair, lambda p: get(p, "/ready"))
            assert e == s == (200, "LIVE\n")
            e, s = both(pair, lambda p: get(p, "/stats?filter=^server\\.state$")[1])
            assert e == s == "server.state: 0\n"
        finally:
            stop(sm)
    finally:
        stop(envoy)


def test_stats_type_filter(pair):
    def names(p, t):
        return {
            x.split(":")[0] for x in get(p, f"/stats?type={t}&filter=^server\\.")[1].splitlines()
        }

    for t in ("Counters", "Gauges"):
        e, s = both(pair, lambda p, t=t: names(p, t))
        assert {"server.state", "server.live"} & e == {"server.state", "server.live"} & s, t
    e, s = both(pair, lambda p: get(p, "/stats?type=Bogus")[0])
    assert e == s == 400


RUNTIME = """
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
layered_runtime:
  layers:
  - name: static_layer_0
    static_layer:
      overload: {{global_downstream_max_connections: 50000}}
      envoy.reloadable_features.foo: true
      ratio: 0.5
      x: "str"
  - name: admin
    admin_layer: {{}}
"""


def test_runtime_layers_and_runtime_modify(tmp_path):
    ea, sa = free_port(), free_port()
    (tmp_path / "e.yaml").write_text(RUNTIME.format(admin=ea))
    (tmp_path / "s.yaml").write_text(RUNTIME.format(admin=sa))
    envoy = start_envoy(tmp_path / "e.yaml", ea)
    try:
        sm = start_sofamesh(tmp_path / "s.yaml", sa, "--concurrency", "1")
        try:
            pair = {"envoy": ea, "sofamesh": sa}
            e, s = both(pair, lambda p: json.loads(get(p, "/runtime")[1]))
            assert e == s
            assert s["entries"]["overload.global_downstream_max_connections"]["final_value"] == (
                "50000"
            )
            e, s = both(pair, lambda p: post(p, "/runtime_modify?x=y&z=1"))
            assert e == s == (200, "OK\n")
            e, s = both(pair, lambda p: json.loads(get(p, "/runtime")[1]))
            assert e == s
            assert s["entries"]["x"] == {"layer_values": ["str", "y"], "final_value": "y"}
        finally:
            stop(sm)
    finally:
        stop(envoy)


def _garbage(port: int, data: bytes) -> tuple[str, bool]:
    """Sends `data` (no line end) and waits up to 2 s: the status line, and whether the
    admin closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(data)
        got = b""
        try:
            while chunk := s.recv(4096):
                got += chunk
            closed = True
        except TimeoutError:
            closed = False
    return got.split(b"\r\n")[0].decode("latin-1"), closed


@pytest.mark.parametrize(
    "data",
    [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b" GET / HTTP/1.1"],
    ids=["tls-hello", "leading-space"],
)
def test_garbage_is_refused_as_it_comes(pair, data):
    """A TLS ClientHello (someone speaking HTTPS to the admin port) or a request line that
    cannot begin a request: 400 and a close at once, without waiting for a line end."""
    envoy, ours = both(pair, lambda p: _garbage(p, data))
    assert envoy == ("HTTP/1.1 400 Bad Request", True)
    assert ours == envoy
