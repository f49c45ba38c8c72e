# RPC proxy hot path (Bolt, Dubbo), client side: downstream connections, routing by
# service/method (rpc_routes), calls put on the multiplexed upstream connections of
# rpc_upstream.
#
# Contract: RpcProxyConfig is built once per listener by sofamesh.filters.network (Python,
# from the Envoy config) and is immutable but for its connection pools; its route table
# is swapped whole. `protocol_factory()` gives the asyncio Protocol for each accepted
# connection. Clusters are sofamesh._core.upstream.Cluster objects shared with HTTP.

from sofamesh._core.rbac cimport NetworkRbac, RbacRequest
from sofamesh._core.codecs.rpcframe cimport RpcFrame
from sofamesh._core.rpc_quota cimport RpcQuota
from sofamesh._core.rpc_routes cimport RpcRouteTable
from sofamesh._core.rpc_tracing cimport RpcTracing
from sofamesh._core.rpc_upstream cimport RpcClient, RpcUpstreams


cdef class DownstreamConn(RpcClient):
    cdef RpcProxyConfig cfg
    cdef object transport
    cdef object decoder
    cdef list out                       # list[bytes] replies gathered during one read
    cdef list dirty                     # list[UpstreamConn] with queued requests
    cdef bint reading                   # transport reading (not paused by flow control)
    cdef bint write_paused              # the client's socket buffer is full
    cdef bytes held                     # a read that came while paused, taken on resume
    cdef bint moving                    # hot restart: stopped reading, to be handed over
    cdef void handle_bolt(self, object f)
    cdef void handle_dubbo(self, object f)
    cdef void forward(self, object f, unsigned long long orig_id, bint oneway, double timeout_s)
    cdef bint rbac_allows(self, object f) except -1
    cdef bint quota_admits(self, object f) except -1    # rpc_quota, for this call


cdef class RpcRbacRequest(RbacRequest):
    """A call as RBAC reads it: `:service`, `:method`, `:version`, `:group` pseudo-headers,
    other names from the headers/attachments, addresses from the client connection."""
    cdef RpcFrame frame
    cdef object transport               # the client connection


cdef class RpcProxyConfig(RpcUpstreams):
    cdef public RpcQuota quota          # sofamesh.filters.rpc quota filters, or None
    cdef public str stat_prefix
    cdef public RpcRouteTable table
    cdef public double default_timeout
    cdef bint _draining                 # the listener drains: Dubbo clients were told READONLY
    cdef public NetworkRbac rbac        # sofamesh.filters.rpc.rbac, or None
    cdef public RpcTracing tracing      # sofamesh.filters.rpc.tracing, or None (tracing off)
    cdef RpcRbacRequest rbac_req        # reused: checks never overlap
    cdef tuple _keys_src                # the table's header_names _keys was made from
    cdef object _keys_rbac              # the rbac _keys was made with
    cdef object _keys_tracing           # the tracing _keys was made with
    cdef tuple _keys                    # tuple[bytes, ...]: attachments routing and RBAC read
    cdef tuple dubbo_keys(self)
