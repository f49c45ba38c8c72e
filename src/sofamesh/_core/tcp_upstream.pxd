# A terminated CONNECT's upstream (Envoy's TcpUpstream, router upstreams/http/tcp): a raw
# TCP connection to the chosen host, one per CONNECT stream, never pooled nor reused.
#
# Contract (conn_pool.pxd's PoolConn): `start` binds the stream; the request's headers are
# not sent (the connection is the tunnel); once connected the stream gets a synthesized
# `:status 200` head (`_on_upstream_head`), then the upstream's bytes by `_write` and the
# upstream's end by `_tunnel_closed`. Request bytes come by `write` / `encode_data`
# (end_stream: a half close, write_eof).

from sofamesh._core.conn_pool cimport PoolConn


cdef class TcpUpstreamConn(PoolConn):
    cdef object loop                # the worker's event loop
    cdef object task                # the connect task, or None
    cdef list out                   # list[bytes] | None: request bytes before the connection
    cdef bint half_close            # the request ended (write_eof once connected)
    cdef void _gone(self)
