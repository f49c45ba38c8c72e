# HTTP/1.1 upstream: the connection pool (one request per connection at a time, kept
# alive on Host.idle, waiters on Host.waiting) and its connections; request mirrors.
# See conn_pool.pxd for the interface the router uses.

import asyncio

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from sofamesh._core.buffer cimport WriteBuf
from sofamesh._core.codecs.http1 cimport Head, parse_response
from sofamesh._core.codecs.http1_body cimport (
    BodyReader, parse_trailers, FR_NONE, FR_LENGTH, FR_CHUNKED, FR_EOF,
)
from sofamesh._core.codecs.http1_encode cimport (
    encode_request_head, encode_chunk, encode_last_chunk,
)
from sofamesh._core.headers cimport HeaderMap, HeaderList
from sofamesh._core.conn_pool cimport (
    PoolConn, UpstreamCallbacks, ConnPool, Mirror, POOL_ATTACHED,
)
from sofamesh._core.idle_sweep cimport idle_deadline
from sofamesh._core.http_common cimport (
    mono, FAIL_CONNECT, FAIL_CONNECT_TIMEOUT, FAIL_RESET, FAIL_PROTOCOL, PAUSE_UPSTREAM_FULL,
    PAUSE_QUEUE,
)
from sofamesh._core.upstream cimport Cluster, Host, OUTCOME_CONNECT_SUCCESS
from sofamesh._core.upstream import connect as dial_host

# upstream connection states
cdef enum:
    US_CONNECTING = 0
    US_IDLE = 1
    US_HEAD = 2
    US_BODY = 3
    US_TUNNEL = 4
    US_CLOSED = 5


cdef class Http1ConnPool(ConnPool):
    """HTTP/1.1: a request gets a whole connection; idle ones wait on Host.idle."""

    def __init__(self, loop):
        self.loop = loop

    cdef int new_stream(self, Cluster cl, Host host, UpstreamCallbacks cb) except -1:
        cdef UpstreamConn c
        while host.idle:
            c = host.idle.pop()
            # Not reading: closing or closed. The upstream's FIN or reset was read in this
            # turn of the loop and its connection_lost (which takes it off this list) has
            # not run yet; a write to it raises (found by tests/fuzz/proxy_campaign.py).
            # An idle connection always reads (to see a close), and is_reading() is False
            # both while uvloop closes a transport and once it closed the handle, where
            # is_closing() may still be False (the write's RuntimeError then aborted the
            # downstream as an internal error, its GOAWAY lost: test_conformance 5.1.2/1)
            if c.connected and not c.closed and c.transport is not None and c.t_reading():
                cb._attach(c)
                return POOL_ATTACHED
        if cl.cx_active < cl.max_connections:
            c = UpstreamConn(cl, host, self.loop)
            cl.upstream_rq_pending_total.inc()
            cb._attach(c)
            return POOL_ATTACHED
        return self._queue(cl, host, cb)


cdef HeaderList mirror_headers(HeaderMap h, bytes local_ip, bint suffix):
    """A mirror's request headers: the upstream request's, sent the way Envoy's async
    client sends them (x-envoy-internal: true, this node's address appended to
    x-forwarded-for), the authority suffixed `-shadow` unless
    disable_shadow_host_suffix_append."""
    cdef HeaderList m = h.copy()
    cdef bytes xff = m.get_all(b"x-forwarded-for")
    if suffix:
        m.authority_ = shadow_host(m.authority())
    m.remove(b"x-forwarded-for")
    m.remove(b"x-envoy-internal")
    m.add(b"x-forwarded-for", (xff + b"," if xff else b"") + local_ip)
    m.add(b"x-envoy-internal", b"true")
    return m


cdef bytes shadow_host(bytes host):
    """Envoy's shadow authority: `-shadow` after the host name, before any port
    (`a.b:8080` -> `a.b-shadow:8080`)."""
    cdef Py_ssize_t i = host.rfind(b":")
    if i > 0 and host.find(b"]", i) < 0 and host[i + 1:].isdigit():
        return host[:i] + b"-shadow" + host[i:]
    return host + b"-shadow"


