"""The overload manager (issue 13): its resource monitors and actions.

`envoy.resource_monitors.fixed_heap` (`max_heap_size_bytes`) with threshold-triggered
actions, refreshed every `refresh_interval` (default 1 s, as Envoy): the pressure is this
process's resident memory (RSS, /proc/self/statm) over the maximum (Envoy counts tcmalloc's
heap; a Python process's memory is its RSS). Gauges as Envoy's:
`overload.envoy.resource_monitors.fixed_heap.pressure` (percent) and per action
`overload.<action>.active` (0 or 1) and `.scale_percent` (0 or 100). Actions:
- `envoy.overload_actions.stop_accepting_requests`: every HTTP/1.1 and HTTP/2 request gets
  Envoy's 503 "envoy overloaded" (response flag OM, `http.<prefix>.downstream_rq_overload_close`);
- `envoy.overload_actions.disable_http_keepalive`: HTTP/1.1 responses close the connection
  (`http.<prefix>.downstream_cx_overload_disable_keepalive`);
- `envoy.overload_actions.shrink_heap`: a full garbage collection and malloc_trim once a
  refresh while active.
Scaled triggers, other monitors and actions are refused by name.

`envoy.resource_monitors.global_downstream_max_connections`: at most
`max_active_downstream_connections` downstream connections open across all listeners.

As Envoy 1.40 does it (tcp_listener_impl.cc, rejectCxOverGlobalLimit): a connection
accepted while the limit's connections are open is closed at once, before any filter sees
it (no `downstream_cx_total`, no network filter), and counted in
`listener.<stat name>.downstream_global_cx_overflow` of the listener that accepted it. A
listener with `ignore_global_conn_limit` neither is limited nor counts. The admin listener
is not limited (Envoy's admin runs outside the workers' accounting too). Envoy's
`overload.<monitor>.pressure` of this proactive monitor stays 0 (admin/handlers.py).

How connections are counted: the listener's protocol factory hands each accepted transport
to `_Admit`, which either closes it or records it in `live` and gives it the listener's own
protocol (`set_protocol`): nothing sits in the data path. Closed transports
(`is_closing()`) are dropped from `live` when the limit is reached and every
`_PRUNE_EVERY` admissions, so a connection counts until its socket is being closed.

With `--concurrency N > 1` each worker process would count only its own connections, so a
limit that can be reached (below the hard open-file limit, which no process passes; see
config/support.py) is refused there by name.
"""

from __future__ import annotations

import os
from typing import Any

from sofamesh.proxy.errors import UnsupportedConfig

MONITOR = "envoy.resource_monitors.global_downstream_max_connections"
_CONFIG = "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
_PRUNE_EVERY = 256
HEAP = "envoy.resource_monitors.fixed_heap"
_HEAP_CONFIG = "envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig"
# action -> the HcmConfig flag it sets (None: handled by HeapManager itself)
ACTIONS = {
    "envoy.overload_actions.stop_accepting_requests": "overload_reject",
    "envoy.overload_actions.disable_http_keepalive": "overload_no_keepalive",
    "envoy.overload_actions.shrink_heap": None,
}


def _fd_hard_limit() -> int:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return hard if hard != resource.RLIM_INFINITY else 2**63


class GlobalConnections:
    """The open downstream connections of every listener of one Server."""

    def __init__(self, limit: int):
        self.limit = limit
        self.live: set[Any] = set()  # the admitted transports (asyncio / uvloop)
        self._admitted = 0

    def open_connections(self) -> int:
        self._prune()
        return len(self.live)

    def _prune(self) -> None:
        self.live = {t for t in self.live if not t.is_closing()}

    def wrap(self, factory: Any, overflow: Any) -> Any:
        """A protocol factory admitting each connection (or closing it, counted in the
        `overflow` Counter) before `factory`'s protocol gets it."""

        def admit() -> _Admit:
            return _Admit(self, factory, overflow)

        return admit


class _Admit:
    __slots__ = ("factory", "gc", "overflow")

    def __init__(self, gc: GlobalConnections, factory: Any, overflow: Any):
        self.gc = gc
        self.factory = factory
        self.overflow = overflow

    def connection_made(self, transport: Any) -> None:
        gc = self.gc
        if len(gc.live) >= gc.limit:
            gc._prune()
            if len(gc.live) >= gc.limit:
                self.overflow.value += 1
                self.overflow.used = True
                transport.close()  # Envoy closes the accepted socket before reading it
                return
        gc.live.add(transport)
        gc._admitted += 1
        if gc._admitted % _PRUNE_EVERY == 0:
            gc._prune()
        inner = self.factory()
        transport.set_protocol(inner)
        inner.connection_made(transport)

    # a closed (rejected) connection's remaining events
    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Any) -> None:
        pass

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


