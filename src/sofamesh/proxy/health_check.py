"""Active health checking (a cluster's `health_checks`), with Envoy 1.40's state machine.

    Server._build_cluster --(health_checks)--> CheckedCluster (a Cluster whose set_hosts
         |                                      also tells its link; Host.healthy =
         |                                      EDS healthy AND no failing HC flag)
         v
    link: LocalLink (one process: a HealthManager on the Server's loop)
          RemoteLink (a pool worker: events to the main process, flags back)
         v
    HealthManager: one ClusterChecker per cluster name -> one Session per host
         (interval timer, probe from proxy.health_probes, thresholds, stats)
         `publish(name, flags)` when a host's flags change: applied to the cluster here,
         or pushed to every worker (proxy.workers: `hc_flags` frames).

Envoy's rules kept (checked against the 1.40 binary): hosts start `/failed_active_hc`; the
first check's success makes a host healthy at once; an active failure (an HTTP status
outside expected_statuses and retriable_statuses, a gRPC status other than SERVING) makes
it unhealthy at once; network failures, timeouts and retriable statuses count toward
`unhealthy_threshold`; `healthy_threshold` successes bring it back; a timeout on a failed
host adds `/active_hc_timeout`. Intervals: `no_traffic_interval` (60 s) and
`no_traffic_healthy_interval` until the cluster has made an upstream connection, then
`interval`, `unhealthy_interval`, `unhealthy_edge_interval`, `healthy_edge_interval`, each
plus `interval_jitter_percent` and `interval_jitter`; the first check after
`initial_jitter`. The server (and each static cluster) is ready once every host had its
first check. Stats `cluster.<name>.health_check.{attempt, success, failure,
network_failure, passive_failure, verify_cluster, healthy, degraded}`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from sofamesh._core.upstream import Cluster
from sofamesh.proxy import health_probes as hp
from sofamesh.proxy.errors import UnsupportedConfig

log = logging.getLogger("sofamesh.health_check")

# Host health flags (Envoy's Host::HealthFlag, the active-HC ones)
FAILED_ACTIVE_HC = 0x01
PENDING_ACTIVE_HC = 0x02
ACTIVE_HC_TIMEOUT = 0x04
DEGRADED_ACTIVE_HC = 0x08
EXCLUDED_VIA_IMMEDIATE_HC_FAIL = 0x10
UNUSABLE = FAILED_ACTIVE_HC | PENDING_ACTIVE_HC | EXCLUDED_VIA_IMMEDIATE_HC_FAIL

COUNTERS = ("attempt", "success", "failure", "network_failure", "passive_failure", "verify_cluster")
GAUGES = ("healthy", "degraded")


def health_flags_text(flags: int, eds_healthy: bool, outlier: bool = False) -> str:
    """admin /clusters' `health_flags` (Envoy's HostUtility::healthFlagsToString order);
    `outlier`: ejected by outlier detection (proxy/outlier.py)."""
    out = ""
    if flags & FAILED_ACTIVE_HC:
        out += "/failed_active_hc"
    if outlier:
        out += "/failed_outlier_check"
    if not eds_healthy:
        out += "/failed_eds_health"
    if flags & DEGRADED_ACTIVE_HC:
        out += "/degraded_active_hc"
    if flags & PENDING_ACTIVE_HC:
        out += "/pending_active_hc"
    if flags & EXCLUDED_VIA_IMMEDIATE_HC_FAIL:
        out += "/excluded_via_immediate_hc_fail"
    if flags & ACTIVE_HC_TIMEOUT:
        out += "/active_hc_timeout"
    return out or "healthy"


# ---- config ---------------------------------------------------------------------------


def _d(msg: Any, field: str, default: float) -> float:
    return getattr(msg, field).ToNanoseconds() / 1e9 if msg.HasField(field) else default


def _payloads(items: Any, path: str) -> tuple[bytes, ...]:
    out = []
    for i, p in enumerate(items):
        if p.WhichOneof("payload") == "text":
            try:
                out.append(bytes.fromhex(p.text))
            except ValueError:
                raise UnsupportedConfig(f"{path}[{i}].text: not a hex string") from None
        else:
            out.append(p.binary)
    return tuple(out)


class HcConfig:
    """One HealthCheck message, read once (everything a Session needs)."""

    def __init__(self, cluster: str, hc: Any, path: str) -> None:
        kind = hc.WhichOneof("health_checker")
        if kind not in ("http_health_check", "tcp_health_check", "grpc_health_check"):
            raise UnsupportedConfig(f"{path}.{kind}: only HTTP, TCP and gRPC health checks")
        self.kind = kind.split("_")[0]
        self.raw = hc.SerializeToString(deterministic=True)
        self.timeout = _d(hc, "timeout", 1.0)
        self.interval = _d(hc, "interval", 1.0)
        self.initial_jitter = _d(hc, "initial_jitter", 0.0)
        self.interval_jitter = _d(hc, "interval_jitter", 0.0)
        self.jitter_percent = hc.interval_jitter_percent
        self.unhealthy_threshold = max(1, hc.unhealthy_threshold.value)
        self.healthy_threshold = max(1, hc.healthy_threshold.value)
        self.no_traffic_interval = _d(hc, "no_traffic_interval", 60.0)
        self.no_traffic_healthy_interval = _d(
            hc, "no_traffic_healthy_interval", self.no_traffic_interval
        )
        self.unhealthy_interval = _d(hc, "unhealthy_interval", self.interval)
        self.unhealthy_edge_interval = _d(hc, "unhealthy_edge_interval", self.unhealthy_interval)
        self.healthy_edge_interval = _d(hc, "healthy_edge_interval", self.interval)
        self.alt_port = hc.alt_port.value
        self.reuse_connection = (
            hc.reuse_connection.value if hc.HasField("reuse_connection") else True
        )
        self.event_log_path = hc.event_log_path
        self.always_log_failures = hc.always_log_health_check_failures
        if self.kind == "http":
            h = hc.http_health_check
            if h.codec_client_type not in (0,):  # HTTP1
                raise UnsupportedConfig(f"{path}.http_health_check.codec_client_type: only HTTP1")
            if h.method not in (0, 1):  # METHOD_UNSPECIFIED, GET
                raise UnsupportedConfig(f"{path}.http_health_check.method: only GET")
            self.expected_statuses = tuple((r.start, r.end) for r in h.expected_statuses) or (
                (200, 201),
            )
            self.retriable_statuses = tuple((r.start, r.end) for r in h.retriable_statuses)
            self.service_matcher = None
            if h.HasField("service_name_matcher"):  # x-envoy-upstream-healthchecked-cluster
                from sofamesh.proxy.routes import string_matcher

                self.service_matcher = string_matcher(
                    h.service_name_matcher, f"{path}.http_health_check.service_name_matcher"
                )
            host = h.host or cluster
            headers = [("host", host), ("user-agent", hp.USER_AGENT)]
            remove = {n.lower() for n in h.request_headers_to_remove}
            headers = [(k, v) for k, v in headers if k not in remove or k == "host"]
            for i, o in enumerate(h.request_headers_to_add):
                if "%" in o.header.value.replace("%%", ""):
                    raise UnsupportedConfig(
                        f"{path}.http_health_check.request_headers_to_add[{i}].header.value: "
                        "header formatters (%...%) are not implemented in health checks"
                    )
                k = o.header.key.lower()
                append = o.append.value if o.HasField("append") else o.append_action == 0
                if not append or o.append_action == 2:  # OVERWRITE_IF_EXISTS_OR_ADD
                    headers = [(n, v) for n, v in headers if n != k]
                if o.append_action == 1 and any(n == k for n, _ in headers):  # ADD_IF_ABSENT
                    continue
                headers.append((k, o.header.value.replace("%%", "%")))
            head = f"GET {h.path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
            self.http_request = (head + "\r\n").encode("latin-1")
        elif self.kind == "tcp":
            t = hc.tcp_health_check
            self.tcp_send = b"".join(
                _payloads([t.send] if t.HasField("send") else [], f"{path}.tcp_health_check.send")
            )
            self.tcp_receive = _payloads(t.receive, f"{path}.tcp_health_check.receive")
        else:
            g = hc.grpc_health_check
            self.grpc_authority = g.authority or cluster
            self.grpc_request = hp._encode_check_request(g.service_name)


def parse(cluster: Any, path: str) -> HcConfig:
    """The cluster's one health check (Envoy: `Multiple health checks not supported`)."""
    if len(cluster.health_checks) > 1:
        raise UnsupportedConfig(f"{path}.health_checks: Multiple health checks not supported")
    return HcConfig(cluster.name, cluster.health_checks[0], f"{path}.health_checks[0]")


