"""The overload manager (issue 13): its resource monitors and actions.

The heap monitor and the actions are in proxy/overload_actions.py.

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
to `_Admit`, which either closes it or counts it and gives it the listener's own protocol
(`set_protocol`): nothing sits in the data path. The count is a `ratelimit.SharedCount`:
with `--concurrency N > 1` one total in the memory every worker maps, taken with a
compare-and-swap as Envoy's workers take their shared atomic (so N workers together admit
the limit, not N times it). A connection is released when its transport is freed (a
`weakref.finalize`, which uvloop's transports allow; they are freed as they close), or,
at the latest, when a prune finds it closing: on reaching the limit, every
`_PRUNE_EVERY` admissions, and with workers every `_POLL_S` while the total is at the
limit (so a connection one worker closed frees its place for another). A worker that
crashed leaves its part of the count, which its successor takes back as it starts
(`SharedCount`).
"""

from __future__ import annotations

import weakref
from typing import Any

from sofamesh.proxy.errors import UnsupportedConfig

MONITOR = "envoy.resource_monitors.global_downstream_max_connections"
_CONFIG = "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
_PRUNE_EVERY = 256
_POLL_S = 0.02
_RETRY_S = 3 * _POLL_S
HEAP = "envoy.resource_monitors.fixed_heap"
_HEAP_CONFIG = "envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig"


def _fd_hard_limit() -> int:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return hard if hard != resource.RLIM_INFINITY else 2**63


class GlobalConnections:
    """The open downstream connections of every listener of one Server (of every worker's,
    with a shared `count`)."""

    def __init__(self, limit: int, count: Any = None):
        from sofamesh._core.ratelimit import SharedCount

        self.limit = limit
        self.count = SharedCount("overload.global_cx") if count is None else count
        # the admitted transports' finalizers (weakref.finalize: released once, when the
        # transport is freed or when a prune finds it closing), by a serial number
        self.live: dict[int, Any] = {}
        self._admitted = 0
        self._poll: Any = None
        self.loop: Any = None  # with workers (start)

    def open_connections(self) -> int:
        self._prune()
        return int(self.count.value)

    def _release(self, serial: int) -> None:
        if self.live.pop(serial, None) is not None:
            self.count.release()

    def _prune(self) -> None:
        for fin in list(self.live.values()):
            held = fin.peek()
            if held is None or held[0].is_closing():
                fin()  # (at most once: the finalizer is then dead)

    def admit(self, transport: Any) -> bool:
        if not self.count.try_acquire(self.limit):
            self._prune()
            if not self.count.try_acquire(self.limit):
                return False
        self._admitted += 1
        fin = weakref.finalize(transport, self._release, self._admitted)
        fin.atexit = False  # (nothing to release at interpreter exit)
        self.live[self._admitted] = fin
        if self._admitted % _PRUNE_EVERY == 0:
            self._prune()
        return True

    def start(self, loop: Any) -> None:
        """With workers: release closed connections soon once the total is at the limit."""
        if self.count.shared and self._poll is None:
            self.loop = loop
            self._poll = loop.call_later(_POLL_S, self._tick, loop)

    def _tick(self, loop: Any) -> None:
        if self.live and self.count.value >= self.limit:
            self._prune()
        self._poll = loop.call_later(_POLL_S, self._tick, loop)

    def stop(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
            self._poll = None
        self.loop = None
        for fin in list(self.live.values()):
            fin()

    def wrap(self, factory: Any, overflow: Any) -> Any:
        """A protocol factory admitting each connection (or closing it, counted in the
        `overflow` Counter) before `factory`'s protocol gets it."""

        def admit() -> _Admit:
            return _Admit(self, factory, overflow)

        return admit


class Refused:
    """The protocol of a connection closed as it was accepted: its last events ignored."""

    __slots__ = ()

    def connection_made(self, transport: Any) -> None:
        transport.close()

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


class _Admit(Refused):
    __slots__ = ("buf", "eof", "factory", "gc", "overflow", "waiting")

    def __init__(self, gc: GlobalConnections, factory: Any, overflow: Any):
        self.gc = gc
        self.factory = factory
        self.overflow = overflow
        self.buf: list[bytes] | None = None  # a late admission: what resume_reading read
        self.eof = False
        self.waiting: Any = None  # the transport, while a late admission is decided

    def connection_made(self, transport: Any) -> None:
        if self.gc.admit(transport):
            self._serve(transport)
        elif self.gc.loop is not None:
            # the other workers release what they hold closed within _POLL_S of the total
            # reaching the limit: decide once they had the time, reading nothing meanwhile
            self.buf = []  # (uvloop reads once after connection_made, paused or not)
            self.waiting = transport
            transport.pause_reading()
            self.gc.loop.call_later(_RETRY_S, self._retry, transport)
        else:
            self._refuse(transport)

    def _retry(self, transport: Any) -> None:
        self.waiting = None
        if not transport.is_closing() and self.gc.admit(transport):
            # uvloop delivers what is waiting inside resume_reading: kept with what came
            # before for the listener's protocol, which gets it once it has the connection
            transport.resume_reading()
            inner = self._serve(transport)
            if self.buf:
                inner.data_received(b"".join(self.buf))
            if self.eof and not transport.is_closing() and not inner.eof_received():
                transport.close()
        else:
            self._refuse(transport)

    def _refuse(self, transport: Any) -> None:
        self.overflow.value += 1
        self.overflow.used = True
        transport.close()  # Envoy closes the accepted socket before reading it

    def _serve(self, transport: Any) -> Any:
        inner = self.factory()
        transport.set_protocol(inner)
        inner.connection_made(transport)
        return inner

    # a closed (rejected) connection's remaining events, or a late admission's first
    def data_received(self, data: bytes) -> None:
        if self.buf is not None:
            self.buf.append(data)
            if self.waiting is not None:
                self.waiting.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        return self.buf is not None  # (kept open for the listener's protocol to decide)


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
            continue  # overload_actions.OverloadActions
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
        out = GlobalConnections(
            limit, shared_count("overload.global_downstream_max_connections", options)
        )
    return out


def shared_count(key: str, options: Any) -> Any:
    """A count by `key`, shared by every worker of the pool (in the region the main process
    made, see ratelimit.share_buckets), this process's own otherwise."""
    from sofamesh._core.ratelimit import SharedCount, shared_region

    return SharedCount(key, int(getattr(options, "worker_index", -1)), shared_region())
