"""The pilot: registries -> one merged model -> Generator -> ADS pushes (debounced).

A registry calls `on_change(name)`; after `debounce` seconds without another change (at most
`max_delay` after the first) the pilot reads every dirty registry's snapshot, merges all
into one model, regenerates only the services that changed and pushes to the streams whose
resources changed. A registry whose snapshot fails keeps its last good snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from sofamesh.pilot.generate import Generator
from sofamesh.pilot.inbound import InboundBuilder
from sofamesh.pilot.model import Instance, Port, Service, Snapshot
from sofamesh.pilot.server import AdsServer, Metrics

log = logging.getLogger("sofamesh.pilot")


def merge(snapshots: list[Snapshot]) -> tuple[dict[str, Service], dict[str, list[Instance]]]:
    """One model over all registries: instances of one service name are pooled; declared ports
    are the union by number (first registry's protocol wins)."""
    if len(snapshots) == 1:  # the common case: nothing to pool
        return dict(snapshots[0].services), dict(snapshots[0].instances)
    services: dict[str, Service] = {}
    instances: dict[str, list[Instance]] = {}
    for snap in snapshots:
        for name, svc in snap.services.items():
            prev = services.get(name)
            if prev is None:
                services[name] = svc
            elif svc.ports:
                have = {p.number for p in prev.ports}
                extra = tuple(p for p in svc.ports if p.number not in have)
                if extra:
                    ports: tuple[Port, ...] = tuple(
                        sorted(prev.ports + extra, key=lambda p: p.number)
                    )
                    services[name] = Service(
                        prev.name, prev.namespace, ports, prev.labels, prev.registry
                    )
        for name, insts in snap.instances.items():
            if not insts:
                continue
            if name in instances:
                instances[name] = instances[name] + list(insts)
            else:
                instances[name] = insts if isinstance(insts, list) else list(insts)
    return services, instances


class Pilot:
    def __init__(
        self,
        registries: list,
        gen: Generator | None = None,
        debounce: float = 0.1,
        max_delay: float = 1.0,
        metrics: Metrics | None = None,
    ):
        self.metrics = metrics or Metrics()
        self.gen = gen or Generator()
        self.ads = AdsServer(self.gen, self.metrics)
        self.ads.inbound = InboundBuilder(self.gen)  # each sidecar's own inbound listeners
        self.registries = list(registries)
        self.debounce = debounce
        self.max_delay = max_delay
        self.snapshots: dict[str, Snapshot] = {}
        self.services: dict[str, Service] = {}
        self.instances: dict[str, list[Instance]] = {}
        self.registry_errors: dict[str, str] = {}
        self._dirty: set[str] = set()
        self._first_change = 0.0
        self._last_change = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._export_task: asyncio.Task | None = None
        self._export_again = False
        self.rebuilds = 0
        self.last_rebuild_ms = 0.0
        self.change_listeners: list = []  # callables(Changes): after each push (benchmarks)
        self.edges: Any = None  # pilot/edge.Edges when the cluster has an edge sidecar

    def use_edges(self, edges) -> None:
        self.edges = edges
        self.ads.edge_gen = edges.gen

    def on_change(self, name: str) -> None:
        now = time.monotonic()
        if not self._dirty:
            self._first_change = now
        self._dirty.add(name)
        self._last_change = now
        self._wake.set()

    async def start(self) -> None:
        """Start every registry (each waits for its first full read, or its connect timeout),
        then build the model at once: serve xDS only after this, so a restarted pilot never
        hands a reconnecting sidecar an empty model (Delta would remove everything it has)."""
        for reg in self.registries:
            try:
                await reg.start(self.on_change)
            except Exception as e:
                self.registry_errors[reg.name] = f"start failed: {e}"
                self.metrics.inc("pilot_registry_errors_total", registry=reg.name)
                log.exception("registry %s failed to start", reg.name)
                raise
        self._dirty = {r.name for r in self.registries}
        self.rebuild()
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        for reg in self.registries:
            try:
                await reg.stop()
            except Exception:
                log.exception("registry %s failed to stop", reg.name)
        for t in (self._task, self._export_task):
            if t is not None:
                t.cancel()
                try:
                    await t
                except (asyncio.CancelledError, Exception) as e:  # noqa: BLE001
                    log.debug("ignored during shutdown/cleanup: %r", e)

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            # debounce: quiet for `debounce`, but never later than `max_delay` after the first
            while True:
                now = time.monotonic()
                quiet_at = self._last_change + self.debounce
                latest = self._first_change + self.max_delay
                due = min(quiet_at, latest)
                if now >= due:
                    break
                await asyncio.sleep(due - now)
            try:
                self.rebuild()
            except Exception:
                self.metrics.inc("pilot_rebuild_errors_total")
                log.exception("model rebuild failed")

    def rebuild(self) -> None:
        t0 = time.perf_counter()
        dirty, self._dirty = self._dirty, set()
        for reg in self.registries:
            if reg.name not in dirty and reg.name in self.snapshots:
                continue
            try:
                self.snapshots[reg.name] = reg.snapshot()
                self.registry_errors.pop(reg.name, None)
            except Exception as e:
                self.registry_errors[reg.name] = f"snapshot failed: {e}"
                self.metrics.inc("pilot_registry_errors_total", registry=reg.name)
                log.exception("registry %s snapshot failed; keeping the last good one", reg.name)
        self.services, self.instances = merge(
            [self.snapshots[r.name] for r in self.registries if r.name in self.snapshots]
        )
        if self.edges is not None:  # which peer clusters are reached through the edges
            self.edges.refresh(self.gen)
        ch = self.gen.update(self.services, self.instances)
        n = self.ads.push(ch)
        if self.edges is not None:
            n += self.ads.push(self.edges.gen.update(self.services, self.instances), self.edges.gen)
        self.rebuilds += 1
        self.last_rebuild_ms = (time.perf_counter() - t0) * 1000
        self.metrics.inc("pilot_rebuilds_total")
        self.metrics.set("pilot_services", len(set(self.services) | set(self.instances)))
        self.metrics.set("pilot_instances", sum(len(v) for v in self.instances.values()))
        self.metrics.set("pilot_last_rebuild_ms", round(self.last_rebuild_ms, 3))
        if not ch.empty():
            log.info(
                "model rebuilt in %.1f ms: %s; pushed to %d streams",
                self.last_rebuild_ms,
                {k.rsplit(".", 1)[-1]: len(v) for k, v in ch.changed.items() if v},
                n,
            )
            self._export()
        for cb in self.change_listeners:
            cb(ch)

    def _export(self) -> None:
        """Hand the merged model to registries that publish it back (e.g. ZooKeeper sync).
        One export runs at a time; a change during it triggers one more with the newest model."""
        exporters = [
            r
            for r in self.registries
            if callable(getattr(r, "export", None)) and getattr(r, "exports", True)
        ]
        if not exporters:
            return
        self._export_again = True
        if self._export_task is not None and not self._export_task.done():
            return

        async def run() -> None:
            while self._export_again:
                self._export_again = False
                services, instances = self.services, self.instances
                for r in exporters:
                    try:
                        await r.export(services, instances)
                    except Exception:
                        self.metrics.inc("pilot_export_errors_total", registry=r.name)
                        log.exception("export to %s failed", r.name)

        self._export_task = asyncio.ensure_future(run())