# ---- the state machine ----------------------------------------------------------------


class HostState:
    __slots__ = ("first_check", "flags", "num_healthy", "num_unhealthy")

    def __init__(self, flags: int = FAILED_ACTIVE_HC) -> None:
        self.flags = flags
        self.num_healthy = 0
        self.num_unhealthy = 0
        self.first_check = True


UNCHANGED, CHANGED, PENDING = 0, 1, 2


class Session:
    """Checks one host forever: probe, record, sleep the interval Envoy would."""

    def __init__(self, checker: ClusterChecker, key: tuple[str, int], state: HostState) -> None:
        self.checker = checker
        self.key = key
        self.state = state
        # alt_port, or the endpoint's health_check_config.port_value: checks go there,
        # traffic does not
        self.port = checker.cfg.alt_port or checker.ports.get(key) or key[1]
        self.probe = hp.PROBES[checker.cfg.kind](checker.cfg, key[0], self.port)
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None
        self.probe.close()

    async def run(self) -> None:
        cfg = self.checker.cfg
        if cfg.initial_jitter > 0:
            await asyncio.sleep(random.random() * cfg.initial_jitter)
        while True:
            self.checker.bump("attempt")
            try:
                res = await asyncio.wait_for(self.probe.check(), cfg.timeout)
            except TimeoutError:
                self.probe.close()
                res = hp.FAIL_TIMEOUT
            except Exception as e:  # noqa: BLE001 - a probe's bug is a failed check
                log.warning("health check of %s:%d failed: %r", *self.key, e)
                self.probe.close()
                res = hp.FAIL_NETWORK
            await asyncio.sleep(self.checker.record(self, res))


