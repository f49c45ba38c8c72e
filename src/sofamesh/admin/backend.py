"""What the admin API reads and commands: one in-process Server, or a pool of workers.

Both present the same plain-data view, so the handlers do not care where the Server runs:
- `snapshot()`: stats, a `Store.snapshot()` (summed over workers);
- `topology()`: {"listeners": [{name, address: [host, port]}],
  "clusters": [{name, hosts: [{address, port, weight, healthy, stats: {name: int}}]}]};
- commands: health fail/ok, drain listeners, reset counters, stop.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, Protocol

HOST_COUNTERS = ("cx_connect_fail", "cx_total", "rq_error", "rq_success", "rq_timeout", "rq_total")
HOST_GAUGES = ("cx_active", "rq_active", "rq_pending_active")


def _num(v: Any) -> int:
    v = getattr(v, "value", v)
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


def describe_server(server: Any) -> dict:
    """Plain data for a Server honouring the contract in docs/ARCHITECTURE.md."""
    listeners = []
    for li in server.listeners:
        addr = li.address
        listeners.append({"name": li.name, "address": [str(addr[0]), int(addr[1])]})
    clusters = []
    for name, ci in server.clusters.items():
        hosts = []
        # active health checking (proxy.health_check.CheckedCluster): flags per host, and
        # the EDS health apart from them (Host.healthy is both)
        hc_flags = getattr(ci, "hc_flags", None) or {}
        eds_healthy = getattr(ci, "eds_healthy", None)
        od = getattr(ci, "outlier", None)  # proxy.outlier.Detector: ejections, success rates
        for h in getattr(ci, "hosts", ()) or ():
            stats = {}
            src = getattr(h, "stats", None)
            for s in HOST_COUNTERS + HOST_GAUGES:
                if isinstance(src, dict) and s in src:
                    stats[s] = _num(src[s])
                else:
                    stats[s] = _num(getattr(h, s, 0))
            waiting = getattr(h, "waiting", None)
            if waiting is not None and not stats["rq_pending_active"]:
                stats["rq_pending_active"] = len(waiting)
            hosts.append(
                {
                    "address": str(h.address),
                    "port": int(h.port),
                    "weight": int(getattr(h, "weight", 1) or 1),
                    "healthy": bool(getattr(h, "healthy", True)),
                    "eds_healthy": bool(
                        eds_healthy.get((h.address, h.port), True)
                        if eds_healthy is not None
                        else h.outlier.base_healthy  # without an ejection (proxy/outlier.py)
                        if getattr(h, "outlier", None) is not None
                        else getattr(h, "healthy", True)
                    ),
                    "hc_flags": int(hc_flags.get((h.address, h.port), 0)),
                    "outlier": bool(od is not None and od.ejected((h.address, h.port))),
                    "success_rate": od.success_rate((h.address, h.port)) if od else -1.0,
                    "local_origin_success_rate": (
                        od.success_rate((h.address, h.port), True) if od else -1.0
                    ),
                    "hostname": str(getattr(h, "hostname", "") or ""),
                    # LocalityLbEndpoints (proxy/localities.py): "region/zone/sub_zone"
                    "priority": int(getattr(h, "priority", 0) or 0),
                    "locality": str(getattr(h, "locality", "") or "//"),
                    "stats": stats,
                }
            )
        cfg = getattr(ci, "config", None)
        clusters.append(
            {
                "name": getattr(ci, "name", name),
                "hosts": hosts,
                "alt_stat_name": getattr(cfg, "alt_stat_name", "") if cfg is not None else "",
                "breakers": _tracked_breakers(ci, cfg),
            }
        )
    secrets = getattr(server, "secrets", None)  # proxy.sds.SecretManager: TLS contexts
    certs = secrets.certs() if secrets is not None else []
    return {"listeners": listeners, "clusters": clusters, "certs": certs}


# Envoy's circuit breaker defaults: connections, pending, requests, retries, pools
_BREAKER_DEFAULTS = (1024, 1024, 1024, 3, 2**64 - 1)


def _tracked_breakers(ci: Any, cfg: Any) -> list[list]:
    """[priority, max cx, pending, rq, retries, pools, then the same 5 in use] for each
    threshold with track_remaining (Envoy's circuit_breakers.<priority>.remaining_*). DEFAULT
    is what the Cluster enforces; no HIGH-priority request exists (refused), so none is in
    use there."""
    out: list[list] = []
    if cfg is None:
        return out
    for t in cfg.circuit_breakers.thresholds:
        if not t.track_remaining:
            continue
        prio = "high" if t.priority == 1 else "default"
        limits = [
            t.max_connections.value if t.HasField("max_connections") else _BREAKER_DEFAULTS[0],
            t.max_pending_requests.value
            if t.HasField("max_pending_requests")
            else _BREAKER_DEFAULTS[1],
            t.max_requests.value if t.HasField("max_requests") else _BREAKER_DEFAULTS[2],
            t.max_retries.value if t.HasField("max_retries") else _BREAKER_DEFAULTS[3],
            _BREAKER_DEFAULTS[4],
        ]
        used = [0, 0, 0, 0, 0]
        if prio == "default":
            pools = sum(1 for h in getattr(ci, "hosts", ()) or () if getattr(h, "cx_total", 0))
            used = [
                int(getattr(ci, "cx_active", 0)),
                int(getattr(ci, "pending_active", 0)),
                int(getattr(ci, "rq_active", 0)),
                int(getattr(ci, "retries_active", 0)),
                pools,
            ]
        out.append([prio, *limits, *used])
    return out


def merge_topologies(tops: list[dict]) -> dict:
    """Workers see the same listeners and clusters; host stats add up."""
    if not tops:
        return {"listeners": [], "clusters": []}
    base = tops[0]
    out = {"listeners": base["listeners"], "clusters": [], "certs": base.get("certs", [])}
    for ci, c in enumerate(base["clusters"]):
        hosts = []
        for hi, h in enumerate(c["hosts"]):
            h = {**h, "stats": dict(h["stats"])}
            for t in tops[1:]:
                try:
                    other = t["clusters"][ci]["hosts"][hi]
                except (IndexError, KeyError):
                    continue
                for k, v in other["stats"].items():
                    h["stats"][k] = h["stats"].get(k, 0) + v
                h["healthy"] = h["healthy"] and other["healthy"]
                h["outlier"] = h.get("outlier", False) or other.get("outlier", False)
            hosts.append(h)
        breakers = [list(b) for b in c.get("breakers", [])]
        for b in breakers:  # a cluster's circuit breakers are shared: actives add up
            for t in tops[1:]:
                same: dict = next((x for x in t["clusters"] if x["name"] == c["name"]), {})
                for ob in same.get("breakers", []):
                    if ob[0] == b[0]:
                        b[5:] = [x + y for x, y in zip(b[5:], ob[5:])]
        out["clusters"].append(
            {
                "name": c["name"],
                "hosts": hosts,
                "alt_stat_name": c.get("alt_stat_name", ""),
                "breakers": breakers,
            }
        )
    return out


_LISTENER_CX = re.compile(r"^(listener\.(?:.+?))\.(downstream_cx_(?:total|active))$")


def add_worker_stats(snap: dict, index: int) -> dict:
    """Envoy's per-worker listener stats (`listener.<addr>.worker_<i>.downstream_cx_total`,
    `..._active`) from one worker's snapshot; they stay apart when snapshots are summed."""
    for kind in ("counters", "gauges"):
        src = snap[kind]
        for name in list(src):
            m = _LISTENER_CX.match(name)
            if m and ".worker_" not in name:
                wname = f"{m.group(1)}.worker_{index}.{m.group(2)}"
                src[wname] = src[name]
                if name in snap.get("used", ()):
                    snap["used"] = set(snap["used"]) | {wname}
    return snap


