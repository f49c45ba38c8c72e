# tcp_proxy with tunneling_config (Envoy's TcpProxy.TunnelingConfig): each downstream
# connection becomes one HTTP request to the cluster, `CONNECT <hostname>` (or `POST
# <post_path>` with use_post) on the cluster's pool (HTTP/2 when the cluster has HTTP/2
# protocol options, else HTTP/1.1). A 2xx answer opens the tunnel: the client's bytes go
# as the request's body (HTTP/2 DATA under flow control; HTTP/1.1 raw bytes), the
# response's body comes back as bytes; each side's end is a half close. Anything else
# closes the client's connection. The request speaks through conn_pool.pxd's interface
# (TunnelStream is the pool's UpstreamCallbacks), so both HTTP codecs are reused as is.

from cpython.bytes cimport PyBytes_GET_SIZE

from sofamesh._core.rpc_tcp cimport TcpProxyConfig, TcpDownstream
from sofamesh._core.conn_pool cimport PoolConn, UpstreamCallbacks, ConnPool, POOL_OVERFLOW
from sofamesh._core.headers cimport HeaderMap, HeaderList
from sofamesh._core.http1_upstream cimport Http1ConnPool
from sofamesh._core.http2_upstream cimport Http2ConnPool
from sofamesh._core.upstream cimport Cluster, Host
from sofamesh._core.stats cimport Store
import struct
import time
from socket import SOL_SOCKET, SO_LINGER
from sofamesh.proxy.original_dst import local_address as _local_address


cdef bytes LINGER_RESET = struct.pack("ii", 1, 0)    # SO_LINGER on, 0 s: close sends RST


cdef class TunnelConfig(TcpProxyConfig):
    cdef object request_parts       # callable(transport) -> (authority, [(name, value), ...])
    cdef bint use_post
    cdef bytes post_path
    cdef ConnPool pool1             # the cluster's pool: HTTP/1.1
    cdef ConnPool pool2             # ... or HTTP/2 (Cluster.h2 set)

    def __init__(self, str stat_prefix, list weighted, dict clusters, Store store, loop,
                 request_parts, bint use_post=False, bytes post_path=b"/", **kw):
        TcpProxyConfig.__init__(self, stat_prefix, weighted, clusters, store, loop, **kw)
        self.request_parts = request_parts
        self.use_post = use_post
        self.post_path = post_path
        self.pool1 = Http1ConnPool(loop)
        self.pool2 = Http2ConnPool(loop)

    def protocol_factory(self):
        return TunnelDownstream(self)


