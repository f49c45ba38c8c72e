"""The Lua cluster specifier (envoy.router.cluster_specifier_plugin.lua), Envoy 1.40 against
`sofamesh proxy` on the same config and traffic: an inline plugin and a named one
(RouteConfiguration.cluster_specifier_plugins) route each request to one of two clusters,
each on its own upstream. Every request's answer (status, headers, body) and the upstream
that got it must agree, through the script's paths: a header names the cluster, nil / a
table / a run-time error give default_cluster, a number is coerced, an unknown cluster is
the router's 503 (NC), repeated headers are joined, names are case-insensitive, pseudo
headers and getCluster() read. Load-time failures (syntax, top-level error, no
envoy_on_route) are rejected by both."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import envoy_binary, sofamesh_command
from tests.integration.http_filters.conftest import (
    VOLATILE,
    ScriptedUpstream,
    Side,
    _distinct,
    bootstrap,
    typed,
)
from tests.support.envoy import ProxyProcess

pytestmark = pytest.mark.envoy

LUA_TYPE = "envoy.extensions.router.cluster_specifiers.lua.v3.LuaConfig"
SCRIPT = """
function envoy_on_route(route_handle)
  local h = route_handle:headers()
  local want = h:get("x-cluster")
  if want == "error" then error("boom") end
  if want == "nil" then return nil end
  if want == "table" then return {} end
  if want == "number" then return 7 end
  if want == "indirect" then return h:get(h:get("x-name")) end
  if want == "upper" then return h:get("X-Other") end
  if want == "path" then
    if h:get(":path") == "/named/other" then return "other" end
    return "backend"
  end
  if want == "count" then
    local c = route_handle:getCluster("other")
    if c ~= nil and route_handle:getCluster("nope") == nil and c:numPendingRequests() == 0 then
      return "other"
    end
    return "missing"
  end
  if want == "badget" then return h:get({}) end
  if want == "assign" then
    route_handle.cluster = "backend"
    return "backend"
  end
  if want == "assign-headers" then
    h.get = nil
    return "backend"
  end
  if want == "scheme" then
    if h:get(":scheme") == "http" and h:get(":method") == "GET" then return "other" end
    return "backend"
  end
  return want or "backend"
