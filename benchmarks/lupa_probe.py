"""What Envoy's Lua cluster specifier would cost in an embedded Lua (lupa), per call: issue 15
asks for `inline_cluster_specifier_plugin` with Lua if lupa "measures acceptably".

    python -m venv /tmp/lupa && /tmp/lupa/bin/pip install lupa==2.8
    /tmp/lupa/bin/python benchmarks/lupa_probe.py

Runs the Lua source of Envoy's lua-cluster-specifier example (envoy_on_route reads one
request header through route_handle:headers():get() and returns a cluster name) against two
kinds of handle: Python objects Lua calls back into, and a handle built in Lua per call from
the one header value the route needs. Prints CPU microseconds per call (process time).
The probe that decided it; the built feature is sofamesh.proxy.lua_cluster (extra sofamesh[lua]),
measured end to end by benchmarks/lua_cluster.py and instr_per_request.py --lua.
"""

from __future__ import annotations

import time

import lupa  # type: ignore[import-not-found]
from lupa import LuaRuntime  # type: ignore[import-not-found]

SOURCE = """
function envoy_on_route(route_handle)
  local header_value = route_handle:headers():get("header_key")
  if header_value == "fake" then
    return "fake_service"
  end
  return "web_service"
end
"""
N = 200_000


class _Headers:
    __slots__ = ("h",)

    def __init__(self, h: dict) -> None:
        self.h = h

    def get(self, name: str):
        return self.h.get(name)


class _Handle:
    __slots__ = ("hs",)

    def __init__(self, h: dict) -> None:
        self.hs = _Headers(h)

    def headers(self) -> _Headers:
        return self.hs


def per_call(fn, arg_fn) -> float:
    t = time.process_time()
    for _ in range(N):
        fn(arg_fn())
    return (time.process_time() - t) / N * 1e6


def main() -> None:
    lua = LuaRuntime(unpack_returned_tuples=True)
    print("lupa", lupa.__version__, lua.lua_implementation)
    lua.execute(SOURCE)
    fn = lua.globals().envoy_on_route
    handle = _Handle({"header_key": "fake", ":path": "/"})
    assert fn(handle) == "fake_service"
    print(f"Python handle: {per_call(fn, lambda: handle):.2f} us per call")
    make = lua.eval(
        "function(v) return {headers=function(self) return {get=function(_, n)"
        " if n == 'header_key' then return v end end} end} end"
    )
    assert fn(make("fake")) == "fake_service"
    print(f"handle built in Lua: {per_call(fn, lambda: make('fake')):.2f} us per call")


if __name__ == "__main__":
    main()
