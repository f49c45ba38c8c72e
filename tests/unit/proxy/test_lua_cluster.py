"""The Lua cluster specifier's route handle (proxy/lua_cluster.py, _core/lua_route.pyx)
without sockets: what the script reads and what its answers become. The same behaviour is
compared with Envoy 1.40 in tests/integration/http_filters/test_lua_cluster_specifier.py."""

from __future__ import annotations

import gc
import resource
import sys
import weakref

import pytest

from sofamesh._core.headers import HeaderList
from sofamesh._core.stats import Store
from sofamesh.proxy.errors import UnsupportedConfig
from sofamesh.proxy.lua_cluster import lua_route

SCRIPT = """
function envoy_on_route(rh)
  local h = rh:headers()
  local w = h:get("X-Cluster")
  if w == "error" then error("boom") end
  if w == "nil" then return nil end
  if w == "table" then return {} end
  if w == "number" then return 7 end
  if w == "indirect" then return h:get(h:get("x-name")) end
  if w == "path" then return h:get(":path") .. h:get(":method") .. h:get(":authority") end
  if w == "count" then
    local c = rh:getCluster("backend")
    if rh:getCluster("nope") ~= nil then return "wrong" end
    return c:numConnections() .. "/" .. c:numRequests() .. "/" .. c:numPendingRequests()
  end
  return w or "backend"
end
"""


class _Cluster:
    cx_active, rq_active, pending_active = 3, 2, 1


def _headers(*pairs: tuple[bytes, bytes]) -> HeaderList:
    return HeaderList(list(pairs), method=b"GET", path=b"/p", authority=b"a.example")


@pytest.fixture
def route_and_stats():
    store = Store()
    return lua_route(SCRIPT, "fallback", "rc", store), store


@pytest.mark.parametrize(
    ("headers", "want"),
    [
        ((), "backend"),
        (((b"x-cluster", b"other"),), "other"),
        (((b"x-cluster", b"a"), (b"x-cluster", b"b")), "a,b"),  # values joined as Envoy's get
        (((b"x-cluster", b"number"),), "7"),  # a number is coerced to its string
        (((b"x-cluster", b"indirect"), (b"x-name", b"X-Other"), (b"x-other", b"o")), "o"),
        (((b"x-cluster", b"path"),), "/pGETa.example"),  # pseudo-headers through the callback
        (((b"x-cluster", b"count"),), "3/2/1"),
        (((b"x-cluster", b"error"),), "fallback"),
        (((b"x-cluster", b"nil"),), "fallback"),
        (((b"x-cluster", b"table"),), "fallback"),
    ],
)
def test_script_answers(route_and_stats, headers, want):
    route, _ = route_and_stats
    assert route.cluster(_headers(*headers), {"backend": _Cluster()}) == want
    assert route.headers is None and route.clusters is None  # nothing kept past the request


def test_failures_counted_and_serving_goes_on(route_and_stats):
    route, store = route_and_stats
    for v in (b"error", b"nil", b"table", b"error"):
        assert route.cluster(_headers((b"x-cluster", v)), {}) == "fallback"
    assert store.counter("cluster_specifier.lua.script_error").value == 2
    assert store.counter("cluster_specifier.lua.non_string_return").value == 2
    assert route.cluster(_headers(), {}) == "backend"


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("function envoy_on_route(h) return 'a' +\nend\n", "script load error: [string"),
        ("error('top')\nfunction envoy_on_route(h) return 'a' end\n", ":1: top"),
        ("envoy_on_route = 5\n", "envoy_on_route() function not found"),
    ],
)
def test_load_failures_refuse_the_config(code, reason):
    with pytest.raises(UnsupportedConfig) as e:
        lua_route(code, "d", "rc.route")
    assert str(e.value).startswith("rc.route.source_code: ") and reason in str(e.value)


def test_without_lupa_refused_by_name(monkeypatch):
    import lupa

    for mod in ("luajit21", "lua51"):  # as if neither could be imported
        monkeypatch.setitem(sys.modules, f"lupa.{mod}", None)
        monkeypatch.delattr(lupa, mod, raising=False)
    with pytest.raises(UnsupportedConfig, match=r"needs the lupa package .*sofamesh\[lua\]"):
        lua_route(SCRIPT, "d", "rc")


def test_a_replaced_route_frees_its_runtime():
    """Routes are rebuilt on every RDS update: the old script's runtime must go with them."""
    src = 'local big = string.rep("x", 8000000)\nfunction envoy_on_route(h) return "a" end\n'
    r = lua_route(src, "d", "rc")
    ref = weakref.ref(r)
    del r
    gc.collect()
    assert ref() is None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(50):  # 400 MB if each runtime stayed
        lua_route(src, "d", "rc")
    gc.collect()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB
