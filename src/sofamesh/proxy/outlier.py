"""Outlier detection: Envoy 1.40's Cluster.outlier_detection, one Detector per cluster.

     request outcome (router, RPC proxy)
            |  Host.outcome(status | OUTCOME_*)        per request, in C (upstream.pyx)
            v
     OutlierMonitor (one per host): consecutive 5xx / gateway / local-origin counters,
            |  the success-rate bucket being written
            |  a consecutive threshold reached: Detector.consecutive(monitor, type)
            v
     Detector (this file, per interval): ejection (max_ejection_percent, enforcing_*),
            the interval timer (unejection after base_ejection_time * backoff, success
            rate and failure percentage over the last interval's bucket, backoff decay),
            cluster.<name>.outlier_detection.* stats, the bootstrap's event log.

An ejected host leaves `Host.healthy` (so `Cluster.choose()` skips it and panic mode counts
it as Envoy does); `OutlierMonitor.base_healthy` keeps its health without the ejection for
when it returns. Envoy's rules kept (source/common/upstream/outlier_detection_impl.cc,
checked against the 1.40 binary): a consecutive counter fires when it *equals* its
threshold; a host already ejected ignores it; ejection is refused (ejections_overflow) when
(ejections_active + 1) / hosts > max_ejection_percent, unless always_eject_one_host and none
is ejected; the ejection time is min(base * backoff, max_ejection_time) + jitter, backoff
growing by one per ejection (while backoff * base < max + base) and shrinking by one per
interval a returned host stays in; a host returns only on an interval tick.

Workers (`--concurrency N`): the main process runs the Detector (PoolOutlier, below); a
worker counts consecutive failures of its own requests (Envoy shares the counter).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import random
import time
from typing import Any

from sofamesh._core.upstream import OutlierMonitor
from sofamesh.proxy.errors import UnsupportedConfig

log = logging.getLogger("sofamesh.outlier")

# envoy.data.cluster.v3.OutlierEjectionType
CONSECUTIVE_5XX = 0
CONSECUTIVE_GATEWAY_FAILURE = 1
SUCCESS_RATE = 2
CONSECUTIVE_LOCAL_ORIGIN_FAILURE = 3
SUCCESS_RATE_LOCAL_ORIGIN = 4
FAILURE_PERCENTAGE = 5
FAILURE_PERCENTAGE_LOCAL_ORIGIN = 6
TYPE_NAMES = (
    "CONSECUTIVE_5XX",
    "CONSECUTIVE_GATEWAY_FAILURE",
    "SUCCESS_RATE",
    "CONSECUTIVE_LOCAL_ORIGIN_FAILURE",
    "SUCCESS_RATE_LOCAL_ORIGIN",
    "FAILURE_PERCENTAGE",
    "FAILURE_PERCENTAGE_LOCAL_ORIGIN",
)
# per type: (ejections_detected_*, ejections_enforced_*) suffix
_STAT_OF = (
    "consecutive_5xx",
    "consecutive_gateway_failure",
    "success_rate",
    "consecutive_local_origin_failure",
    "local_origin_success_rate",
    "failure_percentage",
    "local_origin_failure_percentage",
)
COUNTERS = (
    "ejections_consecutive_5xx",
    "ejections_success_rate",
    "ejections_total",
    "ejections_overflow",
    "ejections_enforced_total",
    "ejections_detected_degradation",  # Envoy 1.40 lists it and never counts it
    *(f"ejections_detected_{s}" for s in _STAT_OF),
    *(f"ejections_enforced_{s}" for s in _STAT_OF),
)
GAUGES = ("ejections_active",)


def _ms(msg: Any, field: str, default: int) -> int:
    return getattr(msg, field).ToMilliseconds() if msg.HasField(field) else default


def _u(msg: Any, field: str, default: int) -> int:
    return getattr(msg, field).value if msg.HasField(field) else default


class OdConfig:
    """envoy.config.cluster.v3.OutlierDetection with Envoy's defaults (DetectorConfig)."""

    def __init__(self, od: Any, path: str) -> None:
        if od.monitors:
            raise UnsupportedConfig(
                f"{path}.monitors: outlier detection extensions are not implemented by sofamesh"
            )
        self.interval_ms = _ms(od, "interval", 10000)
        self.base_ms = _ms(od, "base_ejection_time", 30000)
        self.max_ms = _ms(od, "max_ejection_time", max(300000, self.base_ms))
        if self.max_ms < self.base_ms:
            raise UnsupportedConfig(
                f"{path}: outlier detector's max_ejection_time cannot be smaller than "
                "base_ejection_time"
            )
        self.jitter_ms = _ms(od, "max_ejection_time_jitter", 0)
        self.consecutive_5xx = _u(od, "consecutive_5xx", 5)
        self.consecutive_gateway_failure = _u(od, "consecutive_gateway_failure", 5)
        self.consecutive_local_origin_failure = _u(od, "consecutive_local_origin_failure", 5)
        self.max_ejection_percent = min(100, _u(od, "max_ejection_percent", 10))
        self.always_eject_one_host = bool(_u(od, "always_eject_one_host", False))
        self.split = od.split_external_local_origin_errors
        self.sr_minimum_hosts = _u(od, "success_rate_minimum_hosts", 5)
        self.sr_request_volume = _u(od, "success_rate_request_volume", 100)
        self.sr_stdev_factor = _u(od, "success_rate_stdev_factor", 1900) / 1000.0
        self.fp_threshold = _u(od, "failure_percentage_threshold", 85)
        self.fp_minimum_hosts = _u(od, "failure_percentage_minimum_hosts", 5)
        self.fp_request_volume = _u(od, "failure_percentage_request_volume", 50)
        # enforcing_* per ejection type (percent of detections that eject)
        self.enforcing = (
            _u(od, "enforcing_consecutive_5xx", 100),
            _u(od, "enforcing_consecutive_gateway_failure", 0),
            _u(od, "enforcing_success_rate", 100),
            _u(od, "enforcing_consecutive_local_origin_failure", 100),
            _u(od, "enforcing_local_origin_success_rate", 100),
            _u(od, "enforcing_failure_percentage", 0),
            _u(od, "enforcing_failure_percentage_local_origin", 0),
        )


