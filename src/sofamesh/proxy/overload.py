"""The overload manager's envoy.resource_monitors.global_downstream_max_connections: at most
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

from typing import Any

from sofamesh.proxy.errors import UnsupportedConfig

MONITOR = "envoy.resource_monitors.global_downstream_max_connections"
_CONFIG = "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
_PRUNE_EVERY = 256


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
        msg = downstream_connections_pb2.DownstreamConnectionsConfig()
        if mon.name != MONITOR or not mon.typed_config.Unpack(msg):
            raise UnsupportedConfig(
                f"{path}: only {MONITOR} with {_CONFIG} is implemented by sofamesh"
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
