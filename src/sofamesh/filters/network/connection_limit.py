"""envoy.filters.network.connection_limit: at most `max_connections` open connections on a
filter chain, as Envoy 1.40 counts them.

Placed before a terminal network filter (tcp_proxy, dubbo_proxy, bolt_proxy, auto), it sees
each connection when it is accepted (Envoy's onNewConnection):

    accepted --> active_connections += 1
              +- open < max_connections --> open += 1, the terminal filter gets it
              +- else --> limited_connections += 1, open += 1 (Envoy counts the rejected
                          connection until it is closed), its bytes are dropped, and it is
                          closed without flushing now, or after `delay` when one is set
    closed   --> open -= 1, active_connections -= 1

Stats: `connection_limit.<stat_prefix>.limited_connections` (counter) and
`connection_limit.<stat_prefix>.active_connections` (gauge). The count is per filter
config, as Envoy's (shared by all of the process's connections on that chain); with
`--concurrency N > 1` it is one `ratelimit.SharedCount` in the memory every worker maps
(keyed by the filter's config path), so the workers together admit `max_connections`, as
Envoy's share one atomic. Each worker's gauge counts its own; /stats sums them. Not
implemented: `runtime_enabled` (refused), in front of an http_connection_manager (refused
by the server).
"""

from __future__ import annotations

from typing import Any

from sofamesh.filters.registry import FilterSpec, register
from sofamesh.proxy.errors import UnsupportedConfig

NAME = "envoy.filters.network.connection_limit"
TYPE_URL = (
    "type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit"
)


class ConnectionLimit:
    """One filter config: the open-connection count of every connection on its chain."""

    def __init__(
        self, store: Any, stat_prefix: str, max_connections: int, delay: float, loop, count: Any
    ):
        base = f"connection_limit.{stat_prefix}."
        self.limited = store.counter(base + "limited_connections")
        self.active = store.gauge(base + "active_connections")
        self.max = max_connections
        self.delay = delay  # seconds; 0: close at once
        self.loop = loop
        # Envoy's `connections_`: admitted plus rejected-but-not-yet-closed (ratelimit.SharedCount)
        self.open = count

    def wrap(self, factory: Any) -> Any:
        """A protocol factory putting a limit gate in front of `factory`'s protocols."""

        def gated() -> LimitGate:
            return LimitGate(self, factory())

        return gated


class LimitGate:
    """An asyncio protocol in front of the chain's own: counts the connection and either
    passes every event through or drops it until the connection is closed."""

    __slots__ = ("cfg", "inner", "rejected", "timer")

    def __init__(self, cfg: ConnectionLimit, inner: Any):
        self.cfg = cfg
        self.inner = inner
        self.rejected = False
        self.timer: Any = None

    def connection_made(self, transport: Any) -> None:
        cfg = self.cfg
        g = cfg.active
        g.value += 1
        g.used = True
        if cfg.open.acquire() < cfg.max:
            self.inner.connection_made(transport)
            return
        self.rejected = True
        c = cfg.limited
        c.value += 1
        c.used = True
        transport.pause_reading()  # Envoy stops iteration: nothing is read, nothing sent
        if cfg.delay > 0:
            self.timer = cfg.loop.call_later(cfg.delay, transport.abort)
        else:
            transport.abort()  # NoFlush

    def data_received(self, data: bytes) -> None:
        if not self.rejected:
            self.inner.data_received(data)

    def eof_received(self) -> bool:
        if self.rejected:
            return False
        return self.inner.eof_received()

    def connection_lost(self, exc: Any) -> None:
        cfg = self.cfg
        cfg.open.release()
        cfg.active.value -= 1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.rejected:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if not self.rejected:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if not self.rejected:
            self.inner.resume_writing()


def factory(typed_config: Any, context: dict) -> ConnectionLimit:
    from envoy.extensions.filters.network.connection_limit.v3 import connection_limit_pb2

    path = f"{context.get('path', NAME)}.typed_config"
    msg = connection_limit_pb2.ConnectionLimit()
    if not typed_config.Unpack(msg):
        raise UnsupportedConfig(f"{path}: expected {TYPE_URL}")
    if not msg.stat_prefix:
        raise UnsupportedConfig(f"{path}.stat_prefix: required")
    if not msg.HasField("max_connections") or msg.max_connections.value < 1:
        raise UnsupportedConfig(f"{path}.max_connections: required, at least 1")
    if msg.HasField("runtime_enabled"):
        raise UnsupportedConfig(f"{path}.runtime_enabled is not implemented by sofamesh")
    delay = msg.delay.seconds + msg.delay.nanos / 1e9 if msg.HasField("delay") else 0.0
    from sofamesh.proxy.overload import shared_count

    options = getattr(context.get("server"), "options", None)
    count = shared_count(f"{NAME}|{context.get('path', NAME)}", options)
    return ConnectionLimit(
        context["stats"], msg.stat_prefix, msg.max_connections.value, delay, context["loop"], count
    )


SPEC = register(
    FilterSpec(
        kind="network", names=(NAME,), type_urls=(TYPE_URL,), factory=factory, extra={"wraps": True}
    )
)
