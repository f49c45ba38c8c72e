from collections.abc import Callable, Iterable
from typing import Any

from sofamesh._core.idle_sweep import IdleSweep
from sofamesh._core.stats import Counter, Gauge, Histogram, Store
from sofamesh._core.zone_aware import ZoneRouting

LB_POLICIES: dict[str, int]
CLUSTER_COUNTERS: tuple[str, ...]
CLUSTER_GAUGES: tuple[str, ...]
CLUSTER_HISTOGRAMS: tuple[str, ...]

def hash64(data: bytes) -> int: ...

class WaitQueue(list[Any]):
    def popleft(self) -> Any: ...

class Host:
    address: str
    port: int
    hostname: str
    weight: int
    healthy: bool
    rq_active: int
    cx_active: int
    rq_total: int
    rq_success: int
    rq_error: int
    rq_timeout: int
    cx_total: int
    cx_connect_fail: int
    idle: list[Any]
    waiting: WaitQueue
    removed: bool
    outlier: OutlierMonitor | None  # outlier detection (proxy/outlier.py)
    priority: int
    locality: str
    locality_weight: int
    hc_port: int
    def __init__(self, address: str, port: int, weight: int = 1, hostname: str = "") -> None: ...

def connect(loop: Any, factory: Any, host: Host, cluster: Cluster) -> Any: ...

class OutlierMonitor:
    detector: Any  # proxy.outlier.Detector | WorkerDetector
    key: tuple[str, int]
    split: bool
    max_5xx: int
    max_gw: int
    max_lo: int
    n_5xx: int
    n_gw: int
    n_lo: int
    ext_total: int
    ext_success: int
    lo_total: int
    lo_success: int
    ejected: bool
    base_healthy: bool
    def __init__(
        self,
        detector: Any,
        key: tuple[str, int],
        split: bool,
        max_5xx: int,
        max_gw: int,
        max_lo: int,
    ) -> None: ...
    def report(self, result: int) -> int: ...

class HostSet:
    hosts: tuple[Host, ...]
    def __init__(self, hosts: tuple[Host, ...]) -> None: ...

class Cluster:
    name: str
    config: Any
    original_dst: Any  # proxy.original_dst.OriginalDstHosts | None
    hosts: tuple[Host, ...]
    lb_policy: int
    ring_size: int
    connect_timeout: float
    max_connections: int
    max_pending: int
    max_requests: int
    max_retries: int
    enable_trailers: bool
    max_requests_per_connection: int
    # common_http_protocol_options: idle_timeout's sweep (None: 0), max_connection_duration
    idle_sweep: IdleSweep | None
    max_connection_duration: float
    upstream_cx_idle_timeout: Counter
    upstream_cx_max_duration_reached: Counter
    tls: Any  # proxy.tls.UpstreamTransport | None
    dialer: Any  # proxy.upstream_bind.Dialer | None
    panic_threshold: float  # common_lb_config.healthy_panic_threshold, percent
    panic: bool
    locality_weighted: bool  # common_lb_config.locality_weighted_lb_config (localities.py)
    overprovisioning: int  # the assignment's overprovisioning factor, percent
    lb_healthy_panic: Counter
    outlier: Any  # proxy.outlier.Detector | WorkerDetector | None
    zone: ZoneRouting | None  # zone-aware routing (proxy/zone_aware.py)
    watchers: dict[str, Callable[[], None]] | None  # called after each update_health
    membership_healthy: Gauge
    upstream_rq_total: Counter
    upstream_cx_active: Gauge
    upstream_rq_time: Histogram
    def __init__(
        self,
        name: str,
        store: Store,
        *,
        hosts: Iterable[Host] = (),
        lb_policy: str = "ROUND_ROBIN",
        connect_timeout: float = 5.0,
        max_connections: int = 1024,
        max_pending: int = 1024,
        max_requests: int = 1024,
        max_retries: int = 3,
        choice_count: int = 2,
        config: Any = None,
        per_connection_buffer_limit: int = 1048576,
        max_requests_per_connection: int = 0,
        ring_size: int = 1024,
        enable_trailers: bool = False,
        h2: tuple | None = None,
        idle_timeout: float = 3600.0,
        max_connection_duration: float = 0.0,
    ) -> None: ...
    def set_hosts(self, hosts: Iterable[Host]) -> None: ...
    def update_health(self) -> None: ...
    def _build_levels(self) -> None: ...
    def pick(self) -> Host | None: ...