end
"""
# (x-cluster, extra headers): the traffic sent to both routes
CASES: list[tuple[str | None, list[tuple[str, str]]]] = [
    (None, []),
    ("other", []),
    ("backend", []),
    ("missing", []),  # no such cluster: the router's no_cluster answer
    ("error", []),  # run-time error: default_cluster
    ("nil", []),
    ("table", []),
    ("number", []),  # "7": no such cluster
    ("indirect", [("x-name", "x-other"), ("x-other", "other")]),
    ("upper", [("x-other", "other")]),
    ("upper", [("x-other", "other"), ("x-other", "backend")]),  # "other,backend"
    ("path", []),
    ("count", []),
    ("badget", []),  # a bad argument to get(): a run-time error
    ("scheme", []),
    ("assign", []),  # the handle is read-only (Envoy's userdata): a run-time error
    ("assign-headers", []),
    (None, []),  # and the next request is routed as the first was
]


def _lua(code: str, default: str = "other") -> dict:
    return {
        "name": "envoy.router.cluster_specifier_plugin.lua",
        "typed_config": typed(
            LUA_TYPE, source_code={"inline_string": code}, default_cluster=default
        ),
    }


def _boot(port: int, admin: int, up_a: int, up_b: int, code: str = SCRIPT) -> dict:
    vh = {
        "routes": [
            {
                "match": {"prefix": "/named"},
                "route": {"cluster_specifier_plugin": "envoy.router.cluster_specifier_plugin.lua"},
            },
            {
                "match": {"prefix": "/"},
                "route": {"inline_cluster_specifier_plugin": {"extension": _lua(code)}},
            },
        ]
    }
    boot = bootstrap(port, admin, up_a, [], virtual_host=vh)
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"]["cluster_specifier_plugins"] = [{"extension": _lua(code)}]
    other = copy.deepcopy(boot["static_resources"]["clusters"][0])
    other["name"] = other["load_assignment"]["cluster_name"] = "other"
    sa = other["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    sa["socket_address"]["port_value"] = up_b
    boot["static_resources"]["clusters"].append(other)
    return boot


class _Proxy:
    def __init__(self, kind: str, work: Path) -> None:
        self.a = ScriptedUpstream().start()
        self.b = ScriptedUpstream().start()
        port, admin = _distinct(2, {self.a.port, self.b.port})
        boot = _boot(port, admin, self.a.port, self.b.port)
        if kind == "envoy":
            proc = ProxyProcess.envoy(envoy_binary(), boot, work)
        else:
            proc = ProxyProcess.sofamesh(sofamesh_command(), boot, work)
        self.side = Side(kind, port, admin, proc, self.a)
        proc.start()

    def send(self, path: str, headers: list[tuple[str, str]]) -> tuple:
        na, nb = len(self.a.records), len(self.b.records)
        r = self.side.request("GET", path, [("host", "example.com"), *headers])
        got = ("a" if len(self.a.records) > na else "") + ("b" if len(self.b.records) > nb else "")
        return r.status, sorted((k, v) for k, v in r.headers if k not in VOLATILE), r.body, got

    def stop(self) -> None:
        self.side.proc.stop()
        self.a.stop()
        self.b.stop()


def test_lua_cluster_specifier_routes_like_envoy(tmp_path):
    started: list[_Proxy] = []
    try:
        envoy = _Proxy("envoy", tmp_path / "envoy")
        started.append(envoy)
        ours = _Proxy("sofamesh", tmp_path / "sofamesh")
        started.append(ours)
        seen = []
        for path in ("/inline", "/named/other"):
            for want, extra in CASES:
                hs = ([("x-cluster", want)] if want else []) + extra
                e = envoy.send(path, hs)
                o = ours.send(path, hs)
                assert o == e, (path, want, extra)
                seen.append((path, want, o[0], o[3]))
        # the comparison covered every outcome: each upstream, and the no-cluster 503
        assert ("/inline", None, 200, "a") in seen
        assert ("/inline", "other", 200, "b") in seen
        assert ("/inline", "error", 200, "b") in seen  # default_cluster
        assert ("/inline", "nil", 200, "b") in seen
        assert ("/inline", "missing", 503, "") in seen
        assert ("/inline", "number", 503, "") in seen
        assert ("/named/other", "path", 200, "b") in seen
        assert ("/inline", "count", 200, "b") in seen
        assert ("/inline", "scheme", 200, "b") in seen
        assert ("/inline", "assign-headers", 200, "b") in seen
        es, os_ = envoy.side.stats(), ours.side.stats()
        for k in ("http.ingress.no_cluster", "http.ingress.downstream_rq_2xx"):
            assert os_.get(k) == es.get(k), k
        # sofamesh counts what Envoy only logs: 2 routes x (error, badget, assign,
        # assign-headers) and (nil, table)
        assert os_["cluster_specifier.lua.script_error"] == 8
        assert os_["cluster_specifier.lua.non_string_return"] == 4
        assert ours.side.request("GET", "/", [("host", "x")]).status == 200  # still serving
    finally:
        for p in started:
            p.stop()


BAD = {
    "syntax": ("function envoy_on_route(h)\n  return 'a' +\nend\n", "script load error"),
    "top-level error": ("error('top')\nfunction envoy_on_route(h) return 'a' end\n", "top"),
    "no envoy_on_route": (
        "function other(h) return 'a' end\n",
        "envoy_on_route() function not found",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_script_rejected_by_both(case, tmp_path):
    code, reason = BAD[case]
    boot = _boot(10000, 10001, 10002, 10003, code)
    cfg = tmp_path / "bootstrap.yaml"
    cfg.write_text(yaml.safe_dump(boot))
    e = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    o = subprocess.run(
        [*sofamesh_command(), "proxy", "--mode", "validate", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert e.returncode != 0 and reason in e.stdout + e.stderr, e.stderr[-2000:]
    assert o.returncode != 0, o.stdout + o.stderr
    out = o.stdout + o.stderr
    assert reason in out and "source_code" in out, out[-2000:]
    if case == "syntax":  # the same Lua message, the same chunk name
        msg = '[string "function envoy_on_route(h)..."]:3: unexpected symbol'
        assert msg in e.stderr and msg in out


def test_lua_cluster_specifier_over_h2_like_envoy(tmp_path):
    """The same script for HTTP/2 requests (HPACK-decoded header lists, pseudo-headers)."""
    from tests.support.h2raw import END_HEADERS, END_STREAM, H2Client, headers, req

    def h2(p: _Proxy, path: str, extra: list[tuple[str, str]]) -> tuple:
        na, nb = len(p.a.records), len(p.b.records)
        with H2Client(p.side.port) as c:
            c.handshake()
            fields = req("GET", path, "example.com") + extra
            c.send(headers(1, c.block(fields), END_STREAM | END_HEADERS))
            o = c.outcome(1)
        assert o.kind == "response", o
        hs = sorted((k, v) for k, v in o.response_headers or [] if k not in VOLATILE)
        got = ("a" if len(p.a.records) > na else "") + ("b" if len(p.b.records) > nb else "")
        return hs, o.body, got

    started: list[_Proxy] = []
    try:
        envoy = _Proxy("envoy", tmp_path / "envoy")
        started.append(envoy)
        ours = _Proxy("sofamesh", tmp_path / "sofamesh")
        started.append(ours)
        gots = set()
        for want, extra in CASES:
            hs = ([("x-cluster", want)] if want else []) + extra
            e = h2(envoy, "/inline", hs)
            o = h2(ours, "/inline", hs)
            assert o == e, (want, extra)
            gots.add(o[2])
        assert gots == {"a", "b", ""}  # both upstreams and the no-cluster answer
    finally:
        for p in started:
            p.stop()


def _rds(script: str) -> dict:
    from tests.integration.xds.test_config_sources import RDS

    name = "envoy.router.cluster_specifier_plugin.lua"
    return {
        "@type": RDS,
        "name": "local",
        "cluster_specifier_plugins": [{"extension": _lua(script, default="a")}],
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster_specifier_plugin": name}}],
            }
        ],
    }


@pytest.mark.parametrize("kind", ["envoy", "sofamesh", "sofamesh-2-workers"])
def test_rds_updates_replace_the_script(tmp_path, kind):
    """Routes from RDS (a watched file) with a named plugin: a new version's script routes
    the next requests (its virtual host's bytes did not change: only the plugin did), and a
    script that does not load is an RDS rejection, the last good one serving on."""
    from tests.conftest import free_port
    from tests.integration.xds.test_config_sources import (
        bootstrap as xds_bootstrap,
    )
    from tests.integration.xds.test_config_sources import (
        eventually,
        listener,
        move_into_place,
        response,
        start,
        stat,
        static_cluster,
        who,
    )
    from tests.support.http_upstream import RecordingUpstream

    ups = RecordingUpstream(["alpha", "beta"]).start()
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    lport, admin = free_port(), free_port()
    rds = cfg / "rds.yaml"
    rds_src = {"path_config_source": {"path": str(rds)}}
    (cfg / "lds.yaml").write_text(response(listener(lport, rds_src), version="l1"))
    to = 'function envoy_on_route(h) return "{}" end\n'
    rds.write_text(response(_rds(to.format("a")), version="r1"))
    boot = xds_bootstrap(
        admin,
        {"lds_config": {"path": str(cfg / "lds.yaml")}},
        [
            {k: v for k, v in static_cluster(n, ups.ports[u]).items() if k != "@type"}
            for n, u in (("a", "alpha"), ("b", "beta"))
        ],
    )
    proxy = start(kind, boot, tmp_path / kind)
    try:
        assert eventually(lambda: who(lport), "alpha") == "alpha"
        move_into_place(rds, response(_rds(to.format("b")), version="r2"))
        assert eventually(lambda: who(lport), "beta") == "beta"
        assert all(who(lport) == "beta" for _ in range(6))  # every worker took it
        move_into_place(rds, response(_rds("function envoy_on_route(h"), version="r3"))
        assert eventually(lambda: stat(admin, "http.ingress.rds.local.update_rejected"), 1) == 1
        assert all(who(lport) == "beta" for _ in range(6))
    finally:
        proxy.stop()
        ups.stop()
