# Connection pool and upstream-stream interfaces; see conn_pool.pxd for the contract.

from sofamesh._core.headers cimport HeaderMap, HeaderList
from sofamesh._core.http_common cimport mono
from sofamesh._core.upstream cimport Cluster, Host


cdef class PoolConn:
    cdef int start(self, UpstreamCallbacks ds, bint head_req, bint upgrade) except -1:
        raise NotImplementedError

    cdef int encode_headers(self, HeaderMap h, bint end_stream) except -1:
        raise NotImplementedError

    cdef int encode_data(self, bytes data, bint end_stream) except -1:
        raise NotImplementedError

    cdef int encode_trailers(self, HeaderMap trailers) except -1:
        raise NotImplementedError

    cdef int write(self, bytes data) except -1:
        raise NotImplementedError

    cdef int release(self) except -1:
        raise NotImplementedError

    cdef int abort(self) except -1:
        raise NotImplementedError

    cdef int read_pause(self, bint paused) except -1:
        if self.transport is not None:
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()
        return 0


cdef class UpstreamCallbacks:
    cdef bint _wants_connection(self):
        return False

    cdef int _attach(self, PoolConn c) except -1:
        raise NotImplementedError

    cdef int _fail(self, int kind, PoolConn c) except -1:
        raise NotImplementedError

    cdef int _upstream_read(self) except -1:
        return 0

    cdef int _after_upstream_read(self) except -1:
        return 0

    cdef bint _on_upstream_head(self, PoolConn c, HeaderMap rh, bint end_stream) except -1:
        raise NotImplementedError

    cdef int _on_upstream_data(self, bytes data, bint end_stream) except -1:
        raise NotImplementedError

    cdef int _on_upstream_trailers(self, HeaderList trailers) except -1:
        raise NotImplementedError

    cdef int _on_upstream_complete(self, PoolConn c) except -1:
        raise NotImplementedError

    cdef int _reset(self) except -1:
        raise NotImplementedError

    cdef int _write(self, bytes data) except -1:
        raise NotImplementedError

    cdef int _tunnel_closed(self) except -1:
        return 0

    cdef int _pause(self, int reason) except -1:
        return 0

    cdef int _resume(self, int reason) except -1:
        return 0


cdef class ConnPool:
    cdef int new_stream(self, Cluster cl, Host host, UpstreamCallbacks cb) except -1:
        raise NotImplementedError

    cdef int _queue(self, Cluster cl, Host host, UpstreamCallbacks cb) except -1:
        """No connection to give (max_connections reached): wait on Host.waiting, or
        overflow past the circuit breaker's max_pending."""
        cl.upstream_cx_overflow.inc()
        if cl.pending_active >= cl.max_pending:
            cl.upstream_rq_pending_overflow.inc()
            return POOL_OVERFLOW
        cl.upstream_rq_pending_total.inc()
        cl.pending_active += 1
        cl.upstream_rq_pending_active.inc()
        host.waiting.append(cb)
        return POOL_QUEUED

    cdef int cancel(self, Cluster cl, Host host, UpstreamCallbacks cb) except -1:
        """Takes a waiter back (every pool queues on Host.waiting)."""
        try:
            host.waiting.remove(cb)
        except ValueError:
            return 0
        cl.pending_active -= 1
        cl.upstream_rq_pending_active.dec()
        return 0


cdef class Mirror(UpstreamCallbacks):
    cdef Host _rq_pick(self, Cluster cluster):
        cdef Host host
        self.cluster = cluster
        self.t0 = mono()
        cluster.upstream_rq_total.inc()
        if cluster.rq_active >= cluster.max_requests:
            cluster.upstream_rq_pending_overflow.inc()
            self.closed = True
            return None
        host = cluster.choose()
        if host is None:
            cluster.upstream_cx_none_healthy.inc()
            self.closed = True
        return host

    cdef int _rq_start(self, Host host) except -1:
        cdef Cluster cl = self.cluster
        self.host = host
        self.in_rq = True
        cl.rq_active += 1
        cl.upstream_rq_active.inc()
        host.rq_active += 1
        host.rq_total += 1
        return 0

    cdef int _rq_over(self, bint ok) except -1:
        cdef Cluster cl = self.cluster
        cdef Host host = self.host
        if not self.in_rq:
            return 0
        self.in_rq = False
        cl.rq_active -= 1
        cl.upstream_rq_active.dec()
        host.rq_active -= 1
        if ok:
            host.rq_success += 1
            cl.upstream_rq_completed.inc()
            cl.upstream_rq_time.record((mono() - self.t0) * 1000.0)
        else:
            host.rq_error += 1
        return 0

    cdef int send_data(self, bytes data, bint end_stream) except -1:
        raise NotImplementedError

    cdef int send_trailers(self, HeaderList trailers) except -1:
        raise NotImplementedError

    cdef int reset(self) except -1:
        raise NotImplementedError
