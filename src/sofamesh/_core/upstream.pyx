# Upstream clusters, hosts and load balancers (Envoy semantics); see upstream.pxd.

import hashlib
from bisect import bisect_left

from sofamesh._core.router cimport rng_next
from sofamesh._core.stats cimport Counter, Store
from sofamesh._core.zone_aware cimport ZONE_FAIL

LB_POLICIES = {"ROUND_ROBIN": LB_ROUND_ROBIN, "LEAST_REQUEST": LB_LEAST_REQUEST,
               "RANDOM": LB_RANDOM, "RING_HASH": LB_RING_HASH}


def hash64(bytes data):
    """The 64-bit hash of ring points and request hash keys."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class WaitQueue(list):
    """Host.waiting: the requests waiting for a connection, oldest first (deque's methods
    that the pools use: append, popleft, remove, len, truth).

    PERF(benchmarks/xds_scale.py): an empty deque is 624 bytes and a 10,000-service mesh
    holds 50,000 hosts, nearly all of which never queue a request; an empty list is 56.
    Queues stay short (a pool's max_pending), so popleft's copy costs nothing measurable."""

    __slots__ = ()

    def popleft(self):
        return self.pop(0)


cdef class Host:
    def __init__(self, str address, int port, int weight=1, str hostname=""):
        self.address = address
        self.port = port
        # an internal address (envoy://<listener>/<endpoint id>, port 0) is shown as Envoy
        # shows it, without a port
        self.host_port = address if port == 0 and address.startswith("envoy://") \
            else f"{address}:{port}"
        self.hostname = hostname
        self.weight = weight if weight > 0 else 1
        self.healthy = True
        self.idle = []
        self.waiting = WaitQueue()
        self.h2conns = []
        self.cw = 0
        self.removed = False
        self.locality = ""

    def __repr__(self):
        return f"Host({self.address}:{self.port} w={self.weight})"

    cdef int outcome(self, int result) except -1:
        """A request's outcome for outlier detection: an HTTP status, or OUTCOME_*."""
        if self.outlier is None:
            return 0
        return (<OutlierMonitor>self.outlier).put(result)


def connect(loop, factory, Host host, Cluster cluster):
    """loop.create_connection(factory, ...) to `host` (a coroutine): plain TCP to
    host:port, or through the cluster's transport when it has one (`tls`:
    proxy.tls.UpstreamTransport, or proxy.internal_listener.InternalTransport for internal
    addresses); each has connect(loop, factory, host). Every upstream pool dials here;
    `dialer` (proxy/upstream_bind.py): upstream_bind_config, TCP keepalive."""
    if cluster.dialer is not None:
        return cluster.dialer.connect(loop, factory, host, cluster.tls)
    if cluster.tls is None:
        return loop.create_connection(factory, host.address, host.port)
    return cluster.tls.connect(loop, factory, host)


cdef class OutlierMonitor:
    def __init__(self, detector, tuple key, bint split, long long max_5xx, long long max_gw,
                 long long max_lo):
        self.detector = detector
        self.key = key
        self.split = split
        self.max_5xx = max_5xx
        self.max_gw = max_gw
        self.max_lo = max_lo
        self.base_healthy = True

    cdef int put(self, int result) except -1:
        # Envoy's putResult: without the split every result is an HTTP status (a connect
        # failure 503, a timeout 504, an RPC error 500); with it, local-origin results have
        # their own consecutive counter and success rate, and an RPC error counts as a 503.
        # An HTTP response's status is counted as it is either way (Envoy 1.40's router:
        # a 500 is no gateway failure with the split either; checked against the binary)
        if result > 0:
            return self._http(result)
        if not self.split:
            if result == OUTCOME_CONNECT_FAILED:
                return self._http(503)
            if result == OUTCOME_TIMEOUT:
                return self._http(504)
            if result == OUTCOME_EXT_FAILED:
                return self._http(500)
            if result == OUTCOME_EXT_SUCCESS or result == OUTCOME_CONNECT_SUCCESS_FINAL:
                return self._http(200)
            return 0
        if result == OUTCOME_CONNECT_SUCCESS or result == OUTCOME_CONNECT_SUCCESS_FINAL:
            return self._local(False)
        if result == OUTCOME_CONNECT_FAILED or result == OUTCOME_TIMEOUT:
            return self._local(True)
        if result == OUTCOME_EXT_FAILED:
            return self._http(503)
        self._http(200)
        return self._local(False)

    cdef int _http(self, int code) except -1:
        self.ext_total += 1
        if 500 <= code < 600:
            if 502 <= code <= 504:
                self.n_gw += 1
                if self.n_gw == self.max_gw:
                    self.detector.consecutive(self, EJECT_CONSECUTIVE_GATEWAY_FAILURE)
            else:
                self.n_gw = 0
            self.n_5xx += 1
            if self.n_5xx == self.max_5xx:
                self.detector.consecutive(self, EJECT_CONSECUTIVE_5XX)
        else:
            self.ext_success += 1
            self.n_5xx = 0
            self.n_gw = 0
        return 0

    cdef int _local(self, bint failed) except -1:
        self.lo_total += 1
        if failed:
            self.n_lo += 1
            if self.n_lo == self.max_lo:
                self.detector.consecutive(self, EJECT_CONSECUTIVE_LOCAL_ORIGIN_FAILURE)
        else:
            self.lo_success += 1
            self.n_lo = 0
        return 0

    # Python API (proxy.outlier, tests)
    def report(self, int result):
        return self.put(result)


cdef Py_ssize_t _healthy(tuple hosts):
    cdef Host h
    cdef Py_ssize_t n = 0
    for h in hosts:
        if h.healthy:
            n += 1
    return n


cdef class HostSet:
    def __init__(self, tuple hosts):
        self.hosts = hosts
        self.weighted = len({(<Host>h).weight for h in hosts}) > 1


def level_loads(counts, healthy, int overprovisioning, double panic_threshold):
    """Envoy's per-priority load and panic (LoadBalancerBase), from each level's host and
    healthy host counts: ([load percent per level], [panic per level]). Integer
    arithmetic as Envoy's; the loads add up to 100."""
    cdef Py_ssize_t k = len(counts), i
    health = [0] * k
    for i in range(k):
        if counts[i]:
            health[i] = min(100, overprovisioning * healthy[i] // counts[i])
    total = min(100, sum(health))
    loads = [0] * k
    if total > 0:
        left = 100
        first = None
        for i in range(k):
            if first is None and health[i] > 0:
                first = i
            loads[i] = min(left, health[i] * 100 // total)
            left -= loads[i]
        if left:
            loads[first] += left
    if panic_threshold == 0 and total == 0:
        loads[0] = 100
        return loads, [False] * k
    panic = [False] * k
    for i in range(k):
        share = 100.0 * healthy[i] / counts[i] if counts[i] else 0.0
        panic[i] = total != 100 and share < panic_threshold
    if all(panic):  # recalculateLoadInTotalPanic: by host counts, healthy or not
        hosts = sum(counts)
        loads = [0] * k
        if hosts == 0:
            loads[0] = 100
        else:
            left = 100
            for i in range(k):
                loads[i] = 100 * counts[i] // hosts
                left -= loads[i]
            for i in range(k):
                if counts[i]:
                    loads[i] += left
                    break
    return loads, panic


CLUSTER_COUNTERS = (
    "upstream_rq_total", "upstream_rq_completed", "upstream_rq_1xx", "upstream_rq_2xx",
    "upstream_rq_3xx", "upstream_rq_4xx", "upstream_rq_5xx", "upstream_rq_timeout",
    "upstream_rq_per_try_timeout", "upstream_rq_retry", "upstream_rq_retry_success",
    "upstream_rq_retry_overflow", "upstream_rq_pending_total", "upstream_rq_pending_overflow",
    "upstream_rq_tx_reset", "upstream_rq_rx_reset", "upstream_cx_total",
    "upstream_cx_http1_total", "upstream_cx_connect_fail", "upstream_cx_connect_timeout",
    "upstream_cx_overflow", "upstream_cx_none_healthy", "upstream_cx_destroy",
    "upstream_cx_destroy_local", "upstream_cx_destroy_remote", "upstream_cx_protocol_error",
    "upstream_cx_rx_bytes_total", "upstream_cx_tx_bytes_total", "upstream_cx_http2_total",
    "lb_healthy_panic", "upstream_cx_idle_timeout", "upstream_cx_max_duration_reached",
)
CLUSTER_GAUGES = (
    "upstream_cx_active", "upstream_rq_active", "upstream_rq_pending_active",
    "membership_total", "membership_healthy",
)
CLUSTER_HISTOGRAMS = ("upstream_rq_time", "upstream_cx_connect_ms")


cdef class Cluster:
    def __init__(self, str name, Store store, *, hosts=(), str lb_policy="ROUND_ROBIN",
                 double connect_timeout=5.0, long long max_connections=1024,
                 long long max_pending=1024, long long max_requests=1024,
                 long long max_retries=3, int choice_count=2, config=None,
                 int per_connection_buffer_limit=1048576, int max_requests_per_connection=0,
                 int ring_size=1024, bint enable_trailers=False, tuple h2=None,
                 double idle_timeout=3600.0, double max_connection_duration=0.0):
        if lb_policy not in LB_POLICIES:
            raise ValueError(f"unsupported lb_policy {lb_policy}")
        self.name = name
        self.config = config
        self.lb_policy = LB_POLICIES[lb_policy]
        self.ring_size = ring_size if ring_size > 0 else 1024
        self.choice_count = choice_count if choice_count >= 2 else 2
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.max_requests = max_requests
        self.max_retries = max_retries
        self.per_connection_buffer_limit = per_connection_buffer_limit
        self.max_requests_per_connection = max_requests_per_connection
        self.idle_sweep = IdleSweep(idle_timeout) if idle_timeout > 0 else None
        self.max_connection_duration = max_connection_duration
        self.enable_trailers = enable_trailers
        self.h2 = h2
        self.rr = 0
        self.store = store
        self.prefix = f"cluster.{name}."
        self.code_counters = {}
        # PERF(benchmarks/xds_scale.py): the cluster's stats as one StatGroup (named only
        # when /stats reads them); a cluster rebuilt under its name gets the same group.
        grp = store.group(self.prefix, CLUSTER_COUNTERS, CLUSTER_GAUGES, CLUSTER_HISTOGRAMS)
        # in the order of the name tuples (_check_stat_order); PERF(benchmarks/xds_scale.py):
        # one setattr per stat was a fifth of a cluster's construction
        cdef tuple c = grp.c, g = grp.g, h = grp.h
        self.upstream_rq_total = c[0]
        self.upstream_rq_completed = c[1]
        self.upstream_rq_1xx = c[2]
        self.upstream_rq_2xx = c[3]
        self.upstream_rq_3xx = c[4]
        self.upstream_rq_4xx = c[5]
        self.upstream_rq_5xx = c[6]
        self.upstream_rq_timeout = c[7]
        self.upstream_rq_per_try_timeout = c[8]
        self.upstream_rq_retry = c[9]
        self.upstream_rq_retry_success = c[10]
        self.upstream_rq_retry_overflow = c[11]
        self.upstream_rq_pending_total = c[12]
        self.upstream_rq_pending_overflow = c[13]
        self.upstream_rq_tx_reset = c[14]
        self.upstream_rq_rx_reset = c[15]
        self.upstream_cx_total = c[16]
        self.upstream_cx_http1_total = c[17]
        self.upstream_cx_connect_fail = c[18]
        self.upstream_cx_connect_timeout = c[19]
        self.upstream_cx_overflow = c[20]
        self.upstream_cx_none_healthy = c[21]
        self.upstream_cx_destroy = c[22]
        self.upstream_cx_destroy_local = c[23]
        self.upstream_cx_destroy_remote = c[24]
        self.upstream_cx_protocol_error = c[25]
        self.upstream_cx_rx_bytes_total = c[26]
        self.upstream_cx_tx_bytes_total = c[27]
        self.upstream_cx_http2_total = c[28]
        self.lb_healthy_panic = c[29]
        self.upstream_cx_idle_timeout = c[30]
        self.upstream_cx_max_duration_reached = c[31]
        self.upstream_cx_active = g[0]
        self.upstream_rq_active = g[1]
        self.upstream_rq_pending_active = g[2]
        self.membership_total = g[3]
        self.membership_healthy = g[4]
        self.upstream_rq_time = h[0]
        self.upstream_cx_connect_ms = h[1]
        self.panic_threshold = 50.0  # Envoy's default; Server sets the cluster's own
        self.overprovisioning = 140
        if hosts or self.lb_policy == LB_RING_HASH:
            self.set_hosts(hosts)
        else:  # what set_hosts(()) leaves (an EDS cluster before its endpoints)
            self.hosts = ()
            self.levels = None
            self.panic = False
            self.membership_total.set(0)
            self.membership_healthy.set(0)

    def set_hosts(self, hosts):
        """Replaces the host set (a DNS refresh); hosts that stay keep their pools."""
        cdef Host h
        old = {(h.address, h.port): h for h in (self.hosts or ())}
        new = []
        for h in hosts:
            prev = old.pop((h.address, h.port), None)
            if prev is not None:
                prev.weight = h.weight
                prev.priority = h.priority
                prev.locality = h.locality
                prev.locality_weight = h.locality_weight
                prev.hc_port = h.hc_port
                prev.hostname = h.hostname
                if prev.outlier is not None:  # an ejected host stays out (proxy.outlier)
                    (<OutlierMonitor>prev.outlier).base_healthy = h.healthy
                    prev.healthy = h.healthy and not (<OutlierMonitor>prev.outlier).ejected
                else:
                    prev.healthy = h.healthy
                new.append(prev)
            else:
                new.append(h)
        for h in old.values():
            h.removed = True
            for c in h.idle:
                c.close()
            h.idle = []
            for c in list(h.h2conns):
                c.close()
        self.hosts = tuple(new)
        self.weighted = len({h.weight for h in new}) > 1
        if self.lb_policy == LB_RING_HASH:
            self._build_ring()
        self._build_levels()
        self.membership_total.set(len(new))
        if self.outlier is not None:  # monitors for new hosts, removed ones forgotten
            self.outlier.hosts_changed()
        self.update_health()

    def update_health(self):
        """After host health changed (set_hosts, health checks): membership_healthy, and
        whether the cluster is in panic, as Envoy decides it for one priority: the healthy
        share is under healthy_panic_threshold and, with the overprovisioning factor, not
        100% available (no hosts at all: no panic, nothing to choose). With priority
        levels: each level's load and panic (level_loads)."""
        cdef Host h
        cdef Py_ssize_t n = len(self.hosts), healthy = 0
        for h in self.hosts:
            if h.healthy:
                healthy += 1
        self.membership_healthy.set(healthy)
        if self.levels is not None:
            self._level_health()
        else:
            self.panic = (
                n > 0
                and 100.0 * healthy < self.panic_threshold * n
                and self.overprovisioning * healthy < 100 * n
            )
        if self.watchers:
            for f in list(self.watchers.values()):
                f()

    def _build_levels(self):
        """Groups the hosts into priority levels (gaps are empty levels, as in Envoy) and,
        with locality-weighted balancing, each level into localities in config order.
        One level without locality weights or zone routing leaves `levels` None:
        choose()'s fast path."""
        cdef Host h
        cdef HostSet s, loc
        top = max([h.priority for h in self.hosts], default=0)
        if (
            top == 0 and not self.locality_weighted and self.zone is None
        ) or self.lb_policy == LB_RING_HASH:
            self.levels = None
            return
        old = {}
        if self.levels is not None:  # round robin state survives an update
            for i, s in enumerate(self.levels):
                old[i] = s
        grouped = [[] for _ in range(top + 1)]
        for h in self.hosts:
            grouped[h.priority].append(h)
        levels = []
        for i, hs in enumerate(grouped):
            s = HostSet(tuple(hs))
            if i in old:
                s.rr = (<HostSet>old[i]).rr
            if self.locality_weighted:
                by = {}
                for h in hs:
                    if h.locality not in by:
                        by[h.locality] = []
                    by[h.locality].append(h)
                s.localities = []
                for lh in by.values():
                    loc = HostSet(tuple(lh))
                    loc.weight = (<Host>lh[0]).locality_weight
                    s.localities.append(loc)
            levels.append(s)
        self.levels = levels

    def _level_health(self):
        """Envoy's priority load (LoadBalancerBase::recalculatePerPriorityState and
        recalculatePerPriorityPanic, host counts as weights): a level's availability is
        min(100, overprovisioning x healthy / hosts); the levels share 100% in order of
        priority by availability over the normalized total; a level is in panic when the
        total is under 100 and its healthy share under healthy_panic_threshold; when all
        levels are, each gets load in proportion to its host count."""
        cdef HostSet s, loc
        cdef list levels = self.levels
        counts = []
        healthy = []
        for s in levels:
            counts.append(len(s.hosts))
            healthy.append(_healthy(s.hosts))
        loads, panic = level_loads(counts, healthy, self.overprovisioning, self.panic_threshold)
        end = 0
        for i, s in enumerate(levels):
            s.load = loads[i]
            end += loads[i]
            s.load_end = end
            s.panic = panic[i]
            if s.localities is not None:
                for loc in s.localities:
                    n = len(loc.hosts)
                    ok = _healthy(loc.hosts)
                    loc.effective = (
                        loc.weight * min(1.0, self.overprovisioning / 100.0 * ok / n) if n else 0.0
                    )
        self.panic = all(panic)

    def level_state(self):
        """[(priority, load percent, panic, [(locality weight, effective weight), ...])]
        (admin, tests); [] without priority levels."""
        cdef HostSet s, loc
        out = []
        for i, s in enumerate(self.levels or ()):
            locs = [(loc.weight, loc.effective) for loc in (s.localities or ())]
            out.append((i, s.load, s.panic, locs))
        return out

    def _build_ring(self):
        """Consistent hash ring (Envoy's RING_HASH): each host gets points in proportion
        to its weight, at least ring_size in all; a key maps to the next point clockwise."""
        cdef Host h
        cdef long long total = sum(h.weight for h in self.hosts)
        pts = []
        for h in self.hosts:
            n = max(1, (self.ring_size * h.weight + total - 1) // total) if total else 0
            key = f"{h.address}:{h.port}_".encode()
            for i in range(n):
                pts.append((hash64(key + str(i).encode()), h))
        pts.sort(key=lambda p: p[0])
        self.ring_keys = [p[0] for p in pts]
        self.ring_hosts = [p[1] for p in pts]

    cdef Host choose_hash(self, unsigned long long hv):
        """RING_HASH: the host owning hv's point, or the next healthy one clockwise."""
        cdef Host h
        cdef Py_ssize_t n, i, k
        if self.lb_policy != LB_RING_HASH or not self.ring_keys:
            return self.choose()
        n = len(self.ring_keys)
        i = bisect_left(self.ring_keys, hv)
        if self.panic:  # every host, healthy or not (Envoy's panic mode)
            self.lb_healthy_panic.inc()
            return self.ring_hosts[i % n]
        for k in range(n):
            h = self.ring_hosts[(i + k) % n]
            if h.healthy:
                return h
        return None

    cdef Host choose(self):
        cdef Host h, best, c
        cdef Py_ssize_t n = len(self.hosts), _k
        cdef long long total
        cdef double score, bscore
        # panic: any host will do (Envoy's panic mode), else the healthy ones only
        cdef bint anyh = self.panic
        if self.levels is not None:
            return self._choose_level()
        if n == 0:
            return None
        if anyh:
            self.lb_healthy_panic.inc()
        if n == 1:
            h = self.hosts[0]
            return h if (h.healthy or anyh) else None
        if self.lb_policy == LB_ROUND_ROBIN:
            if self.weighted:
                # smooth weighted round robin: deterministic, spreads heavy hosts out
                best = None
                total = 0
                for h in self.hosts:
                    if not (h.healthy or anyh):
                        continue
                    h.cw += h.weight
                    total += h.weight
                    if best is None or h.cw > best.cw:
                        best = h
                if best is not None:
                    best.cw -= total
                return best
            for _k in range(n):
                self.rr += 1
                h = self.hosts[self.rr % n]
                if h.healthy or anyh:
                    return h
            return None
        if self.lb_policy == LB_RANDOM or self.lb_policy == LB_RING_HASH:
            # RING_HASH without a hash key: a random host, as Envoy
            for _k in range(n):
                h = self.hosts[rng_next() % n]
                if h.healthy or anyh:
                    return h
            return self._first_healthy()
        # LEAST_REQUEST: power of N choices; weighted hosts score rq_active/weight (Envoy's
        # active_request_bias 1.0).
        best = None
        bscore = 0
        for _k in range(self.choice_count):
            c = self.hosts[rng_next() % n]
            if not (c.healthy or anyh):
                continue
            score = (c.rq_active + 1.0) / c.weight
            if best is None or score < bscore:
                best = c
                bscore = score
        if best is None:
            return self._first_healthy()
        return best

    cdef Host _choose_level(self):
        """Envoy's choosePriority (a random number mod 100 against the levels' cumulative
        loads), then in that level: any host in panic, else a locality by smooth weighted
        round robin over effective weights (locality-weighted), else (priority 0 with zone
        routing) a locality by zone_aware.ZoneRouting, else its healthy hosts."""
        cdef HostSet s = None, loc, best
        cdef int r = <int>(rng_next() % 100), z
        cdef double total
        for s in self.levels:
            if r < s.load_end:
                break
        if s is None or not s.hosts:
            return None
        if s.panic:
            self.lb_healthy_panic.inc()
            if self.zone is not None and self.zone.fail_on_panic:
                return None
            return self._pick_in(s, True)
        if self.zone is not None and s is self.levels[0]:
            z = self.zone.choose()
            if z >= 0:
                return self._pick_in(<HostSet>self.zone.localities[z], False)
            if z == ZONE_FAIL:
                return None
        if s.localities is not None:
            best = None
            total = 0
            for loc in s.localities:
                if loc.effective <= 0:
                    continue
                loc.cw += loc.effective
                total += loc.effective
                if best is None or loc.cw > best.cw:
                    best = loc
            if best is not None:
                best.cw -= total
                return self._pick_in(best, False)
        return self._pick_in(s, False)

    cdef Host _pick_in(self, HostSet s, bint anyh):
        """choose()'s policies over one level's or locality's hosts."""
        cdef Host h, best, c
        cdef tuple hosts = s.hosts
        cdef Py_ssize_t n = len(hosts), _k
        cdef long long total
        cdef double score, bscore
        if n == 0:
            return None
        if self.lb_policy == LB_ROUND_ROBIN:
            if s.weighted:
                best = None
                total = 0
                for h in hosts:
                    if not (h.healthy or anyh):
                        continue
                    h.cw += h.weight
                    total += h.weight
                    if best is None or h.cw > best.cw:
                        best = h
                if best is not None:
                    best.cw -= total
                return best
            for _k in range(n):
                s.rr += 1
                h = hosts[s.rr % n]
                if h.healthy or anyh:
                    return h
            return None
        if self.lb_policy == LB_LEAST_REQUEST:
            best = None
            bscore = 0
            for _k in range(self.choice_count):
                c = hosts[rng_next() % n]
                if not (c.healthy or anyh):
                    continue
                score = (c.rq_active + 1.0) / c.weight
                if best is None or score < bscore:
                    best = c
                    bscore = score
            if best is not None:
                return best
        else:
            for _k in range(n):
                h = hosts[rng_next() % n]
                if h.healthy or anyh:
                    return h
        for h in hosts:
            if h.healthy:
                return h
        return None

    cdef Host _first_healthy(self):
        cdef Host h
        for h in self.hosts:
            if h.healthy:
                return h
        return None

    cdef void count_status(self, int status):
        cdef int cls = status // 100
        cdef Counter c
        if cls == 2:
            self.upstream_rq_2xx.inc()
        elif cls == 5:
            self.upstream_rq_5xx.inc()
        elif cls == 4:
            self.upstream_rq_4xx.inc()
        elif cls == 3:
            self.upstream_rq_3xx.inc()
        else:
            self.upstream_rq_1xx.inc()
        c = self.code_counters.get(status)
        if c is None:
            c = self.store.counter(f"{self.prefix}upstream_rq_{status}")
            self.code_counters[status] = c
        c.inc()

    # Python API (tests, admin)
    def pick(self):
        return self.choose()

    def __repr__(self):
        return f"Cluster({self.name!r}, {len(self.hosts)} hosts)"


def _check_stat_order():
    """Cluster.__init__ hands out its StatGroup's stats by position: each attribute must be
    the stat of its name (checked once at import)."""
    from sofamesh._core.stats import Store as _Store
    cl = Cluster("order-check", _Store())
    grp = cl.store.group(cl.prefix, CLUSTER_COUNTERS, CLUSTER_GAUGES, CLUSTER_HISTOGRAMS)
    for names, objs in ((CLUSTER_COUNTERS, grp.c), (CLUSTER_GAUGES, grp.g),
                        (CLUSTER_HISTOGRAMS, grp.h)):
        for n, o in zip(names, objs):
            if getattr(cl, n) is not o:
                raise AssertionError(f"Cluster.{n} is not its stat")


_check_stat_order()