class Backend(Protocol):
    workers: int

    async def snapshot(self) -> dict: ...
    async def topology(self) -> dict: ...
    async def set_health_failed(self, failed: bool) -> None: ...
    async def drain_listeners(self, inbound_only: bool, graceful: bool) -> None: ...
    async def reset_counters(self) -> None: ...
    async def set_log_levels(self, levels: dict[str, str]) -> None: ...
    async def reopen_logs(self) -> None: ...
    def live_workers(self) -> int: ...


def reopen_server_logs(server: Any) -> None:
    """The Server's access logs, if it offers `reopen_logs()` (optional contract)."""
    fn = getattr(server, "reopen_logs", None)
    if fn is not None:
        fn()


def apply_log_levels(levels: dict[str, str]) -> None:
    from sofamesh.logs import PY_LEVEL as _PY_LEVEL

    for comp, lvl in levels.items():
        name = "sofamesh" if comp == "*" else f"sofamesh.{comp}"
        logging.getLogger(name).setLevel(_PY_LEVEL[lvl])


class LocalBackend:
    """The Server runs in this process (`--concurrency 1`)."""

    workers = 1

    def __init__(self, server: Any, store: Any) -> None:
        self.server = server
        self.store = store
        self.inherited: dict | None = None  # hot restart: the previous epoch's counters

    async def snapshot(self) -> dict:
        snap = add_worker_stats(self.store.snapshot(), 0)
        if self.inherited is not None:  # added as Envoy's child adds its parent's
            from sofamesh.admin.stats_format import merge

            snap = merge([snap, self.inherited])
        return snap

    async def topology(self) -> dict:
        return describe_server(self.server)

    async def set_health_failed(self, failed: bool) -> None:
        self.server.health_failed = failed

    async def drain_listeners(self, inbound_only: bool, graceful: bool) -> None:
        await self.server.drain_listeners(inbound_only=inbound_only, graceful=graceful)

    async def reset_counters(self) -> None:
        self.store.reset_counters()

    async def set_log_levels(self, levels: dict[str, str]) -> None:
        apply_log_levels(levels)

    async def reopen_logs(self) -> None:
        reopen_server_logs(self.server)

    def live_workers(self) -> int:
        return 1


async def gather_dicts(coros: list) -> list[dict]:
    res = await asyncio.gather(*coros, return_exceptions=True)
    return [r for r in res if isinstance(r, dict)]
