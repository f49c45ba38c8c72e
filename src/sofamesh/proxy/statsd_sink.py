"""The `envoy.stat_sinks.statsd` stats sink over UDP (`StatsdSink.address`), as Envoy 1.40's
UdpStatsdSink flushes it: every `stats_flush_interval` (default 5 s), one datagram a metric
(Envoy's default, no buffer_size here), for every used counter
`<prefix>.<name>:<what it grew since the last flush>|c` and for every used gauge
`<prefix>.<name>:<value>|g`; `prefix` is "envoy" unless set. Like the metrics service sink
(proxy/metrics_sink.py) it runs once per proxy, in the process that serves admin, off the
request path, on the same snapshot as /stats (summed over workers).

Envoy also sends each histogram value as it is recorded (`|ms`, one datagram a sample);
sofamesh's histograms keep bucket counts, not samples, so they are not sent: a documented
difference. `tcp_cluster_name` (statsd over TCP to a cluster) is refused by name. A send
that fails (the collector's port closed, a full socket buffer) is dropped, as UDP is, and
counted in `sofamesh.statsd.send_failures`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from sofamesh.proxy.errors import UnsupportedConfig
from sofamesh.proxy.metrics_sink import flush_every, flush_interval

log = logging.getLogger("sofamesh.statsd")

SINK_TYPE = "type.googleapis.com/envoy.config.metrics.v3.StatsdSink"
SLICE = 512  # metrics sent between yields to the loop


def _config(sink: Any, path: str) -> tuple[tuple[str, int], str]:
    """((host, port), prefix) of a StatsdSink, or UnsupportedConfig naming what is not."""
    from envoy.config.metrics.v3 import stats_pb2

    cfg = stats_pb2.StatsdSink()
    if not sink.typed_config.Unpack(cfg):
        raise UnsupportedConfig(f"{path}.typed_config: expected StatsdSink")
    if cfg.WhichOneof("statsd_specifier") != "address":
        raise UnsupportedConfig(
            f"{path}.typed_config.tcp_cluster_name: statsd over TCP is not implemented by "
            "sofamesh (a UDP address is)"
        )
    sa = cfg.address.socket_address
    if not cfg.address.HasField("socket_address") or not sa.port_value:
        raise UnsupportedConfig(f"{path}.typed_config.address: a socket address with a port")
    return (sa.address or "127.0.0.1", sa.port_value), cfg.prefix or "envoy"


def check_config(bootstrap: Any) -> list[tuple[str, str]]:
    """(path, problem) for each statsd sink sofamesh cannot run as configured."""
    out = []
    for i, sink in enumerate(bootstrap.stats_sinks):
        if sink.typed_config.type_url == SINK_TYPE:
            try:
                _config(sink, f"stats_sinks[{i}]")
            except UnsupportedConfig as e:  # "<path>: <problem>"
                path, _, problem = str(e).partition(": ")
                out.append((path, problem))
    return out


class StatsdSink:
    def __init__(self, addr: tuple[str, int], prefix: str, state: Any, store: Any,
                 interval: float) -> None:  # fmt: skip
        self.addr = addr
        self.prefix = prefix
        self.state = state  # admin.handlers.AdminState: snapshot(), as /stats reads
        self.interval = interval
        self.prev: dict[str, int] = {}
        fam = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.failures = store.counter("sofamesh.statsd.send_failures")
        self.failures.used = True
        self._task: asyncio.Task | None = None

    def lines(self, snap: dict) -> list[bytes]:
        """Envoy's statsd lines for this flush (counters by delta, then gauges)."""
        used = set(snap.get("used", ()))
        out = []
        p = self.prefix
        for n in sorted(snap["counters"]):
            v = int(snap["counters"][n])
            if n not in used and not v:
                continue
            prev = self.prev.get(n, 0)
            self.prev[n] = v
            out.append(f"{p}.{n}:{v - prev if v >= prev else v}|c".encode())
        for n in sorted(snap["gauges"]):
            v = int(snap["gauges"][n])
            if n not in used and not v:
                continue
            out.append(f"{p}.{n}:{v}|g".encode())
        return out

    async def flush(self) -> None:
        snap = await self.state.snapshot()
        for i, line in enumerate(self.lines(snap)):
            try:
                self.sock.sendto(line, self.addr)
            except OSError:  # a datagram lost, as UDP loses them
                self.failures.value += 1
            if i % SLICE == SLICE - 1:
                await asyncio.sleep(0)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(flush_every(self.interval, self.flush, log, "statsd"))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.sock.close()


def start(bootstrap: Any, state: Any, store: Any) -> list[StatsdSink]:
    """The statsd sinks of a bootstrap's stats_sinks, started."""
    sinks = []
    for i, sink in enumerate(bootstrap.stats_sinks):
        if sink.typed_config.type_url != SINK_TYPE:
            continue
        addr, prefix = _config(sink, f"stats_sinks[{i}]")
        s = StatsdSink(addr, prefix, state, store, flush_interval(bootstrap))
        s.start()
        sinks.append(s)
    return sinks


def _register() -> None:
    from sofamesh.config.support import register_extension

    register_extension(SINK_TYPE, "sofamesh.proxy.statsd_sink")


_register()
