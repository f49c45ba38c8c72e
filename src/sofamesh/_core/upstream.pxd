# Upstream clusters: hosts, load balancers and circuit-breaker state.
#
# Contract: a Cluster's `hosts` tuple is replaced whole (DNS refresh builds new Host objects
# and calls set_hosts); `choose()` runs per request in C. Connection pools live on Host
# (`idle`, `waiting`) and are driven by sofamesh._core.http_proxy.

from sofamesh._core.idle_sweep cimport IdleSweep
from sofamesh._core.stats cimport Counter, Gauge, Histogram, Store
from sofamesh._core.zone_aware cimport ZoneRouting

# Host.outcome() results that are not HTTP statuses (Envoy's Outlier::Result)
cdef enum:
    OUTCOME_CONNECT_FAILED = -1     # LocalOriginConnectFailed: connect failure, reset
    OUTCOME_TIMEOUT = -2            # LocalOriginTimeout: request (or per-try) timeout
    OUTCOME_CONNECT_SUCCESS = -3    # LocalOriginConnectSuccess: a connection for the request
    OUTCOME_EXT_FAILED = -4         # ExtOriginRequestFailed: an RPC error reply
    OUTCOME_EXT_SUCCESS = -5        # ExtOriginRequestSuccess: an RPC success reply
    OUTCOME_CONNECT_SUCCESS_FINAL = -6  # LocalOriginConnectSuccessFinal: tcp_proxy connected

# envoy.data.cluster.v3.OutlierEjectionType
cdef enum:
    EJECT_CONSECUTIVE_5XX = 0
    EJECT_CONSECUTIVE_GATEWAY_FAILURE = 1
    EJECT_CONSECUTIVE_LOCAL_ORIGIN_FAILURE = 3

cdef enum:
    LB_ROUND_ROBIN = 0
    LB_LEAST_REQUEST = 1
    LB_RANDOM = 2
    LB_RING_HASH = 3


cdef class Host:
    cdef readonly str address
    cdef readonly int port
    cdef readonly str host_port         # "address:port", as access logs write it
    # Endpoint.hostname, else the DNS name this host was resolved from ("" for STATIC)
    cdef public str hostname
    cdef public int weight
    cdef public bint healthy
    cdef public long long rq_active
    cdef public long long cx_active
    cdef public unsigned long long rq_total
    cdef public unsigned long long rq_success
    cdef public unsigned long long rq_error
    cdef public unsigned long long rq_timeout
    cdef public unsigned long long cx_total
    cdef public unsigned long long cx_connect_fail
    cdef public list idle               # list[http_proxy.UpstreamConn], keep-alive pool
    cdef public object waiting          # collections.deque[DownstreamConn] waiting for a conn
    cdef long long cw                   # smooth weighted round robin state
    cdef public bint removed            # dropped from the cluster (DNS change)
    cdef public list h2conns            # list[http2_upstream.H2Connection]: multiplexed
    # outlier detection (proxy.outlier): the host's OutlierMonitor, or None; the router and
    # the RPC proxy report each request's outcome (an HTTP status or an OUTCOME_* value)
    cdef public object outlier          # upstream.OutlierMonitor
    # LocalityLbEndpoints: priority level, locality ("region/zone/sub_zone") and its
    # load_balancing_weight (0: unset); Endpoint.health_check_config.port_value (0: unset)
    cdef public int priority
    cdef public str locality
    cdef public int locality_weight
    cdef public int hc_port
    cdef int outcome(self, int result) except -1


cdef class HostSet:
    """A priority level, or a locality within one (Envoy's HostSet / locality entry):
    its hosts and the load balancer's state over them. Built by Cluster.set_hosts only
    when the cluster has more than one priority or locality-weighted balancing."""
    cdef readonly tuple hosts           # tuple[Host, ...]
    cdef unsigned long long rr
    cdef bint weighted
    cdef readonly bint panic            # a priority level in panic: any of its hosts
    cdef readonly int load              # a priority level's share of requests (percent)
    cdef int load_end                   # cumulative load up to and with this level
    cdef readonly list localities       # list[HostSet] (locality-weighted), or None
    cdef readonly int weight            # a locality's load_balancing_weight
    cdef readonly double effective      # weight x min(1, healthy share x overprovisioning)
    cdef double cw                      # smooth weighted round robin over localities