def from_bootstrap(bootstrap: Any, options: Any) -> GlobalConnections | None:
    """The Server's global connection limit, or None when there is none to enforce (no
    monitor, or one whose limit is at least the hard open-file limit)."""
    from envoy.extensions.resource_monitors.downstream_connections.v3 import (
        downstream_connections_pb2,
    )

    out = None
    for i, mon in enumerate(bootstrap.overload_manager.resource_monitors):
        path = f"overload_manager.resource_monitors[{i}]"
        if mon.name == HEAP:
            continue  # HeapManager
        msg = downstream_connections_pb2.DownstreamConnectionsConfig()
        if mon.name != MONITOR or not mon.typed_config.Unpack(msg):
            raise UnsupportedConfig(
                f"{path}: only {MONITOR} with {_CONFIG} and {HEAP} with {_HEAP_CONFIG} "
                "are implemented by sofamesh"
            )
        limit = msg.max_active_downstream_connections
        if limit < 1:
            raise UnsupportedConfig(f"{path}.max_active_downstream_connections: at least 1")
        if limit >= _fd_hard_limit():
            continue  # never reached: every connection holds a file descriptor
        workers = int(getattr(options, "concurrency", 1) or 1)
        if workers > 1:
            raise UnsupportedConfig(
                f"{path}: {MONITOR} with a limit below the open-file limit is implemented by "
                f"sofamesh with --concurrency 1 only (with {workers} worker processes each "
                "would count its own connections)"
            )
        out = GlobalConnections(limit)
    return out


class HeapManager:
    """fixed_heap and its threshold-triggered actions, for one Server (see the module doc)."""

    def __init__(self, server: Any, max_bytes: int, interval: float, actions: list) -> None:
        self.server = server
        self.max_bytes = max_bytes
        self.interval = interval
        self.actions = actions  # [(name, threshold)]
        st = server.stats
        self.pressure = st.gauge(f"overload.{HEAP}.pressure")
        self.pressure.used = True
        self.active: dict[str, tuple[Any, Any]] = {}
        for name, _ in actions:
            a, sp = st.gauge(f"overload.{name}.active"), st.gauge(f"overload.{name}.scale_percent")
            a.used = sp.used = True
            self.active[name] = (a, sp)
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._handle: Any = None

    @classmethod
    def from_bootstrap(cls, server: Any, bootstrap: Any) -> HeapManager | None:
        from envoy.extensions.resource_monitors.fixed_heap.v3 import fixed_heap_pb2

        om = bootstrap.overload_manager
        max_bytes = 0
        for i, mon in enumerate(om.resource_monitors):
            if mon.name != HEAP:
                continue
            msg = fixed_heap_pb2.FixedHeapConfig()
            if not mon.typed_config.Unpack(msg):
                raise UnsupportedConfig(
                    f"overload_manager.resource_monitors[{i}].typed_config: expected {_HEAP_CONFIG}"
                )
            if msg.max_heap_size_bytes < 1:
                raise UnsupportedConfig(
                    f"overload_manager.resource_monitors[{i}].max_heap_size_bytes: at least 1"
                )
            max_bytes = msg.max_heap_size_bytes
        actions = []
        monitors = {m.name for m in om.resource_monitors}
        for i, act in enumerate(om.actions):
            path = f"overload_manager.actions[{i}]"
            if act.name not in ACTIONS:
                raise UnsupportedConfig(
                    f"{path}.name: {act.name!r} is not implemented by sofamesh "
                    f"(implemented: {', '.join(sorted(ACTIONS))})"
                )
            for j, trig in enumerate(act.triggers):
                if trig.name not in monitors:
                    raise UnsupportedConfig(
                        f"{path}.triggers[{j}].name: unknown resource monitor {trig.name!r}"
                    )
                if trig.name != HEAP or not trig.HasField("threshold"):
                    raise UnsupportedConfig(
                        f"{path}.triggers[{j}]: only threshold triggers on {HEAP} are "
                        "implemented by sofamesh"
                    )
                actions.append((act.name, trig.threshold.value))
        if not max_bytes:
            return None
        interval = 1.0
        if om.HasField("refresh_interval"):
            d = om.refresh_interval
            interval = max(d.seconds + d.nanos / 1e9, 0.01)
        return cls(server, max_bytes, interval, actions)

    def start(self, loop: Any) -> None:
        self._loop = loop
        self._tick()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def rss(self) -> int:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * self._page

    def _tick(self) -> None:
        pressure = self.rss() / self.max_bytes
        self.pressure.value = int(min(pressure, 1.0) * 100)
        on: dict[str, bool] = {}
        for name, threshold in self.actions:
            on[name] = on.get(name, False) or pressure >= threshold
        flags = {attr: False for attr in ACTIONS.values() if attr}
        for name, active in on.items():
            a, sp = self.active[name]
            a.value, sp.value = int(active), 100 if active else 0
            attr = ACTIONS[name]
            if attr and active:
                flags[attr] = True
            if name.endswith("shrink_heap") and active:
                _shrink()
        for cfg in hcm_configs(self.server):
            for attr, value in flags.items():
                setattr(cfg, attr, value)
        self._handle = self._loop.call_later(self.interval, self._tick)


def hcm_configs(server: Any) -> list:
    """Every HTTP connection manager the Server's listeners (static and LDS) serve."""
    from sofamesh._core.hcm_config import HcmConfig

    out: list = []

    def visit(v: Any) -> None:
        if isinstance(v, HcmConfig):
            out.append(v)
        elif hasattr(v, "views"):
            for x in v.views():
                visit(x)
        elif hasattr(v, "parts"):
            for x in v.parts:
                visit(x)

    for li in server.listeners:
        visit(li.hcm)
    dyn = getattr(server, "dynamic", None)
    for dl in (getattr(dyn, "active_listeners", None) or {}).values():
        visit(dl.view)
    return out


def _shrink() -> None:
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
