# RPC proxy, upstream side (Bolt, Dubbo): a few multiplexed connections per host with
# request ids rewritten and restored, their pools, and what they share with the client side
# (rpc_proxy): the listener's stats, the failure reasons, the client interface.
#
# Contract: RpcUpstreams is the pool part of one listener's RpcProxyConfig. upstream_for()
# gives a connection to a host, connecting if the pool is short (the connect timeout is
# the connection's own timer). A call is put in `pending` under a fresh id and its bytes
# queued with send(); flush() writes the queue once the connection is made. Every pending
# call is answered exactly once: by the upstream's reply, its deadline (the sweeper), or
# the connection's end (fail_all), through its RpcClient.

from sofamesh._core.stats cimport Counter, Gauge, Histogram, Store
from sofamesh._core.upstream cimport Cluster, Host

cdef enum:
    P_BOLT = 1
    P_DUBBO = 2

cdef enum:
    # bytes queued for a connection still being made above which the listener stops
    # reading its clients, as for a full socket buffer (uvloop's default high-water mark)
    QUEUE_HIGH = 64 * 1024

# why a call is answered by the proxy (mapped to each protocol's status in rpc_proxy)
cdef enum:
    WHY_NO_ROUTE = 1
    WHY_UNKNOWN_CLUSTER = 2
    WHY_NO_HEALTHY = 3
    WHY_TIMEOUT = 4
    WHY_RESET = 5
    WHY_CONNECT_FAIL = 6
    WHY_CODEC = 7
    WHY_DRAINING = 8
    WHY_RBAC = 9
    WHY_QUOTA = 10      # over an RPC quota (rpc_quota)


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


cdef class RpcClient:
    """A client connection as its calls' upstream connections use it (rpc_proxy's
    DownstreamConn implements the methods)."""
    cdef bint closed
    cdef long long active               # its calls waiting for an upstream reply
    cdef void write(self, bytes data)   # queue a reply (written by flush)
    cdef void flush(self)
    cdef void local_error(self, object f, int why)  # queue the protocol's error reply to f
    cdef void set_reading(self)         # read or not, per flow control


cdef class Pending:
    cdef RpcClient down
    cdef object frame                   # BoltFrame | DubboFrame: the original request
    cdef unsigned long long orig_id
    cdef double start
    cdef double deadline
    cdef Cluster cluster
    cdef Host host


cdef class UpstreamConn:
    cdef RpcUpstreams cfg
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


cdef class RpcUpstreams:
    cdef public int proto
    cdef public dict clusters           # dict[str, Cluster]
    cdef public object loop
    cdef public int max_frame
    cdef public int conns_per_host
    cdef RpcStats st
    cdef bint _stopped                  # close_all(): new requests are refused
    cdef public int upstream_paused     # upstream connections whose write buffer is full
    cdef public set conns               # set[RpcClient]: the listener's client connections
    cdef dict pools                     # dict[Host, list[UpstreamConn]]
    cdef dict rr                        # dict[Host, int]
    cdef object sweeper                 # asyncio.TimerHandle | None
    cdef object reaper                  # asyncio.TimerHandle | None: pools of removed hosts
    cdef public double reap_interval    # seconds between looks for removed hosts (5)
    cdef UpstreamConn upstream_for(self, Cluster cluster, Host host)
    cdef void arm_sweeper(self)
    cdef void close_upstreams(self)