cdef class ShadowConn(Mirror):
    """One mirrored request on its own connection to a host of the mirror cluster. The
    response is read and discarded; nothing here can delay or fail the main request. At
    most `limit` bytes wait (for the connect or in the socket's write buffer): a mirror
    that cannot keep up is reset (counted as the cluster's upstream_rq_tx_reset) instead
    of buffering without bound or slowing the client down."""
    def __cinit__(self, Cluster cluster, loop, HeaderMap headers, bint end_stream,
                  bint head_req, double timeout, Py_ssize_t limit):
        cdef Host host
        cdef WriteBuf wb = WriteBuf(1024)
        self.loop = loop
        self.head_req = head_req
        self.limit = limit if limit > 0 else 1048576
        self.chunked = encode_request_head(wb, headers, end_stream, False) == FR_CHUNKED
        head = wb.take()
        self.queue = [head]
        self.queued = PyBytes_GET_SIZE(head)
        host = self._rq_pick(cluster)
        if host is None:
            return
        if cluster.cx_active >= cluster.max_connections:
            cluster.upstream_cx_overflow.inc()
            cluster.upstream_rq_pending_overflow.inc()
            self.closed = True
            return
        self._rq_start(host)
        cluster.cx_active += 1
        host.cx_active += 1
        host.cx_total += 1
        cluster.upstream_cx_total.inc()
        cluster.upstream_cx_http1_total.inc()
        cluster.upstream_cx_active.inc()
        if timeout > 0:
            self.timer = loop.call_later(timeout, self._on_timeout)
        self.task = loop.create_task(self._connect())

    async def _connect(self):
        cdef Cluster cl = self.cluster
        cdef double t0 = mono()
        try:
            await asyncio.wait_for(
                dial_host(self.loop, lambda: self, self.host, cl),
                cl.connect_timeout)
        except asyncio.TimeoutError:
            cl.upstream_cx_connect_timeout.inc()
            self._connect_failed()
        except OSError:
            self._connect_failed()
        except asyncio.CancelledError:
            self._end(False)
        else:
            cl.upstream_cx_connect_ms.record((mono() - t0) * 1000.0)
        finally:
            self.task = None

    def _connect_failed(self):
        if self.closed:
            return
        self.cluster.upstream_cx_connect_fail.inc()
        self.host.cx_connect_fail += 1
        self._end(False)

    cdef int _end(self, bint ok) except -1:
        """The mirror is over (answered, failed or reset): release its counts once."""
        cdef Cluster cl = self.cluster
        cdef Host host = self.host
        self.closed = True
        self.queue = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._rq_over(ok)
        if self.host is not None:
            self.host = None
            cl.cx_active -= 1
            host.cx_active -= 1
            cl.upstream_cx_active.dec()
            cl.upstream_cx_destroy.inc()
        return 0

    cdef int send_data(self, bytes data, bint end_stream) except -1:
        cdef WriteBuf wb
        if self.closed:
            return 0
        if self.chunked:
            wb = WriteBuf(PyBytes_GET_SIZE(data) + 32)
            encode_chunk(wb, data)
            if end_stream:
                encode_last_chunk(wb, None)
            data = wb.take()
        if data:
            self._send(data)
        return 0

    cdef int send_trailers(self, HeaderList trailers) except -1:
        cdef WriteBuf wb
        if self.chunked and not self.closed:
            wb = WriteBuf(256)
            encode_last_chunk(wb, trailers if self.cluster.enable_trailers else None)
            self._send(wb.take())
        return 0

    cdef int _send(self, bytes data) except -1:
        if self.closed:
            return 0
        if self.transport is not None:
            self.transport.write(data)
            self.cluster.upstream_cx_tx_bytes_total.add(PyBytes_GET_SIZE(data))
            if self.transport.get_write_buffer_size() > self.limit:
                self.reset()
        else:
            self.queue.append(data)
            self.queued += PyBytes_GET_SIZE(data)
            if self.queued > self.limit:
                self.reset()
        return 0

    cdef int reset(self) except -1:
        """Give up on this mirror (too slow, or the client went away mid-body)."""
        if self.closed:
            return 0
        self.cluster.upstream_rq_tx_reset.inc()
        if self.transport is not None:
            self.cluster.upstream_cx_destroy_local.inc()
            self.transport.abort()
        elif self.task is not None:
            self.task.cancel()
        self._end(False)
        return 0

    def _on_timeout(self):
        self.timer = None
        if not self.closed:
            self.cluster.upstream_rq_timeout.inc()
            self.reset()

    def connection_made(self, transport):
        cdef bytes b
        self.transport = transport
        if self.closed:
            transport.abort()
            return
        self.connected = True
        b = b"".join(self.queue)
        self.queue = None
        self.queued = 0
        transport.write(b)
        self.cluster.upstream_cx_tx_bytes_total.add(PyBytes_GET_SIZE(b))

    def data_received(self, bytes data):
        cdef Py_ssize_t off = 0, n, k
        cdef int r, st, framing
        self.cluster.upstream_cx_rx_bytes_total.add(PyBytes_GET_SIZE(data))
        if self.closed or self.resp_done:
            return
        if self.pending is not None:
            data = self.pending + data
            self.pending = None
        n = PyBytes_GET_SIZE(data)
        while off < n:
            if self.rstate == 0:
                if self.rhead is None:
                    self.rhead = Head()
                    self.body = BodyReader()
                r = parse_response(self.rhead, data, off, 65536)
                if r == 0:
                    self.pending = data[off:] if off else data
                    if PyBytes_GET_SIZE(self.pending) > 65536:
                        r = -1
                    else:
                        return
                if r < 0:
                    self.cluster.upstream_cx_protocol_error.inc()
                    self.reset()
                    return
                off += r
                st = self.rhead.status
                if st < 200:
                    continue
                self.cluster.count_status(st)
                if self.head_req or st == 204 or st == 304:
                    framing = FR_NONE
                elif self.rhead.chunked:
                    framing = FR_CHUNKED
                elif self.rhead.content_length >= 0:
                    framing = FR_LENGTH
                else:
                    framing = FR_EOF
                self.body.start(framing, self.rhead.content_length)
                self.rstate = 1
            else:
                k = self.body.feed(PyBytes_AS_STRING(data) + off, n - off)
                if k < 0:
                    self.cluster.upstream_cx_protocol_error.inc()
                    self.reset()
                    return
                off += k
            if self.rstate == 1 and self.body.done:
                # answered: the response is discarded and the connection closed
                self.resp_done = True
                self.transport.close()
                self._end(True)
                return

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        self.transport = None
        if not self.closed:
            if self.rstate == 1 and self.body.mode == FR_EOF:
                self._end(True)
            else:
                self.cluster.upstream_rq_rx_reset.inc()
                self.cluster.upstream_cx_destroy_remote.inc()
                self._end(False)

    def pause_writing(self):
        pass

    def resume_writing(self):
        pass