class ClusterChecker:
    """One cluster's health checking: its sessions, stats and published flags."""

    def __init__(
        self,
        name: str,
        cfg: HcConfig,
        store: Any,
        publish: Callable[[str, dict, bool], None],
        traffic: Callable[[], bool],
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.publish = publish
        self.traffic = traffic
        self.sessions: dict[tuple[str, int], Session] = {}
        self.ports: dict[tuple[str, int], int] = {}  # Endpoint.health_check_config.port_value
        self.running = False
        self.first_round = asyncio.Event()  # set once every host had its first check
        p = f"cluster.{name}.health_check."
        self.counters = {n: store.counter(p + n) for n in COUNTERS}
        self.gauges = {n: store.gauge(p + n) for n in GAUGES}
        for s in (*self.counters.values(), *self.gauges.values()):
            s.used = True
        self.events = _EventLog(cfg.event_log_path) if cfg.event_log_path else None

    def bump(self, stat: str) -> None:
        self.counters[stat].value += 1

    def flags(self) -> dict[tuple[str, int], int]:
        return {k: s.state.flags for k, s in self.sessions.items()}

    def set_hosts(
        self,
        keys: list[tuple[str, int]],
        inherit: dict | None = None,
        ports: dict[tuple[str, int], int] | None = None,
    ) -> None:
        new = dict.fromkeys(keys)
        self.ports = ports or {}
        for k in [k for k in self.sessions if k not in new]:
            self.sessions.pop(k).stop()
        for k, s in list(self.sessions.items()):  # its health check port changed: anew
            if s.port != (self.cfg.alt_port or self.ports.get(k) or k[1]):
                self.sessions.pop(k).stop()
        for k in new:
            if k not in self.sessions:
                old = (inherit or {}).get(k)
                s = Session(self, k, old if old is not None else HostState())
                self.sessions[k] = s
                if self.running:
                    s.start()
        self._gauges()
        self._check_first_round()

    def start(self) -> None:
        if self.running:
            return
        self.running = True
        for s in self.sessions.values():
            s.start()
        self._check_first_round()

    def stop(self) -> None:
        self.running = False
        for s in self.sessions.values():
            s.stop()
        if self.events is not None:
            self.events.close()

    def _check_first_round(self) -> None:
        # no hosts yet (an EDS cluster before its endpoints) is no round
        if self.sessions and all(not s.state.first_check for s in self.sessions.values()):
            self.first_round.set()

    def _gauges(self) -> None:
        st = [s.state.flags for s in self.sessions.values()]
        self.gauges["healthy"].value = sum(1 for f in st if not f & FAILED_ACTIVE_HC)
        self.gauges["degraded"].value = sum(1 for f in st if f & DEGRADED_ACTIVE_HC)

    # Envoy's HealthCheckerImplBase::ActiveHealthCheckSession::handleSuccess/handleFailure
    def record(self, session: Session, res: int) -> float:
        st = session.state
        before = st.flags
        first = st.first_check
        if res in (hp.OK, hp.OK_DEGRADED):
            st.num_unhealthy = 0
            changed = UNCHANGED
            if st.flags & FAILED_ACTIVE_HC:
                st.num_healthy += 1
                if first or st.num_healthy == self.cfg.healthy_threshold:
                    st.flags &= ~(FAILED_ACTIVE_HC | ACTIVE_HC_TIMEOUT)
                    changed = CHANGED
                    self._log(session, "add_healthy_event", {"first_check": first})
                else:
                    changed = PENDING
            st.flags &= ~EXCLUDED_VIA_IMMEDIATE_HC_FAIL
            if st.flags & PENDING_ACTIVE_HC:
                st.flags &= ~PENDING_ACTIVE_HC
                changed = CHANGED
            degraded = res == hp.OK_DEGRADED
            if degraded != bool(st.flags & DEGRADED_ACTIVE_HC):
                st.flags ^= DEGRADED_ACTIVE_HC
                if changed == UNCHANGED:
                    changed = CHANGED
            self.bump("success")
            healthy = True
            if session.probe.verified:
                self.bump("verify_cluster")
        else:
            st.num_healthy = 0
            changed = UNCHANGED
            network = res in (hp.FAIL_NETWORK, hp.FAIL_TIMEOUT)
            if session.probe.exclude:
                st.flags |= EXCLUDED_VIA_IMMEDIATE_HC_FAIL
            if not st.flags & FAILED_ACTIVE_HC:
                st.num_unhealthy += 1
                if (not network and res != hp.FAIL_RETRIABLE) or (
                    st.num_unhealthy == self.cfg.unhealthy_threshold
                ):
                    st.flags |= FAILED_ACTIVE_HC
                    changed = CHANGED
                    self._log(session, "eject_unhealthy_event", {"failure_type": _FT[res]})
                else:
                    changed = PENDING
            if res == hp.FAIL_TIMEOUT and st.flags & FAILED_ACTIVE_HC:
                st.flags |= ACTIVE_HC_TIMEOUT
            else:
                st.flags &= ~ACTIVE_HC_TIMEOUT
            if st.flags & PENDING_ACTIVE_HC:
                st.flags &= ~PENDING_ACTIVE_HC
                changed = CHANGED
            if first or self.cfg.always_log_failures:
                ev: dict = {"failure_type": _FT[res], "first_check": first}
                if session.probe.status:  # HTTP: the status that failed the check
                    ev["http_status_code"] = session.probe.status
                self._log(session, "health_check_failure_event", ev)
            self.bump("failure")
            if session.probe.verified:
                self.bump("verify_cluster")
            if network:
                self.bump("network_failure")
            healthy = False
        st.first_check = False
        was_init = self.first_round.is_set()
        if first:
            self._check_first_round()
        if st.flags != before or was_init != self.first_round.is_set():
            self._gauges()
            self.publish(self.name, self.flags(), self.first_round.is_set())
        return self._interval(healthy, changed)

    def _interval(self, healthy: bool, changed: int) -> float:
        """Envoy's HealthCheckerImplBase::interval + intervalWithJitter (milliseconds)."""
        cfg = self.cfg
        if self.traffic():
            if not healthy:
                base = cfg.unhealthy_edge_interval if changed == PENDING else cfg.unhealthy_interval
            else:
                base = cfg.healthy_edge_interval if changed == PENDING else cfg.interval
        else:
            base = (
                cfg.no_traffic_healthy_interval
                if healthy and changed != PENDING
                else cfg.no_traffic_interval
            )
        ms = int(base * 1000)
        mod = cfg.jitter_percent * ms // 100
        if mod > 0:
            ms += random.randrange(mod)
        jit = int(cfg.interval_jitter * 1000)
        if jit > 0:
            ms += random.randrange(jit)
        return max(1, ms) / 1000.0

    def _log(self, session: Session, kind: str, body: dict) -> None:
        if self.events is not None:
            self.events.write(self.cfg.kind, self.name, session.key, kind, body)


_FT = {
    hp.FAIL_ACTIVE: "ACTIVE",
    hp.FAIL_RETRIABLE: "ACTIVE",
    hp.FAIL_NETWORK: "NETWORK",
    hp.FAIL_TIMEOUT: "NETWORK_TIMEOUT",
}
_TYPES = {"http": "HTTP", "tcp": "TCP", "grpc": "GRPC"}


class _EventLog:
    """`event_log_path`: one JSON HealthCheckEvent per line, as Envoy's file event logger."""

    def __init__(self, path: str) -> None:
        self.f = open(path, "a", buffering=1)  # noqa: SIM115 - kept open for the checker's life

    def write(self, kind: str, cluster: str, key: tuple[str, int], event: str, body: dict) -> None:
        """Fields in HealthCheckEvent's field order, as Envoy's JSON prints them."""
        import json

        now = time.time()
        ts = (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
        )
        rec: dict = {
            "health_checker_type": _TYPES[kind],
            "host": {
                "socket_address": {
                    "protocol": "TCP",
                    "address": key[0],
                    "port_value": key[1],
                    "resolver_name": "",
                    "ipv4_compat": False,
                    "network_namespace_filepath": "",
                }
            },
            "cluster_name": cluster,
        }
        if event in ("eject_unhealthy_event", "add_healthy_event"):
            rec[event] = body
            rec["timestamp"] = ts
        else:
            rec["timestamp"] = ts
            rec[event] = body
        rec["locality"] = {"region": "", "zone": "", "sub_zone": ""}
        self.f.write(json.dumps(rec, separators=(",", ":")) + "\n")

    def close(self) -> None:
        self.f.close()


# ---- the manager: checkers by cluster name --------------------------------------------


class HealthManager:
    """Every checked cluster of one sidecar, by name. A cluster rebuilt under its name (CDS)
    with the same health check keeps its hosts' states; another check starts afresh."""

    def __init__(self, store: Any, publish: Callable[[str, dict, bool], None]) -> None:
        self.store = store
        self.publish = publish
        self.checkers: dict[str, ClusterChecker] = {}
        self.running = False

    def update(
        self,
        name: str,
        cfg: HcConfig,
        keys: list[tuple[str, int]],
        traffic: Callable[[], bool],
        ports: dict[tuple[str, int], int] | None = None,
    ) -> ClusterChecker:
        ck = self.checkers.get(name)
        inherit = None
        if ck is None or ck.cfg.raw != cfg.raw:
            if ck is not None:
                ck.stop()
                if ck.cfg.raw == cfg.raw:
                    inherit = {k: s.state for k, s in ck.sessions.items()}
            ck = ClusterChecker(name, cfg, self.store, self.publish, traffic)
            self.checkers[name] = ck
        ck.traffic = traffic
        ck.set_hosts(keys, inherit, ports)
        if self.running:
            ck.start()  # a no-op when it runs already
        return ck

    def remove(self, name: str) -> None:
        ck = self.checkers.pop(name, None)
        if ck is not None:
            ck.stop()

    def start(self) -> None:
        self.running = True
        for ck in self.checkers.values():
            ck.start()

    def stop(self) -> None:
        self.running = False
        for ck in self.checkers.values():
            ck.stop()

    async def first_round(self, names: list[str], timeout: float) -> None:
        """Until every host of the named clusters had its first check (Envoy's cluster
        initialization waits for it), or `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            cks = [self.checkers.get(n) for n in names]
            if all(ck is not None for ck in cks):
                waits = [ck.first_round.wait() for ck in cks if ck is not None and ck.sessions]
                try:
                    await asyncio.wait_for(
                        asyncio.gather(*waits), max(0.0, deadline - time.monotonic())
                    )
                except TimeoutError:
                    pass
                return
            await asyncio.sleep(0.01)


def first_round_bound(manager: HealthManager) -> float:
    """How long start-up waits for first checks: each ends by its timeout (Envoy waits
    for them with no bound of its own)."""
    return 5.0 + max(
        (ck.cfg.initial_jitter + ck.cfg.timeout for ck in manager.checkers.values()), default=0.0
    )


# ---- the cluster side -----------------------------------------------------------------


class CheckedCluster(Cluster):
    """A Cluster with active health checking: `Host.healthy` (what the load balancer reads)
    is the EDS health AND no failing health-check flag. Flags arrive from its link."""

    def __init__(self, *args: Any, hc: HcConfig, link: Any, **kw: Any) -> None:
        self.hc = hc
        self.link = link
        self.hc_flags: dict[tuple[str, int], int] = {}
        self.eds_healthy: dict[tuple[str, int], bool] = {}
        self.announced = False
        self.hc_init = False  # the first round of checks is done (Envoy: cluster initialized)
        lb = kw["config"].common_lb_config
        self.merge_window = _d(lb, "update_merge_window", 1.0)
        self.last_update = float("-inf")
        self.merge_timer: asyncio.TimerHandle | None = None
        super().__init__(*args, **kw)

    def set_hosts(self, hosts: Any) -> None:
        hosts = list(hosts)
        eds = {(h.address, h.port): bool(h.healthy) for h in hosts}
        super().set_hosts(hosts)
        self.eds_healthy = eds
        self.hc_flags = {k: self.hc_flags.get(k, FAILED_ACTIVE_HC) for k in eds}
        self._apply()
        # a cluster built with no hosts yet (EDS, DNS; or a CDS update of a checked
        # cluster, still warming) must not take the hosts of the one serving under its name
        initial = not self.announced and not hosts
        self.announced = True
        self.link.hosts_changed(self, initial)

    def apply_flags(self, flags: dict[tuple[str, int], int], init: bool = False) -> None:
        """New flags from the checks: shown by admin at once; the load balancer sees them
        as Envoy's workers do, through the cluster's `update_merge_window` (1 s): the first
        change after the cluster initialized (its first round of checks) or after a quiet
        window applies at once, later ones within the window together when it ends."""
        for k, f in flags.items():
            if k in self.hc_flags:
                self.hc_flags[k] = f
        if not self.hc_init or self.merge_window <= 0:
            self.hc_init = self.hc_init or init
            self._apply()
            self.last_update = float("-inf")  # Envoy: initializing is no merged update
            return
        now = time.monotonic()
        if now - self.last_update > self.merge_window:
            self._apply()
        elif self.merge_timer is None:
            self.merge_timer = asyncio.get_running_loop().call_later(self.merge_window, self._apply)

    def _apply(self) -> None:
        if self.merge_timer is not None:
            self.merge_timer.cancel()
            self.merge_timer = None
        self.last_update = time.monotonic()
        for h in self.hosts:
            k = (h.address, h.port)
            h.healthy = self.eds_healthy.get(k, True) and not self.hc_flags.get(k, 0) & UNUSABLE
        self.update_health()  # membership_healthy, and panic mode (upstream.pyx)

    def hc_warm(self) -> bool:
        """Every host had its first check, or there is none (Envoy initializes a cluster,
        and a CDS cluster stops warming, then)."""
        return self.hc_init or not self.hosts

    async def wait_warm(self) -> None:
        while not self.hc_warm():  # the first checks end within their timeout
            await asyncio.sleep(0.01)

    def traffic(self) -> bool:
        # Envoy: upstream_cx_total.used()
        return bool(self.upstream_cx_total.used)  # type: ignore[attr-defined]

    def host_keys(self) -> list[tuple[str, int]]:
        return [(h.address, h.port) for h in self.hosts]

    def hc_ports(self) -> dict[tuple[str, int], int]:
        """Hosts whose endpoint names a health check port (health_check_config.port_value)."""
        return {(h.address, h.port): h.hc_port for h in self.hosts if h.hc_port}


class LocalLink:
    """One process: the Server's HealthManager checks the cluster; flags apply directly."""

    def __init__(self, store: Any) -> None:
        self.clusters: dict[str, CheckedCluster] = {}  # the latest cluster of each name
        self.manager = HealthManager(store, self._publish)

    def _publish(self, name: str, flags: dict, init: bool) -> None:
        cl = self.clusters.get(name)
        if cl is not None:
            cl.apply_flags(flags, init)

    def hosts_changed(self, cl: CheckedCluster, initial: bool = False) -> None:
        if initial and cl.name in self.manager.checkers:
            return
        self.clusters[cl.name] = cl
        ck = self.manager.update(cl.name, cl.hc, cl.host_keys(), cl.traffic, cl.hc_ports())
        cl.apply_flags(ck.flags(), ck.first_round.is_set())

    def remove(self, name: str) -> None:
        self.clusters.pop(name, None)
        self.manager.remove(name)

    async def start(self, wait_for: list[str]) -> None:
        self.manager.start()
        await self.manager.first_round(wait_for, first_round_bound(self.manager))

    def stop(self) -> None:
        self.manager.stop()


class RemoteLink:
    """A pool worker: the main process checks (proxy.workers); this worker tells it its
    checked clusters' hosts (`hc_hosts` events), that a cluster has seen traffic
    (`hc_traffic`) or is gone (`hc_remove`), and applies the `hc_flags` it pushes."""

    def __init__(self, send: Callable[[dict], None]) -> None:
        self.send = send
        self.clusters: dict[str, CheckedCluster] = {}
        self.live = False
        self.queued: list[dict] = []
        self.used: set[str] = set()
        self._watch: asyncio.Task | None = None
        self.flagged: set[str] = set()  # clusters the main process has sent flags for
        self._all_flagged: asyncio.Event | None = None

    def _emit(self, msg: dict) -> None:
        if self.live:
            self.send(msg)
        else:
            self.queued.append(msg)

    def hosts_changed(self, cl: CheckedCluster, initial: bool = False) -> None:
        if initial and cl.name in self.clusters:
            return
        prev = self.clusters.get(cl.name)
        if prev is not None and prev is not cl:  # a rebuilt cluster: flags so far, until pushed
            cl.apply_flags(prev.hc_flags, prev.hc_init)
        self.clusters[cl.name] = cl
        self._emit(
            {
                "event": "hc_hosts",
                "cluster": cl.name,
                "hc": base64.b64encode(cl.config.SerializeToString()).decode(),
                "hosts": [[a, p] for a, p in cl.host_keys()],
                "ports": [[a, p, hp] for (a, p), hp in cl.hc_ports().items()],
            }
        )

    def remove(self, name: str) -> None:
        self.clusters.pop(name, None)
        self._emit({"event": "hc_remove", "cluster": name})

    def apply(self, msg: dict) -> None:
        cl = self.clusters.get(msg["cluster"])
        if cl is not None:
            cl.apply_flags({(a, int(p)): int(f) for a, p, f in msg["flags"]}, msg["init"])
            self.flagged.add(cl.name)
            if self._all_flagged is not None and self.flagged >= set(self.clusters):
                self._all_flagged.set()

    async def current_flags(self, timeout: float) -> bool:
        """Until the main process has sent this worker the flags of each checked cluster
        (it answers the hc_hosts events with them once it has checked), or `timeout`: a
        restarted worker serves no request to a host the pool knows is failed."""
        if self.flagged >= set(self.clusters):
            return True
        self._all_flagged = asyncio.Event()
        try:
            await asyncio.wait_for(self._all_flagged.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def start(self, wait_for: list[str]) -> None:
        self._watch = asyncio.get_running_loop().create_task(self._watch_traffic())

    def go_live(self) -> None:
        """After the worker's ready frame: the queued events go to the main process."""
        self.live = True
        for m in self.queued:
            self.send(m)
        self.queued = []

    async def _watch_traffic(self) -> None:
        # Envoy's intervals change once the cluster has made a connection
        # (upstream_cx_total used); the main process learns it from any worker.
        while True:
            await asyncio.sleep(0.2)
            for name, cl in list(self.clusters.items()):
                if name not in self.used and cl.traffic() and self.live:
                    self.used.add(name)
                    self.send({"event": "hc_traffic", "cluster": name})

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()


class PoolHealth:
    """The main process of a worker pool: runs every check once and pushes each change of
    flags to every live worker (Envoy runs health checks on its main thread)."""

    def __init__(
        self, store: Any, broadcast: Callable[[dict], None], send_to: Callable[[int, dict], None]
    ) -> None:
        self.broadcast = broadcast
        self.send_to = send_to
        self.traffic: set[str] = set()
        self.manager = HealthManager(store, self._publish)
        self.manager.start()

    @staticmethod
    def _frame(name: str, flags: dict, init: bool) -> dict:
        return {
            "op": "hc_flags",
            "cluster": name,
            "flags": [[a, p, f] for (a, p), f in flags.items()],
            "init": init,
        }

    def _publish(self, name: str, flags: dict, init: bool) -> None:
        self.broadcast(self._frame(name, flags, init))

    def on_event(self, index: int, msg: dict) -> None:
        ev, name = msg.get("event"), msg.get("cluster", "")
        if ev == "hc_hosts":
            from envoy.config.cluster.v3 import cluster_pb2

            c = cluster_pb2.Cluster.FromString(base64.b64decode(msg["hc"]))
            try:
                cfg = parse(c, f"cluster {name}")
            except UnsupportedConfig as e:  # the worker built it, so this does not happen
                log.error("%s", e)
                return
            keys = [(a, int(p)) for a, p in msg["hosts"]]
            ports = {(a, int(p)): int(hp) for a, p, hp in msg.get("ports", ())}
            ck = self.manager.update(name, cfg, keys, lambda: name in self.traffic, ports)
            if any(not s.state.first_check for s in ck.sessions.values()):
                self.send_to(index, self._frame(name, ck.flags(), ck.first_round.is_set()))
        elif ev == "hc_traffic":
            self.traffic.add(name)
        elif ev == "hc_remove":
            self.manager.remove(name)

    async def first_round(self, names: list[str], timeout: float) -> None:
        await self.manager.first_round(names, timeout)

    def stop(self) -> None:
        self.manager.stop()