def parse(cluster: Any, path: str) -> OdConfig | None:
    if not cluster.HasField("outlier_detection"):
        return None
    if cluster.health_checks:
        raise UnsupportedConfig(
            f"{path}.outlier_detection: outlier detection on a cluster with health_checks is "
            "not implemented by sofamesh"
        )
    return OdConfig(cluster.outlier_detection, f"{path}.outlier_detection")


class EventLog:
    """cluster_manager.outlier_detection.event_log_path: Envoy's OutlierDetectionEvent,
    one JSON object a line (snake_case fields, defaults printed)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.f: Any = None

    def write(self, event: dict) -> None:
        try:
            if self.f is None:
                self.f = open(self.path, "a")  # noqa: SIM115 (kept open, as Envoy's file)
            self.f.write(json.dumps(event, separators=(",", ":")) + "\n")
            self.f.flush()
        except OSError as e:
            log.warning("outlier event log %s: %s", self.path, e)

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None


def _timestamp() -> str:
    """Now, as Envoy's event JSON prints it (RFC 3339 UTC, milliseconds)."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


class _HostState:
    """The detector's side of one host (DetectorHostMonitorImpl's times and rates)."""

    __slots__ = (
        "backoff",
        "buckets",
        "host",
        "jitter",
        "last_ejection",
        "last_unejection",
        "mon",
        "num_ejections",
        "rates",
    )

    def __init__(self, host: Any, mon: OutlierMonitor) -> None:
        self.host = host
        self.mon = mon
        self.num_ejections = 0
        self.last_ejection: float | None = None
        self.last_unejection: float | None = None
        self.backoff = 0
        self.jitter = 0.0
        self.buckets = [(0, 0), (0, 0)]  # last interval's (success, total): external, local
        self.rates = [-1.0, -1.0]  # success rate shown in /clusters: external, local


