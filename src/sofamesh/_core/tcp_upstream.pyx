# A terminated CONNECT's upstream: a raw TCP connection per stream; see tcp_upstream.pxd.

import asyncio

from cpython.bytes cimport PyBytes_GET_SIZE

from sofamesh._core.conn_pool cimport UpstreamCallbacks
from sofamesh._core.headers cimport HeaderMap, HeaderList
from sofamesh._core.http_common cimport (
    mono, FAIL_CONNECT, FAIL_CONNECT_TIMEOUT, FAIL_RESET, PAUSE_UPSTREAM_FULL,
)
from sofamesh._core.upstream cimport Cluster, Host, OUTCOME_CONNECT_SUCCESS
from sofamesh._core.upstream import connect as dial_host


cdef class TcpUpstreamConn(PoolConn):
    def __cinit__(self, Cluster cluster, Host host, loop):
        self.cluster = cluster
        self.host = host
        self.loop = loop
        self.reusable = False
        cluster.cx_active += 1
        host.cx_active += 1
        host.cx_total += 1
        cluster.upstream_cx_total.inc()
        cluster.upstream_cx_active.inc()
        self.task = loop.create_task(self._connect())

    async def _connect(self):
        cdef Cluster cl = self.cluster
        cdef double t0 = mono()
        try:
            await asyncio.wait_for(dial_host(self.loop, lambda: self, self.host, cl),
                                   cl.connect_timeout)
        except asyncio.TimeoutError:
            cl.upstream_cx_connect_timeout.inc()
            self._connect_failed(FAIL_CONNECT_TIMEOUT)
        except OSError:
            self._connect_failed(FAIL_CONNECT)
        except asyncio.CancelledError:
            self._connect_failed(-1)
        else:
            cl.upstream_cx_connect_ms.record((mono() - t0) * 1000.0)
        finally:
            self.task = None

    def _connect_failed(self, int kind):
        cdef UpstreamCallbacks d = self.ds
        if self.closed:
            return
        self.closed = True
        self._gone()
        if kind >= 0:
            self.cluster.upstream_cx_connect_fail.inc()
            self.host.cx_connect_fail += 1
        self.ds = None
        if d is not None:
            try:
                d._fail(kind if kind >= 0 else FAIL_RESET, self)
            except Exception as exc:
                (<object>d)._internal_error(exc)

    cdef void _gone(self):
        cdef Cluster cl = self.cluster
        cl.cx_active -= 1
        self.host.cx_active -= 1
        cl.upstream_cx_active.dec()
        cl.upstream_cx_destroy.inc()

    def connection_made(self, transport):
        cdef UpstreamCallbacks d = self.ds
        self.transport = transport
        transport.set_write_buffer_limits(high=self.cluster.per_connection_buffer_limit)
        if self.closed or d is None:        # timed out, cancelled or abandoned meanwhile
            self.closed = True
            transport.abort()
            return
        self.connected = True
        self.host.outcome(OUTCOME_CONNECT_SUCCESS)
        if self.out is not None:
            b = b"".join(self.out)
            self.out = None
            self.write(b)
        if self.half_close and transport.can_write_eof():
            transport.write_eof()
        try:
            # Envoy's TcpUpstream: the pool is ready, the stream gets a 200 head
            d._on_upstream_head(self, HeaderList(status=200), False)
            d._after_upstream_read()        # HTTP/2: the HEADERS leave now
        except Exception as exc:
            (<object>d)._internal_error(exc)

    cdef int start(self, UpstreamCallbacks ds, bint head_req, bint upgrade) except -1:
        self.ds = ds
        return 0

    cdef int encode_headers(self, HeaderMap h, bint end_stream) except -1:
        if end_stream:
            return self.encode_data(b"", True)
        return 0

    cdef int encode_data(self, bytes data, bint end_stream) except -1:
        if PyBytes_GET_SIZE(data):
            self.write(data)
        if end_stream:
            self.half_close = True
            if self.connected and self.transport is not None and \
                    self.transport.can_write_eof():
                self.transport.write_eof()
        return 0

    cdef int encode_trailers(self, HeaderMap trailers) except -1:
        return self.encode_data(b"", True)

    cdef int write(self, bytes data) except -1:
        if self.closed:
            return 0
        if not self.connected:
            if self.out is None:
                self.out = []
            self.out.append(data)
            return 0
        if self.transport is not None:
            self.transport.write(data)
            self.cluster.upstream_cx_tx_bytes_total.add(PyBytes_GET_SIZE(data))
        return 0

    cdef int release(self) except -1:
        return self.abort()

    cdef int abort(self) except -1:
        self.ds = None
        if self.closed:
            return 0
        if self.transport is not None:
            self.cluster.upstream_cx_destroy_local.inc()
            self.transport.abort()
        elif self.task is not None:
            self.task.cancel()
        return 0

    cdef int read_pause(self, bint paused) except -1:
        if self.transport is not None and not self.closed:
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()
        return 0

    def close(self):
        self.abort()

    def data_received(self, bytes data):
        cdef UpstreamCallbacks d = self.ds
        self.cluster.upstream_cx_rx_bytes_total.add(PyBytes_GET_SIZE(data))
        if d is not None:
            d._upstream_read()
            d._write(data)
            d._after_upstream_read()

    def eof_received(self):
        # the upstream's end: the tunnel's end (the stream closes its downstream side)
        return False

    def connection_lost(self, exc):
        cdef UpstreamCallbacks d = self.ds
        if self.closed:
            return
        self.closed = True
        self.connected = False
        self._gone()
        if d is not None:
            self.cluster.upstream_cx_destroy_remote.inc()
        self.ds = None
        if d is None:
            return
        try:
            d._tunnel_closed()
        except Exception as exc2:
            (<object>d)._internal_error(exc2)

    def pause_writing(self):
        if self.ds is not None:
            self.ds._pause(PAUSE_UPSTREAM_FULL)

    def resume_writing(self):
        if self.ds is not None:
            self.ds._resume(PAUSE_UPSTREAM_FULL)
