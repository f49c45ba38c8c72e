# tcp_proxy hot path: a downstream connection piped to one upstream connection, bytes as is.
from sofamesh._core.upstream cimport Cluster, Host
from sofamesh._core.stats cimport Counter, Gauge

cdef class TcpProxyConfig:
    cdef public str stat_prefix
    cdef public dict clusters           # dict[str, Cluster]
    cdef public list weighted           # list[tuple[str, int]]: (cluster, weight)
    cdef public object loop
    cdef public double connect_timeout
    cdef public set conns               # set[TcpDownstream]
    cdef public bint draining
    cdef public double idle_timeout_s   # 0: none
    cdef object sweeper                 # asyncio.TimerHandle | None
    cdef long long total_weight
    cdef Counter downstream_cx_total, downstream_cx_no_route, upstream_flush_total
    cdef Counter downstream_cx_rx_bytes_total, downstream_cx_tx_bytes_total
    cdef Counter idle_timeout
    cdef Gauge downstream_cx_active
    cdef str pick(self)

cdef class TcpUpstream:
    cdef TcpDownstream down
    cdef object transport
    cdef Cluster cluster
    cdef Host host

cdef class TcpDownstream:
    cdef TcpProxyConfig cfg
    cdef object transport
    cdef TcpUpstream up
    cdef list early                     # list[bytes] read before the upstream connected
    cdef bint closed
    cdef bint up_ready
    cdef double last_active             # loop time of the last byte either way