class Detector:
    def __init__(self, cluster: Any, cfg: OdConfig, store: Any, events: EventLog | None) -> None:
        self.cluster = cluster
        self.cfg = cfg
        self.events = events
        prefix = f"cluster.{cluster.name}.outlier_detection."
        self.c = {n: store.counter(prefix + n) for n in COUNTERS}
        self.active = store.gauge(prefix + "ejections_active")
        self.hosts: dict[tuple[str, int], _HostState] = {}
        self.sr_nums = [(-1.0, -1.0), (-1.0, -1.0)]  # (average, threshold): external, local
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = False
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._arm()

    # ------------------------------------------------------------ hosts
    def hosts_changed(self) -> None:
        """After Cluster.set_hosts: monitors for new hosts; removed ones are forgotten
        (an ejected one no longer counts in ejections_active)."""
        cfg = self.cfg
        seen = set()
        for h in self.cluster.hosts:
            key = (h.address, h.port)
            seen.add(key)
            st = self.hosts.get(key)
            if st is not None and st.host is h:
                continue
            if st is not None and st.mon.ejected:  # a new Host object under the same address
                self.active.value -= 1
            mon = OutlierMonitor(
                self,
                key,
                cfg.split,
                cfg.consecutive_5xx,
                cfg.consecutive_gateway_failure,
                cfg.consecutive_local_origin_failure,
            )
            mon.base_healthy = h.healthy
            h.outlier = mon
            self.hosts[key] = _HostState(h, mon)
        for key in [k for k in self.hosts if k not in seen]:
            st = self.hosts.pop(key)
            if st.mon.ejected:
                self.active.value -= 1

    def ejected(self, key: tuple[str, int]) -> bool:
        st = self.hosts.get(key)
        return st is not None and st.mon.ejected

    def success_rate(self, key: tuple[str, int], local: bool = False) -> float:
        st = self.hosts.get(key)
        return st.rates[1 if local else 0] if st is not None else -1.0

    # ------------------------------------------------------------ ejection
    def consecutive(self, mon: OutlierMonitor, kind: int) -> None:
        """A consecutive-failure threshold was reached (Envoy's onConsecutiveErrorWorker)."""
        try:
            st = self.hosts.get(mon.key)
            if st is None or st.mon is not mon or mon.ejected or self._stopped:
                return
            self._bump(f"ejections_detected_{_STAT_OF[kind]}")
            self._eject(st, kind)
            if kind == CONSECUTIVE_5XX:
                self._bump("ejections_consecutive_5xx")
                mon.n_5xx = 0
            elif kind == CONSECUTIVE_GATEWAY_FAILURE:
                mon.n_gw = 0
            else:
                mon.n_lo = 0
        except Exception:  # never into the request path
            log.exception("outlier detection of cluster %s", self.cluster.name)

    def _bump(self, name: str) -> None:
        c = self.c[name]
        c.value += 1
        c.used = True

    def _eject(self, st: _HostState, kind: int) -> None:
        cfg = self.cfg
        pct = 100.0 * (self.active.value + 1) / max(len(self.hosts), 1)
        should = pct <= cfg.max_ejection_percent or (
            cfg.always_eject_one_host and self.active.value == 0
        )
        if not should:
            self._bump("ejections_overflow")
            return
        if kind in (CONSECUTIVE_5XX, SUCCESS_RATE):
            self._bump("ejections_total")  # Envoy's deprecated counter
        if random.randrange(100) < cfg.enforcing[kind]:
            self.active.value += 1
            self.active.used = True
            self._bump("ejections_enforced_total")
            self._bump(f"ejections_enforced_{_STAT_OF[kind]}")
            st.mon.ejected = True
            st.num_ejections += 1
            st.last_ejection = time.monotonic()
            st.jitter = random.randrange(cfg.jitter_ms + 1) / 1000.0
            if st.backoff * cfg.base_ms < cfg.max_ms + cfg.base_ms:
                st.backoff += 1
            st.host.healthy = False
            self.cluster.update_health()
            self._log_eject(st, kind, True)
        else:
            self._log_eject(st, kind, False)

    def _uneject(self, st: _HostState, now: float) -> None:
        self.active.value -= 1
        mon = st.mon
        mon.ejected = False
        mon.n_5xx = mon.n_gw = mon.n_lo = 0
        st.last_unejection = now
        st.host.healthy = mon.base_healthy
        self.cluster.update_health()
        self._log(st, "UNEJECT", CONSECUTIVE_5XX, False, st.last_ejection, None)

    # ------------------------------------------------------------ interval
    def _arm(self) -> None:
        if self._loop is not None and not self._stopped:
            self._timer = self._loop.call_later(self.cfg.interval_ms / 1000.0, self._tick)

    def _tick(self) -> None:
        try:
            self.tick(time.monotonic())
        except Exception:
            log.exception("outlier detection of cluster %s", self.cluster.name)
        self._arm()

    def tick(self, now: float) -> None:
        """Envoy's onIntervalTimer."""
        cfg = self.cfg
        for st in list(self.hosts.values()):
            mon = st.mon
            if mon.ejected and st.last_ejection is not None:
                t = min(cfg.base_ms * st.backoff, cfg.max_ms) / 1000.0 + st.jitter
                if t <= now - st.last_ejection:
                    self._uneject(st, now)
            st.buckets = [(mon.ext_success, mon.ext_total), (mon.lo_success, mon.lo_total)]
            mon.ext_success = mon.ext_total = mon.lo_success = mon.lo_total = 0
            st.rates = [-1.0, -1.0]
        self._success_rates(0)
        self._success_rates(1)
        for st in self.hosts.values():
            if (
                not st.mon.ejected
                and st.last_unejection is not None
                and now - st.last_unejection >= cfg.interval_ms / 1000.0
                and st.backoff
            ):
                st.backoff -= 1

    def _success_rates(self, local: int) -> None:
        cfg = self.cfg
        self.sr_nums[local] = (-1.0, -1.0)
        n = len(self.hosts)
        if n < cfg.sr_minimum_hosts and n < cfg.fp_minimum_hosts:
            return
        valid_sr: list[tuple[_HostState, float]] = []
        valid_fp: list[tuple[_HostState, float]] = []
        total = 0.0
        for st in self.hosts.values():
            if st.mon.ejected:
                continue
            ok, vol = st.buckets[local]
            if not vol:
                continue
            rate = ok * 100.0 / vol
            if vol >= min(cfg.sr_request_volume, cfg.fp_request_volume):
                st.rates[local] = rate
            if vol >= cfg.sr_request_volume:
                valid_sr.append((st, rate))
                total += rate
            if vol >= cfg.fp_request_volume:
                valid_fp.append((st, rate))
        if valid_sr and len(valid_sr) >= cfg.sr_minimum_hosts:
            mean = total / len(valid_sr)
            var = sum((r - mean) ** 2 for _, r in valid_sr) / len(valid_sr)
            threshold = mean - cfg.sr_stdev_factor * math.sqrt(var)
            self.sr_nums[local] = (mean, threshold)
            kind = SUCCESS_RATE_LOCAL_ORIGIN if local else SUCCESS_RATE
            for st, r in valid_sr:
                if r < threshold:
                    self._bump("ejections_success_rate")  # deprecated
                    self._bump(f"ejections_detected_{_STAT_OF[kind]}")
                    self._eject(st, kind)
        if valid_fp and len(valid_fp) >= cfg.fp_minimum_hosts:
            kind = FAILURE_PERCENTAGE_LOCAL_ORIGIN if local else FAILURE_PERCENTAGE
            for st, r in valid_fp:
                if 100.0 - r >= cfg.fp_threshold:
                    self._bump(f"ejections_detected_{_STAT_OF[kind]}")
                    if not st.mon.ejected:  # (Envoy would eject it twice)
                        self._eject(st, kind)

    def stop(self) -> None:
        """The cluster is gone (CDS removal or replacement, shutdown): no more ticks; its
        ejected hosts stop counting (Envoy's ~DetectorImpl)."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for st in self.hosts.values():
            if st.mon.ejected:
                self.active.value -= 1
                st.mon.ejected = False

    # ------------------------------------------------------------ event log
    def _log_eject(self, st: _HostState, kind: int, enforced: bool) -> None:
        extra: dict[str, Any]
        if kind in (SUCCESS_RATE, SUCCESS_RATE_LOCAL_ORIGIN):
            local = kind == SUCCESS_RATE_LOCAL_ORIGIN
            avg, thr = self.sr_nums[local]
            extra = {
                "eject_success_rate_event": {
                    "host_success_rate": _u32(st.rates[local]),
                    "cluster_average_success_rate": _u32(avg),
                    "cluster_success_rate_ejection_threshold": _u32(thr),
                }
            }
        elif kind in (FAILURE_PERCENTAGE, FAILURE_PERCENTAGE_LOCAL_ORIGIN):
            local = kind == FAILURE_PERCENTAGE_LOCAL_ORIGIN
            extra = {"eject_failure_percentage_event": {"host_success_rate": _u32(st.rates[local])}}
        else:
            extra = {"eject_consecutive_event": {}}
        self._log(st, "EJECT", kind, enforced, st.last_unejection, extra)

    def _log(
        self,
        st: _HostState,
        action: str,
        kind: int,
        enforced: bool,
        since: float | None,
        extra: dict | None,
    ) -> None:
        if self.events is None:
            return
        ev: dict[str, Any] = {"type": TYPE_NAMES[kind], "timestamp": _timestamp()}
        if since is not None:
            ev["secs_since_last_action"] = str(int(time.monotonic() - since))
        ev.update(
            cluster_name=self.cluster.name,
            upstream_url=f"{st.host.address}:{st.host.port}",
            action=action,
            num_ejections=st.num_ejections,
            enforced=enforced,
        )
        if extra:
            ev.update(extra)
        self.events.write(ev)


def _u32(v: float) -> int:
    """A double set into a uint32 proto field (Envoy's event fields): truncated."""
    return int(v) & 0xFFFFFFFF


# ---- worker pools (--concurrency N): one detector, in the main process -----------------
#
#   worker: WorkerDetector (per cluster)          main: PoolOutlier -> MainDetector
#     od_hosts {cluster, od, hosts, token} ------>  (re)builds the cluster's detector
#     od_consecutive {cluster, key, kind} ------->  Detector.consecutive (eject?)
#     od_buckets {cluster, b} (each interval) --->  added to the success-rate buckets
#     od_remove {cluster, token} ---------------->  the last worker's copy gone: stopped
#     <----------------------------------------- od_flags {cluster, hosts: [a, p, ejected,
#                                                 success rate, local-origin rate]}
#
# Consecutive failures are counted per worker (each worker sees its own requests); the
# ejection decisions, timers, stats and event log are the main process's, as on Envoy's
# main thread.


class WorkerDetector:
    """A pool worker's side of a cluster's outlier detection: its hosts' monitors count in
    C as in one process; thresholds and buckets go to the main process, ejections come
    back as od_flags."""

    _tokens = 0

    def __init__(self, cluster: Any, cfg: OdConfig, link: WorkerLink) -> None:
        WorkerDetector._tokens += 1
        self.token = WorkerDetector._tokens
        self.cluster = cluster
        self.cfg = cfg
        self.link = link
        self.mons: dict[tuple[str, int], OutlierMonitor] = {}
        self.rates: dict[tuple[str, int], tuple[float, float]] = {}
        self._stopped = False
        self._timer: asyncio.TimerHandle | None = None
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._arm()

    def hosts_changed(self) -> None:
        cfg = self.cfg
        seen = {}
        for h in self.cluster.hosts:
            key = (h.address, h.port)
            mon = h.outlier
            if mon is None or self.mons.get(key) is not mon:
                mon = OutlierMonitor(
                    self,
                    key,
                    cfg.split,
                    cfg.consecutive_5xx,
                    cfg.consecutive_gateway_failure,
                    cfg.consecutive_local_origin_failure,
                )
                mon.base_healthy = h.healthy
                h.outlier = mon
            seen[key] = mon
        self.mons = seen
        self.link.emit(
            {
                "event": "od_hosts",
                "cluster": self.cluster.name,
                "token": self.token,
                "od": base64.b64encode(
                    self.cluster.config.outlier_detection.SerializeToString()
                ).decode(),
                "hosts": [[a, p, bool(m.base_healthy)] for (a, p), m in seen.items()],
            }
        )
        self.link.register(self)

    def consecutive(self, mon: OutlierMonitor, kind: int) -> None:
        if mon.ejected or self._stopped:
            return
        if kind == CONSECUTIVE_5XX:
            mon.n_5xx = 0
        elif kind == CONSECUTIVE_GATEWAY_FAILURE:
            mon.n_gw = 0
        else:
            mon.n_lo = 0
        self.link.emit(
            {
                "event": "od_consecutive",
                "cluster": self.cluster.name,
                "key": list(mon.key),
                "kind": kind,
            }
        )

    def apply(self, hosts: list) -> None:
        """od_flags from the main process."""
        changed = False
        rates = {}
        for a, p, ejected, sr, lsr in hosts:
            key = (a, int(p))
            rates[key] = (float(sr), float(lsr))
            mon = self.mons.get(key)
            if mon is None or bool(ejected) == mon.ejected:
                continue
            mon.ejected = bool(ejected)
            if not ejected:
                mon.n_5xx = mon.n_gw = mon.n_lo = 0
            for h in self.cluster.hosts:
                if h.outlier is mon:
                    h.healthy = mon.base_healthy and not mon.ejected
            changed = True
        self.rates = rates
        if changed:
            self.cluster.update_health()

    def ejected(self, key: tuple[str, int]) -> bool:
        mon = self.mons.get(key)
        return mon is not None and mon.ejected

    def success_rate(self, key: tuple[str, int], local: bool = False) -> float:
        return self.rates.get(key, (-1.0, -1.0))[1 if local else 0]

    def _arm(self) -> None:
        if self._loop is not None and not self._stopped:
            self._timer = self._loop.call_later(self.cfg.interval_ms / 1000.0, self._tick)

    def _tick(self) -> None:
        b = []
        for (a, p), m in self.mons.items():
            if m.ext_total or m.lo_total:
                b.append([a, p, m.ext_success, m.ext_total, m.lo_success, m.lo_total])
                m.ext_success = m.ext_total = m.lo_success = m.lo_total = 0
        if b:
            self.link.emit({"event": "od_buckets", "cluster": self.cluster.name, "b": b})
        self._arm()

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.link.emit({"event": "od_remove", "cluster": self.cluster.name, "token": self.token})
        self.link.unregister(self)


class WorkerLink:
    """A pool worker's channel to the main process (proxy.workers): events queue until the
    worker's ready frame (go_live); od_flags are applied to the cluster's detector."""

    def __init__(self, send: Any) -> None:
        self.send = send
        self.live = False
        self.queued: list[dict] = []
        self.detectors: dict[str, WorkerDetector] = {}

    def emit(self, msg: dict) -> None:
        if self.live:
            self.send(msg)
        else:
            self.queued.append(msg)

    def go_live(self) -> None:
        self.live = True
        for m in self.queued:
            self.send(m)
        self.queued = []

    def register(self, det: WorkerDetector) -> None:
        self.detectors[det.cluster.name] = det

    def unregister(self, det: WorkerDetector) -> None:
        if self.detectors.get(det.cluster.name) is det:
            del self.detectors[det.cluster.name]

    def apply(self, msg: dict) -> None:
        det = self.detectors.get(msg.get("cluster", ""))
        if det is not None:
            det.apply(msg["hosts"])


class _ShimHost:
    """The main process's view of a worker's host (no pools, no traffic)."""

    __slots__ = ("address", "healthy", "outlier", "port")

    def __init__(self, address: str, port: int, healthy: bool) -> None:
        self.address = address
        self.port = port
        self.healthy = healthy
        self.outlier: Any = None


class _ShimCluster:
    def __init__(self, name: str, publish: Any) -> None:
        self.name = name
        self.hosts: tuple = ()
        self.publish = publish

    def update_health(self) -> None:
        self.publish()


class MainDetector(Detector):
    """The pool's detector for one cluster, fed by the workers' events."""

    def __init__(self, name: str, cfg: OdConfig, od: bytes, store: Any, events: Any, pub: Any):
        self.od = od
        self.by_key: dict[tuple[str, int], _ShimHost] = {}
        self.workers: dict[int, int] = {}  # worker index -> token of its copy
        super().__init__(_ShimCluster(name, lambda: pub(self)), cfg, store, events)

    def set_hosts(self, hosts: list) -> None:
        keep = {}
        for a, p, healthy in hosts:
            key = (a, int(p))
            h = self.by_key.get(key)
            if h is None:
                h = _ShimHost(a, int(p), bool(healthy))
            elif h.outlier is not None:
                h.outlier.base_healthy = bool(healthy)
                h.healthy = bool(healthy) and not h.outlier.ejected
            keep[key] = h
        self.by_key = keep
        self.cluster.hosts = tuple(keep.values())
        self.hosts_changed()

    def tick(self, now: float) -> None:
        super().tick(now)
        self.cluster.publish()  # the interval's success rates, for /clusters

    def flags(self) -> list:
        return [
            [a, p, st.mon.ejected, st.rates[0], st.rates[1]] for (a, p), st in self.hosts.items()
        ]


class PoolOutlier:
    """The main process of a worker pool: one Detector per cluster (Envoy's detector lives
    on the main thread); every change goes to every worker as od_flags."""

    def __init__(self, store: Any, broadcast: Any, send_to: Any, event_log_path: str) -> None:
        self.store = store
        self.broadcast = broadcast
        self.send_to = send_to
        self.events = EventLog(event_log_path) if event_log_path else None
        self.dets: dict[str, MainDetector] = {}

    def _publish(self, det: MainDetector) -> None:
        if self.dets.get(det.cluster.name) is det:
            self.broadcast(self._frame(det))

    @staticmethod
    def _frame(det: MainDetector) -> dict:
        return {"op": "od_flags", "cluster": det.cluster.name, "hosts": det.flags()}

    def on_event(self, index: int, msg: dict) -> None:
        try:
            self._on_event(index, msg)
        except Exception:  # a worker's event never takes the main process down
            log.exception("outlier detection event %r", msg.get("event"))

    def _on_event(self, index: int, msg: dict) -> None:
        ev, name = msg.get("event"), msg.get("cluster", "")
        det = self.dets.get(name)
        if ev == "od_hosts":
            od = base64.b64decode(msg["od"])
            if det is None or det.od != od:
                from envoy.config.cluster.v3 import outlier_detection_pb2

                cfg = OdConfig(
                    outlier_detection_pb2.OutlierDetection.FromString(od), f"cluster {name}"
                )
                if det is not None:
                    det.stop()
                det = self.dets[name] = MainDetector(
                    name, cfg, od, self.store, self.events, self._publish
                )
            det.workers[index] = int(msg["token"])
            det.set_hosts(msg["hosts"])
            self.send_to(index, self._frame(det))
        elif det is None:
            return
        elif ev == "od_consecutive":
            st = det.hosts.get((msg["key"][0], int(msg["key"][1])))
            if st is not None:
                det.consecutive(st.mon, int(msg["kind"]))
        elif ev == "od_buckets":
            for a, p, es, et, ls, lt in msg["b"]:
                st = det.hosts.get((a, int(p)))
                if st is not None:
                    st.mon.ext_success += es
                    st.mon.ext_total += et
                    st.mon.lo_success += ls
                    st.mon.lo_total += lt
        elif ev == "od_remove" and det.workers.get(index) == int(msg["token"]):
            del det.workers[index]
            if not det.workers:
                det.stop()
                del self.dets[name]

    def stop(self) -> None:
        for det in self.dets.values():
            det.stop()
        self.dets = {}
        if self.events is not None:
            self.events.close()