cdef class TunnelStream(UpstreamCallbacks):
    """The tunnel's HTTP request, as the pool sees it."""
    cdef TunnelDownstream down
    cdef Cluster cluster
    cdef Host host
    cdef PoolConn up
    cdef bint h2
    cdef bint open                  # a 2xx came: bytes flow
    cdef bint done

    cdef bint _wants_connection(self):
        return not self.done and not self.down.closed

    cdef int _attach(self, PoolConn c) except -1:
        cdef TunnelConfig cfg = <TunnelConfig>self.down.cfg
        cdef HeaderList h
        self.up = c
        c.start(self, False, True)      # HTTP/1: the request body is unframed (raw)
        authority, extra = cfg.request_parts(self.down.transport)
        if cfg.use_post:
            h = HeaderList(method=b"POST", path=cfg.post_path, authority=authority)
        else:
            # HTTP/1.1: `CONNECT authority`; HTTP/2: no :path (http2_map.request_list)
            h = HeaderList(method=b"CONNECT", path=authority, authority=authority)
        for k, v in extra:
            h.add(k, v)
        c.encode_headers(h, False)
        return 0

    cdef int _fail(self, int kind, PoolConn c) except -1:
        self.up = None
        self.down.flags = "UF"
        return self._end()

    cdef int _upstream_read(self) except -1:
        self.down.last_active = self.down.cfg.loop.time()
        return 0

    cdef int _after_upstream_read(self) except -1:
        return 0

    cdef bint _on_upstream_head(self, PoolConn c, HeaderMap rh, bint end_stream) except -1:
        cdef int status = rh.get_status()
        cdef TunnelDownstream d = self.down
        if status < 200 or status >= 300 or end_stream:
            # Envoy: not a 2xx, the tunnel fails and the client's connection closes
            self.up = None
            c.ds = None
            c.abort()
            d.flags = "UF"
            self._end()
            return False
        self.open = True
        if d.early:
            data = b"".join(d.early)
            d.early = []
            c.encode_data(data, False)
        if d.eof_in:
            self._half_close_up()
        elif not d.closed:
            d.transport.resume_reading()
        return True

    cdef int _half_close_up(self) except -1:
        cdef PoolConn c = self.up
        if c is None:
            return 0
        if self.h2:
            return c.encode_data(b"", True)
        if c.transport is not None and c.transport.can_write_eof():
            c.transport.write_eof()
        return 0

    cdef int _on_upstream_data(self, bytes data, bint end_stream) except -1:
        cdef TunnelDownstream d = self.down
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        if n and not d.closed:
            d.cfg.downstream_cx_tx_bytes_total.add(n)
            d.tx += n
            d.transport.write(data)
        if end_stream:
            # the response's end: a half close towards the client (_on_upstream_complete
            # follows and settles the request side)
            d.eof_out = True
            if not d.eof_in and not d.closed and d.transport.can_write_eof():
                d.transport.write_eof()
        return 0

    cdef int _on_upstream_trailers(self, HeaderList trailers) except -1:
        return self._on_upstream_data(b"", True)

    cdef int _on_upstream_complete(self, PoolConn c) except -1:
        # both ways ended (the client's FIN went as END_STREAM): the HTTP/2 stream is
        # done and its connection goes on; else the request side is cut (a reset) and
        # the client's connection closes at its FIN
        self.up = None
        self.done = True
        if c is not None:
            if self.h2 and self.down.eof_in:
                c.release()
            else:
                c.abort()
        if self.down.eof_in:
            self.down.close()
        return 0

    cdef int _reset(self) except -1:
        self.up = None
        return self._end()

    cdef int _write(self, bytes data) except -1:
        return self._on_upstream_data(data, False)

    cdef int _tunnel_closed(self) except -1:
        self.up = None
        return self._end()

    cdef int _pause(self, int reason) except -1:
        if not self.down.closed:
            self.down.transport.pause_reading()
        return 0

    cdef int _resume(self, int reason) except -1:
        if not self.down.closed and self.open:
            self.down.transport.resume_reading()
        return 0

    cdef int _end(self) except -1:
        cdef PoolConn c = self.up
        cdef TunnelDownstream d = self.down
        self.done = True
        if c is not None:
            self.up = None
            c.ds = None
            c.abort()
        if d.flags and not d.closed and d.transport is not None:
            # a failed tunnel: Envoy closes the client's connection with its bytes unread,
            # so the client sees a reset; here they were read (early), so reset it
            sock = d.transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(SOL_SOCKET, SO_LINGER, LINGER_RESET)
                except OSError:
                    pass
        d.close()
        return 0


cdef class TunnelDownstream(TcpDownstream):
    cdef TunnelStream st

    def connection_made(self, transport):
        cdef TunnelConfig cfg = <TunnelConfig>self.cfg
        cdef Cluster cl
        cdef Host h
        cdef TunnelStream st
        self.transport = transport
        self.last_active = cfg.loop.time()
        if cfg.access_logs:
            self.wall_start = time.time()
            self.mono_start = self.last_active
            self.peer = transport.get_extra_info("peername")
            self.local = _local_address(transport)
        cfg.conns.add(self)
        cfg.arm_sweeper()
        cfg.downstream_cx_total.inc()
        cfg.downstream_cx_active.inc()
        cl = cfg.clusters.get(cfg.pick())
        h = None
        if cl is not None:
            h = cl.original_dst.pick(transport, None) if cl.original_dst is not None \
                else cl.choose()
        if h is None:
            cfg.downstream_cx_no_route.inc()
            self.flags = "UH"
            if cl is not None:
                cl.upstream_cx_none_healthy.inc()
            transport.close()
            return
        transport.pause_reading()
        st = TunnelStream()
        st.down = self
        st.cluster = cl
        st.host = h
        st.h2 = cl.h2 is not None
        self.st = st
        cl.upstream_rq_total.inc()
        if (cfg.pool2 if st.h2 else cfg.pool1).new_stream(cl, h, st) == POOL_OVERFLOW:
            cl.upstream_rq_pending_overflow.inc()
            self.flags = "UO"
            st._end()

    def data_received(self, data):
        cdef TunnelStream st = self.st
        self.last_active = self.cfg.loop.time()
        self.cfg.downstream_cx_rx_bytes_total.add(len(data))
        self.rx += len(data)
        if st is not None and st.open and st.up is not None:
            st.up.encode_data(bytes(data), False)
        else:
            self.early.append(bytes(data))
            self.transport.pause_reading()

    def eof_received(self):
        cdef TunnelStream st = self.st
        self.eof_in = True
        if self.eof_out or st is None or st.done:
            return False
        if st.open:
            st._half_close_up()
        return True

    def connection_lost(self, exc):
        cdef TunnelStream st = self.st
        if st is not None and not st.done:
            st.done = True
            if st.up is not None:
                c = st.up
                st.up = None
                (<PoolConn>c).ds = None
                (<PoolConn>c).abort()
        TcpDownstream.connection_lost(self, exc)

    def hand_over(self):
        return None             # a tunnel does not move to a new process
