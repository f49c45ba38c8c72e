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
    cdef public tuple access_logs       # tuple[TcpGrpcAccessLog, ...]: log_tcp(entry) at close
    # the chain's filter_state.ConnState when it shares state with upstream connections
    cdef public object conn_state
    cdef object sweeper                 # asyncio.TimerHandle | None
    cdef long long total_weight
    cdef Counter downstream_cx_total, downstream_cx_no_route, upstream_flush_total
    cdef Counter downstream_cx_rx_bytes_total, downstream_cx_tx_bytes_total
    cdef Counter idle_timeout
    cdef Gauge downstream_cx_active
    # the listener's own (listener.<name>.downstream_cx_*), when the listener is known
    cdef Counter lcx_total, lcx_destroy
    cdef Gauge lcx_active
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
    cdef bint eof_in                    # the client half-closed (FIN passed upstream)
    cdef bint eof_out                   # the upstream half-closed (FIN passed to the client)
    # for the access log (entry fields: TcpDownstream.log_entry)
    cdef double wall_start              # time.time() at accept
    cdef double mono_start              # loop time at accept
    cdef unsigned long long rx          # bytes from the client (all sent upstream)
    cdef unsigned long long tx          # bytes from the upstream (all sent to the client)
    cdef object peer                    # (ip, port) of the client
    cdef object local                   # (ip, port) the client connected to
    cdef object up_local                # (ip, port) of our upstream socket, or None
    cdef str flags                      # Envoy's response flag: "UH", "UF", or ""
    cdef str fail_reason                # UF: upstream_transport_failure_reason, as Envoy's
    # hot restart (proxy/hot_restart.py): the pair moves to the next process
    cdef bint moving                    # both sides stopped reading, their writes draining
    cdef bint moved                     # handed over: gone from here without a FIN or a log
    cdef tuple adopted                  # the new side: (Cluster, Host, upstream socket)