cdef class UpstreamConn(PoolConn):
    """An HTTP/1.1 connection to one host; serves one stream at a time (keep-alive)."""
    def __cinit__(self, Cluster cluster, Host host, loop):
        self.cluster = cluster
        self.host = host
        self.loop = loop
        self.head = Head()
        self.body = BodyReader()
        self.wb = WriteBuf(2048)
        self.state = US_CONNECTING
        self.pending = None
        self.reusable = True
        self.connected = False
        self.closed = False
        cluster.cx_active += 1
        host.cx_active += 1
        host.cx_total += 1
        cluster.upstream_cx_total.inc()
        cluster.upstream_cx_http1_total.inc()
        cluster.upstream_cx_active.inc()
        self.task = loop.create_task(self._connect())

    async def _connect(self):
        cdef Cluster cl = self.cluster
        cdef double t0 = mono()
        try:
            await asyncio.wait_for(
                dial_host(self.loop, lambda: self, self.host, cl),
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
        self.state = US_CLOSED
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
        self._serve_waiting_after_failure()

    def _serve_waiting_after_failure(self):
        # Requests queued on the host behind a failed connect would otherwise wait forever.
        cdef Host host = self.host
        cdef UpstreamCallbacks w
        cdef Cluster cl = self.cluster
        while host.waiting and cl.cx_active < cl.max_connections:
            w = host.waiting.popleft()
            cl.pending_active -= 1
            cl.upstream_rq_pending_active.dec()
            if w._wants_connection():
                w._attach(UpstreamConn(cl, host, self.loop))

    cdef void _gone(self):
        cdef Cluster cl = self.cluster
        cl.cx_active -= 1
        self.host.cx_active -= 1
        cl.upstream_cx_active.dec()
        cl.upstream_cx_destroy.inc()

    def connection_made(self, transport):
        self.transport = transport
        self.t_write = transport.write
        self.t_reading = transport.is_reading
        transport.set_write_buffer_limits(high=self.cluster.per_connection_buffer_limit)
        if self.closed:         # timed out or cancelled meanwhile
            transport.abort()
            return
        self.connected = True
        if self.cluster.max_connection_duration > 0:
            self.max_timer = self.loop.call_later(self.cluster.max_connection_duration,
                                                  self._on_max_duration)
        if self.out is not None:
            b = self.out[0] if len(self.out) == 1 else b"".join(self.out)
            self.out = None
            self.out_len = 0
            self.write(b)
        if self.ds is not None:
            self.host.outcome(OUTCOME_CONNECT_SUCCESS)  # outlier detection: pool ready
            self.state = US_HEAD
            self.ds._resume(PAUSE_QUEUE)
        else:
            self.state = US_IDLE
            self.release()

    cdef int start(self, UpstreamCallbacks ds, bint head_req, bint upgrade) except -1:
        self.ds = ds
        self.head_req = head_req
        self.upgrade = upgrade
        self.pending = None
        self.trailer_raw = None
        if self.connected:
            self.state = US_HEAD
        return 0

    # request encoding (conn_pool.pxd) --------------------------------------------------
    cdef int encode_headers(self, HeaderMap h, bint end_stream) except -1:
        self.chunked = encode_request_head(self.wb, h, end_stream, self.upgrade) == FR_CHUNKED
        return self._send(self.wb.take())

    cdef int encode_data(self, bytes data, bint end_stream) except -1:
        cdef WriteBuf wb
        if not self.chunked:
            if PyBytes_GET_SIZE(data):
                self._send(data)
            # (an HTTP/2 upgrade's END_STREAM is not passed on as a half close: Envoy's
            # HTTP/1.1 codec has none; the tunnel lasts until the upstream closes)
            return 0
        wb = self.wb
        if PyBytes_GET_SIZE(data) > 32768:
            wb.add_hex(PyBytes_GET_SIZE(data))
            wb.add("\r\n", 2)
            self._send(wb.take())
            self._send(data)
            wb.add("\r\n", 2)
        else:
            encode_chunk(wb, data)
        if end_stream:
            encode_last_chunk(wb, None)
        if wb.len:
            self._send(wb.take())
        return 0

    cdef int encode_trailers(self, HeaderMap trailers) except -1:
        """The request's end, with its trailers if the cluster enables them (Envoy's
        HTTP/1 client codec writes a bare last chunk otherwise)."""
        if self.chunked:
            encode_last_chunk(self.wb, trailers if self.cluster.enable_trailers else None)
            self._send(self.wb.take())
        return 0

    cdef int _send(self, bytes data) except -1:
        """Encoded request bytes: written, or kept until the connection is up (the stream
        stops reading its client while more than the buffer limit waits here)."""
        if self.connected:
            return self.write(data)
        if self.closed:
            return 0
        if self.out is None:
            self.out = [data]
        else:
            self.out.append(data)
        self.out_len += PyBytes_GET_SIZE(data)
        if self.out_len > self.cluster.per_connection_buffer_limit and self.ds is not None:
            self.ds._pause(PAUSE_QUEUE)
        return 0

    cdef int release(self) except -1:
        cdef Host host = self.host
        cdef UpstreamCallbacks w
        cdef Cluster cl = self.cluster
        self.ds = None
        self.rq_count += 1
        if self.closed:
            return 0
        if cl.max_requests_per_connection and self.rq_count >= cl.max_requests_per_connection:
            return self.abort()
        self.state = US_IDLE
        # The stream's client may have paused our reading (DownstreamConn.pause_writing) in
        # the very read that completed its response; its resume_writing no longer reaches
        # us, and a paused pooled connection would never read the next stream's response
        # (issue 7: a reply lost after a 5 MB one). Idle connections read, to see a close.
        if self.transport is not None:
            self.transport.resume_reading()
        # requests queued for this host go first, even if the host was just removed
        while host.waiting:
            w = host.waiting.popleft()
            cl.pending_active -= 1
            cl.upstream_rq_pending_active.dec()
            if w._wants_connection():
                return w._attach(self)
        if host.removed:
            return self.abort()
        host.idle.append(self)
        if cl.idle_sweep is not None and not self.swept:
            # listed once; while it stays listed the sweep tells reuse by rq_count
            self.swept = True
            self.idle_since = mono()
            self.seen_rq = self.rq_count
            cl.idle_sweep.add(self, self.loop)
        return 0

    def _idle_check(self, double now, double timeout):
        """The cluster's IdleSweep asks (idle_sweep.pxd): closed here once idle that long."""
        cdef double d
        if not (self.closed or self.ds is not None or self.state != US_IDLE):
            d = idle_deadline(now, timeout, self.rq_count, &self.seen_rq, &self.idle_since)
            if d > 0:
                return d
            self.cluster.upstream_cx_idle_timeout.inc()
        self._leave_idle()
        self.abort()
        self.swept = False
        return -1.0

    def _on_max_duration(self):
        """max_connection_duration: closed now if idle, else after the request it serves."""
        self.max_timer = None
        if self.closed:
            return
        self.cluster.upstream_cx_max_duration_reached.inc()
        self.reusable = False
        if self.ds is None and self.state == US_IDLE:
            self._leave_idle()
            self.abort()

    def _leave_idle(self):
        try:
            self.host.idle.remove(self)
        except ValueError:
            pass

    cdef int abort(self) except -1:
        self.ds = None
        self.reusable = False
        if self.closed:
            return 0
        if self.transport is not None:
            self.cluster.upstream_cx_destroy_local.inc()
            self.transport.abort()
        elif self.task is not None:
            self.task.cancel()
        return 0

    cdef int write(self, bytes data) except -1:
        if not self.connected:
            return self._send(data)
        if self.transport is not None:
            self.t_write(data)
            self.cluster.upstream_cx_tx_bytes_total.add(PyBytes_GET_SIZE(data))
        return 0

    def close(self):
        self.abort()

    def data_received(self, bytes data):
        cdef UpstreamCallbacks d = self.ds
        if d is not None:
            d._upstream_read()
        self._feed(d, data)
        if d is not None:
            d._after_upstream_read()

    cdef int _feed(self, UpstreamCallbacks d, bytes data) except -1:
        cdef Py_ssize_t off = 0, n, k
        cdef int r, st, framing
        self.cluster.upstream_cx_rx_bytes_total.add(PyBytes_GET_SIZE(data))
        if self.state == US_TUNNEL:
            if d is not None:
                d._write(data)
            return 0
        if d is None or self.state == US_IDLE:
            # bytes nobody asked for: the connection cannot be trusted any more
            self.cluster.upstream_cx_protocol_error.inc()
            self.abort()
            return 0
        try:
            if self.pending is not None:
                data = self.pending + data
                self.pending = None
            n = PyBytes_GET_SIZE(data)
            while off < n:
                if self.state == US_HEAD:
                    r = parse_response(self.head, data, off, 65536)
                    if r == 0:
                        self.pending = data[off:] if off else data
                        return 0
                    if r < 0:
                        self.cluster.upstream_cx_protocol_error.inc()
                        self.ds = None
                        self.abort()
                        d._fail(FAIL_PROTOCOL, self)
                        return 0
                    off += r
                    st = self.head.status
                    if st < 200 and not (st == 101 and self.upgrade):
                        continue        # interim response: Envoy answered 100 itself
                    if self.head_req or st == 204 or st == 304 or st == 101:
                        framing = FR_NONE
                    elif self.head.chunked:
                        framing = FR_CHUNKED
                    elif self.head.content_length >= 0:
                        framing = FR_LENGTH
                    else:
                        framing = FR_EOF
                    if self.head.conn_close or framing == FR_EOF or \
                            (self.head.minor == 0 and not self.head.conn_keep_alive):
                        self.reusable = False
                    self.head.drop_connection_headers(False, st == 101 and self.upgrade)
                    self.body.start(framing, self.head.content_length)
                    self.body.chunks = [] if framing == FR_CHUNKED else None
                    self.state = US_BODY
                    if not d._on_upstream_head(self, self.head,
                                               self.body.done and st != 101) or \
                            self.ds is not d:
                        return 0
                    if st == 101 and self.upgrade:
                        self.state = US_TUNNEL
                        if off < n:
                            d._write(data[off:])
                        return 0
                elif self.state == US_BODY:
                    k = self.body.feed(PyBytes_AS_STRING(data) + off, n - off)
                    if k < 0:
                        self.cluster.upstream_cx_protocol_error.inc()
                        self.ds = None
                        self.abort()
                        d._reset()
                        return 0
                    if k > 0:
                        self._body(d, data, off, k)
                        if self.ds is not d:
                            return 0
                    off += k
                else:
                    return 0
                if self.state == US_BODY and self.body.done:
                    if off < n:
                        self.reusable = False
                    self.state = US_IDLE
                    d._on_upstream_complete(self)
                    return 0
        except Exception as exc:
            self.ds = None
            self.abort()
            (<object>d)._internal_error(exc)
        return 0

    cdef int _body(self, UpstreamCallbacks d, bytes data, Py_ssize_t off, Py_ssize_t k) except -1:
        """k bytes of response body at data[off:]: decoded payload (and trailers) to d."""
        cdef BodyReader b = self.body
        cdef list chunks
        cdef Py_ssize_t fw
        if b.mode != FR_CHUNKED:
            return d._on_upstream_data(data if (off == 0 and k == PyBytes_GET_SIZE(data))
                                       else data[off:off + k], b.done)
        chunks = b.chunks
        if chunks:
            b.chunks = []
            d._on_upstream_data(chunks[0] if len(chunks) == 1 else b"".join(chunks), False)
            if self.ds is not d:
                return 0
        if b.trailers_dropped and self.cluster.enable_trailers:
            # Envoy's HTTP/1 client codec decodes a response's trailers only when the
            # cluster's http_protocol_options.enable_trailers is set
            fw = b.fwd
            if k > fw:
                if self.trailer_raw is None:
                    self.trailer_raw = []
                self.trailer_raw.append(data[off + fw:off + k])
        if b.done:
            if self.trailer_raw is not None:
                raw = b"".join(self.trailer_raw)
                self.trailer_raw = None
                return d._on_upstream_trailers(parse_trailers(raw))
            return d._on_upstream_data(b"", True)
        return 0

    def eof_received(self):
        # the upstream closed: never handed out again, even before connection_lost runs
        self.reusable = False
        if self.ds is None:
            try:
                self.host.idle.remove(self)
            except ValueError:
                pass
        return False

    def connection_lost(self, exc):
        cdef UpstreamCallbacks d = self.ds
        cdef int st = self.state
        if self.closed:
            return
        self.closed = True
        self.connected = False
        self.state = US_CLOSED
        self._gone()
        if self.max_timer is not None:
            self.max_timer.cancel()
            self.max_timer = None
        if exc is None and d is None:
            self.cluster.upstream_cx_destroy_remote.inc()
        try:
            self.host.idle.remove(self)
        except ValueError:
            pass
        self.ds = None
        if d is None:
            return
        try:
            if st == US_BODY and self.body.mode == FR_EOF:
                d._on_upstream_data(b"", True)
                d._on_upstream_complete(None)
            elif st == US_TUNNEL:
                d._tunnel_closed()
            elif st == US_HEAD or st == US_CONNECTING:
                self.cluster.upstream_cx_destroy_remote.inc()
                d._fail(FAIL_RESET, self)
            else:
                if st == US_BODY:
                    # a length- or chunk-framed body cut short: Envoy's codec counts a
                    # protocol error (differential case upstream-closes-mid-response)
                    self.cluster.upstream_cx_protocol_error.inc()
                self.cluster.upstream_rq_rx_reset.inc()
                d._reset()
        except Exception as exc2:
            (<object>d)._internal_error(exc2)

    def pause_writing(self):
        # the upstream reads slower than our client sends: stop reading the client
        if self.ds is not None:
            self.ds._pause(PAUSE_UPSTREAM_FULL)

    def resume_writing(self):
        if self.ds is not None:
            self.ds._resume(PAUSE_UPSTREAM_FULL)