cdef class Cluster:
    cdef readonly str name
    # envoy.config.cluster.v3.Cluster; for a CDS cluster built from its shape
    # (Server._build_cluster), the shape's message, shared: its name and EDS service name
    # are empty (the cluster's own message is DynamicConfig's _DynCluster.config)
    cdef public object config
    cdef readonly tuple hosts           # tuple[Host, ...]
    cdef readonly int lb_policy
    cdef list ring_keys                 # RING_HASH: sorted 64-bit points
    cdef list ring_hosts                # RING_HASH: the host of each point
    cdef public int ring_size           # RING_HASH: minimum_ring_size (Envoy: 1024)
    cdef bint weighted
    cdef unsigned long long rr
    cdef int choice_count
    cdef public double connect_timeout
    cdef public long long max_connections
    cdef public long long max_pending
    cdef public long long max_requests
    cdef public long long max_retries
    cdef public long long cx_active
    cdef public long long rq_active
    cdef public long long pending_active
    cdef public long long retries_active
    cdef public int per_connection_buffer_limit
    cdef public int max_requests_per_connection
    # HttpProtocolOptions.common_http_protocol_options: idle_timeout's sweep of the HTTP
    # pools' idle connections (None: 0, disabled; Envoy's default is an hour), and
    # max_connection_duration in seconds (0: none), a timer per connection from its connect
    cdef public IdleSweep idle_sweep
    cdef public double max_connection_duration
    # HttpProtocolOptions explicit_http_config.http_protocol_options.enable_trailers: the
    # HTTP/1 codec sends request trailers and decodes response trailers (Envoy's default: off)
    cdef public bint enable_trailers
    # stats
    cdef Store store
    cdef str prefix
    cdef dict code_counters               # int -> Counter
    cdef public Counter upstream_rq_total
    cdef public Counter upstream_rq_completed
    cdef public Counter upstream_rq_1xx
    cdef public Counter upstream_rq_2xx
    cdef public Counter upstream_rq_3xx
    cdef public Counter upstream_rq_4xx
    cdef public Counter upstream_rq_5xx
    cdef public Counter upstream_rq_timeout
    cdef public Counter upstream_rq_per_try_timeout
    cdef public Counter upstream_rq_retry
    cdef public Counter upstream_rq_retry_success
    cdef public Counter upstream_rq_retry_overflow
    cdef public Counter upstream_rq_pending_total
    cdef public Counter upstream_rq_pending_overflow
    cdef public Counter upstream_rq_tx_reset
    cdef public Counter upstream_rq_rx_reset
    cdef public Counter upstream_cx_total
    cdef public Counter upstream_cx_http1_total
    cdef public Counter upstream_cx_connect_fail
    cdef public Counter upstream_cx_connect_timeout
    cdef public Counter upstream_cx_overflow
    cdef public Counter upstream_cx_none_healthy
    cdef public Counter upstream_cx_destroy
    cdef public Counter upstream_cx_destroy_local
    cdef public Counter upstream_cx_destroy_remote
    cdef public Counter upstream_cx_protocol_error
    cdef public Counter upstream_cx_rx_bytes_total
    cdef public Counter upstream_cx_tx_bytes_total
    cdef public Gauge upstream_cx_active
    cdef public Gauge upstream_rq_active
    cdef public Gauge upstream_rq_pending_active
    cdef public Gauge membership_total
    cdef public Gauge membership_healthy
    cdef public Histogram upstream_rq_time
    cdef public Histogram upstream_cx_connect_ms
    # transport_socket / transport_socket_matches (envoy.transport_sockets.tls), or None:
    # proxy.tls.UpstreamTransport; connect_kw(host) -> create_connection's ssl keywords
    cdef public object tls
    cdef public object dialer           # proxy.upstream_bind.Dialer | None: bind, keepalive

    # HTTP/2 upstream (HttpProtocolOptions explicit_http_config.http2_protocol_options):
    # (max_concurrent_streams, initial_stream_window_size, initial_connection_window_size),
    # or None for HTTP/1.1
    cdef public tuple h2
    cdef public Counter upstream_cx_http2_total
    cdef public Counter upstream_cx_idle_timeout
    cdef public Counter upstream_cx_max_duration_reached
    # common_lb_config.healthy_panic_threshold (percent; Envoy's default 50, 0 = never):
    # `panic` (set by update_health) makes choose() take any host, healthy or not
    cdef public double panic_threshold
    cdef public bint panic
    cdef public Counter lb_healthy_panic
    # outlier_detection: proxy.outlier.Detector (told of every set_hosts), or None
    cdef public object outlier
    # priorities and localities (proxy/localities.py reads them): ClusterLoadAssignment.policy's
    # overprovisioning_factor (percent, Envoy's default 140), common_lb_config
    # .locality_weighted_lb_config, and the priority levels (list[HostSet]) when there
    # is more than one or localities are weighted; None is the common case's fast path
    cdef public int overprovisioning
    cdef public bint locality_weighted
    cdef readonly list levels
    # zone-aware routing over priority 0 (proxy/zone_aware.py), or None; `watchers`
    # (dict[str, Callable[[], None]], or None) are called after each update_health: the
    # zone state of this cluster and of those whose local cluster this is is recomputed
    cdef public ZoneRouting zone
    cdef public dict watchers
    # ORIGINAL_DST: proxy.original_dst.OriginalDstHosts (pick(transport, header) -> Host),
    # which the router and tcp_proxy ask instead of choose(); None otherwise
    cdef public object original_dst

    cdef Host choose(self)
    cdef Host _choose_level(self)
    cdef Host _pick_in(self, HostSet s, bint anyh)
    cdef Host choose_hash(self, unsigned long long h)
    cdef Host _first_healthy(self)
    cdef void count_status(self, int status)


cdef class OutlierMonitor:
    """One host's outlier counters (Envoy's DetectorHostMonitorImpl), fed per request in C;
    proxy.outlier.Detector owns the ejection decisions, timers and stats."""
    cdef public object detector         # proxy.outlier.Detector: consecutive(monitor, type)
    cdef public tuple key               # (address, port)
    cdef public bint split              # split_external_local_origin_errors
    cdef public long long max_5xx       # consecutive_5xx
    cdef public long long max_gw        # consecutive_gateway_failure
    cdef public long long max_lo        # consecutive_local_origin_failure
    cdef public long long n_5xx
    cdef public long long n_gw
    cdef public long long n_lo
    # success-rate bucket being written (the Detector swaps it out each interval)
    cdef public unsigned long long ext_total
    cdef public unsigned long long ext_success
    cdef public unsigned long long lo_total
    cdef public unsigned long long lo_success
    cdef public bint ejected            # FAILED_OUTLIER_CHECK
    cdef public bint base_healthy       # the host's health without ejection (EDS, checks)
    cdef int put(self, int result) except -1
    cdef int _http(self, int code) except -1
    cdef int _local(self, bint failed) except -1
