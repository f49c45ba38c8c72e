# RPC proxy hot path (Bolt, Dubbo): downstream connections, routing by service/method,
# request ids rewritten onto a small pool of multiplexed upstream connections.
#
# Contract: RpcProxyConfig is built once per listener by sofamesh.filters.network (Python,
# from the Envoy config) and is immutable but for its connection pools; its route table
# is swapped whole. `protocol_factory()` gives the asyncio Protocol for each accepted
# connection. Clusters are sofamesh._core.upstream.Cluster objects shared with HTTP.

from sofamesh._core.rbac cimport NetworkRbac, RbacRequest
from sofamesh._core.stats cimport Counter, Gauge, Histogram, Store
from sofamesh._core.upstream cimport Cluster, Host

cdef enum:
    P_BOLT = 1
    P_DUBBO = 2

# route keys of a request, read the same way for every protocol (rpc_key)
cdef enum:
    RK_SERVICE = 0      # the interface
    RK_METHOD = 1
    RK_VERSION = 2
    RK_GROUP = 3

cdef object rpc_key(int proto, object frame, int key)          # str | None
cdef object rpc_header(int proto, object frame, str name)      # str | None: header/attachment

cdef enum:
    SM_EXACT = 0
    SM_PREFIX = 1
    SM_SUFFIX = 2
    SM_CONTAINS = 3
    SM_REGEX = 4
    SM_ANY = 5


cdef class StrMatch:
    cdef int kind
    cdef str value
    cdef bint ignore_case
    cdef object regex                   # re.Pattern | None
    cdef bint match(self, object s)


cdef class HeaderMatch:
    cdef str name
    cdef StrMatch sm                    # None: present_match
    cdef bint present
    cdef bint invert
    cdef bint match(self, object value)


cdef class RpcRoute:
    cdef StrMatch method                # None: any method
    cdef list headers                   # list[HeaderMatch]
    cdef str cluster                    # "" when weighted
    cdef list weighted                  # list[tuple[str, int]]
    cdef long long total_weight
    cdef str pick_cluster(self)


cdef class RpcRouteConfig:
    cdef str interface                  # "*" any
    cdef str group                      # "" any
    cdef str version                    # "" any
    cdef list routes                    # list[RpcRoute]
    cdef bint needs_method
    cdef bint needs_headers


cdef class RpcRouteTable:
    cdef list configs                   # list[RpcRouteConfig]
    cdef readonly tuple dubbo_keys      # tuple[bytes, ...]: attachments routing/timeouts read
    cdef RpcRoute match(self, int proto, object frame)


cdef class RpcStats:
    cdef Counter request, request_twoway, request_oneway, request_event
    cdef Counter request_decoding_error, request_decoding_success
    cdef Counter response, response_success, response_error, response_decoding_error
    cdef Counter local_response_success, local_response_error, local_response_business_exception
    cdef Counter response_decoding_success, response_business_exception
    cdef Counter response_error_caused_connection_close
    cdef Counter route_missing, unknown_cluster, no_healthy_upstream
    cdef Counter upstream_rq_timeout, upstream_reset, cx_total
    cdef Counter cx_destroy_local_with_active_rq, cx_destroy_remote_with_active_rq
    cdef Gauge request_active, cx_active
    cdef Histogram request_time_ms


cdef class Pending:
    cdef DownstreamConn down
    cdef object frame                   # BoltFrame | DubboFrame: the original request
    cdef unsigned long long orig_id
    cdef double start
    cdef double deadline
    cdef Cluster cluster
    cdef Host host


cdef class UpstreamConn:
    cdef RpcProxyConfig cfg
    cdef Cluster cluster
    cdef Host host
    cdef object transport
    cdef object decoder                 # BoltDecoder | DubboDecoder
    cdef dict pending                   # dict[int, Pending] by upstream request id
    cdef list out                       # list[bytes] queued until connected / flushed
    cdef bint connected
    cdef bint closed
    cdef bint dirty
    # counted in cfg.upstream_paused: tpaused, or over QUEUE_HIGH bytes queued while connecting
    cdef bint paused
    cdef bint tpaused                   # its transport's write buffer is full
    cdef bint local_close               # we closed it (protocol error, stop): destroy_local
    cdef unsigned long long next_id
    cdef long long queued               # bytes queued before the connect completed
    cdef object connect_timer           # asyncio.TimerHandle | None: the connect_timeout
    cdef object connect_task            # asyncio.Task | None: the create_connection
    cdef void send(self, bytes data)
    cdef void flush(self)
    cdef void _hold(self)
    cdef void _release(self)
    cdef void shut(self)
    cdef void fail_all(self, int why)
    cdef void _done_c(self, Pending p, double now, bint ok)


cdef class DownstreamConn:
    cdef RpcProxyConfig cfg
    cdef object transport
    cdef object decoder
    cdef list out                       # list[bytes] replies gathered during one read
    cdef list dirty                     # list[UpstreamConn] with queued requests
    cdef bint closed
    cdef bint reading                   # transport reading (not paused by flow control)
    cdef bint write_paused              # the client's socket buffer is full
    cdef bytes held                     # a read that came while paused, taken on resume
    cdef long long active
    cdef void set_reading(self)
    cdef void write(self, bytes data)
    cdef void flush(self)
    cdef void handle_bolt(self, object f)
    cdef void handle_dubbo(self, object f)
    cdef void forward(self, object f, unsigned long long orig_id, bint oneway, double timeout_s)
    cdef void local_error(self, object f, int why)
    cdef bint rbac_allows(self, object f) except -1


cdef class RpcRbacRequest(RbacRequest):
    """A call as RBAC reads it: `:service`, `:method`, `:version`, `:group` pseudo-headers,
    other names from the headers/attachments, addresses from the client connection."""
    cdef int proto
    cdef object frame                   # BoltFrame | DubboFrame
    cdef object transport               # the client connection


cdef class RpcProxyConfig:
    cdef public int proto
    cdef public str stat_prefix
    cdef public RpcRouteTable table
    cdef public dict clusters           # dict[str, Cluster]
    cdef public object loop
    cdef public double default_timeout
    cdef public int max_frame
    cdef public int conns_per_host
    cdef bint _draining                 # the listener drains: Dubbo clients were told READONLY
    cdef bint _stopped                  # close_all(): new requests are refused
    cdef public int upstream_paused     # upstream connections whose write buffer is full
    cdef public set conns               # set[DownstreamConn]
    cdef dict pools                     # dict[Host, list[UpstreamConn]]
    cdef dict rr                        # dict[Host, int]
    cdef RpcStats st
    cdef object sweeper                 # asyncio.TimerHandle | None
    cdef object reaper                  # asyncio.TimerHandle | None: pools of removed hosts
    cdef public double reap_interval    # seconds between looks for removed hosts (5)
    cdef public NetworkRbac rbac        # sofamesh.filters.rpc.rbac, or None
    cdef RpcRbacRequest rbac_req        # reused: checks never overlap
    cdef tuple _keys_src                # the table's dubbo_keys _keys was made from
    cdef tuple _keys                    # tuple[bytes, ...]: attachments routing and RBAC read
    cdef UpstreamConn upstream_for(self, Cluster cluster, Host host)
    cdef tuple dubbo_keys(self)
    cdef void arm_sweeper(self)
