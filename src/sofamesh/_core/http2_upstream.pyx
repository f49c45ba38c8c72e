# HTTP/2 upstream connection pool, connections and streams; see http2_upstream.pxd.
#
#   router -> Http2ConnPool.new_stream(host) -> H2UpStream (one stream id) of an
#   H2Connection (asyncio protocol over codecs/http2.Connection, client side)
#   response events -> UpstreamCallbacks (_on_upstream_head / _data / _trailers / _complete)

import asyncio
import logging

from cpython.bytes cimport PyBytes_GET_SIZE

from sofamesh._core.codecs.http2_events cimport (
    Data, ResponseHeaders, Trailers, StreamReset, WindowUpdated, GoAway,
    ConnectionError as H2ConnectionError,
)
from sofamesh._core.codecs.http2_map cimport (
    adopt, request_list, trailer_list, upgrade_request_list,
)
from sofamesh._core.conn_pool cimport (
    PoolConn, UpstreamCallbacks, ConnPool, Mirror, POOL_ATTACHED, POOL_QUEUED, POOL_OVERFLOW,
)
from sofamesh._core.headers cimport HeaderMap, HeaderList
from sofamesh._core.idle_sweep cimport idle_deadline
from sofamesh._core.http_common cimport (
    mono, FAIL_CONNECT, FAIL_CONNECT_TIMEOUT, FAIL_RESET, FAIL_PROTOCOL, FAIL_REMOTE_RESET,
    FAIL_REFUSED, PAUSE_UPSTREAM_FULL,
)
from sofamesh._core.upstream cimport Cluster, Host, OUTCOME_CONNECT_SUCCESS
from sofamesh._core.upstream import connect as dial_host

from sofamesh._core.codecs.http2 import Connection as _Connection

cdef unsigned int ERR_NO_ERROR = 0
cdef unsigned int ERR_CANCEL = 8
cdef unsigned int ERR_REFUSED_STREAM = 7

log = logging.getLogger("sofamesh.proxy")


cdef class Http2ConnPool(ConnPool):
    """HTTP/2: streams of shared connections; connections per host on Host.h2conns."""

    def __init__(self, loop):
        self.loop = loop

    cdef int new_stream(self, Cluster cl, Host host, UpstreamCallbacks cb) except -1:
        cdef H2Connection c
        for c in host.h2conns:
            if c.can_take():
                return cb._attach(c.open_stream())
        if cl.cx_active < cl.max_connections:
            c = H2Connection(cl, host, self.loop)
            cl.upstream_rq_pending_total.inc()
            cb._attach(c.open_stream())
            return POOL_ATTACHED
        return self._queue(cl, host, cb)


cdef class H2Connection:
    """One HTTP/2 connection to a host, client side; its streams serve requests."""

    def __cinit__(self, Cluster cluster, Host host, loop):
        cdef tuple o = cluster.h2 or (2147483647, 268435456, 268435456, False)
        self.cluster = cluster
        self.host = host
        self.loop = loop
        self.streams = {}
        self.max_streams = o[0]
        self.codec = _Connection(True, initial_stream_window_size=o[1],
                                 initial_connection_window_size=o[2])
        cluster.cx_active += 1
        host.cx_active += 1
        host.cx_total += 1
        cluster.upstream_cx_total.inc()
        cluster.upstream_cx_http2_total.inc()
        cluster.upstream_cx_active.inc()
        host.h2conns.append(self)
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
            self._connect_failed(FAIL_RESET)
        else:
            cl.upstream_cx_connect_ms.record((mono() - t0) * 1000.0)
        finally:
            self.task = None

    def _connect_failed(self, int kind):
        if self.closed:
            return
        self.closed = True
        self._gone()
        if kind != FAIL_RESET:
            self.cluster.upstream_cx_connect_fail.inc()
            self.host.cx_connect_fail += 1
        self._fail_all(kind)
        self._serve_waiting()

    def _gone(self):
        cdef Cluster cl = self.cluster
        cl.cx_active -= 1
        self.host.cx_active -= 1
        cl.upstream_cx_active.dec()
        cl.upstream_cx_destroy.inc()
        self._leave_pool()

    cdef int _leave_pool(self) except -1:
        try:
            self.host.h2conns.remove(self)
        except ValueError:
            pass
        return 0

    cdef bint can_take(self):
        cdef long long cap = self.max_streams
        if self.closed or self.draining or self.codec.goaway_received:
            return False
        if self.codec.remote_max_concurrent_streams < cap:
            cap = self.codec.remote_max_concurrent_streams
        return len(self.streams) < cap

    cdef H2UpStream open_stream(self):
        cdef H2UpStream s = H2UpStream.__new__(H2UpStream)
        cdef Cluster cl = self.cluster
        s.conn = self
        s.cluster = cl
        s.host = self.host
        s.reusable = True
        s.connected = self.connected
        self.rq_count += 1
        if cl.max_requests_per_connection and self.rq_count >= cl.max_requests_per_connection:
            self.draining = True        # this is its last stream
            self._leave_pool()
        return s

    cdef int flush(self) except -1:
        """Requests encoded in one turn of the event loop share a write(2) (see
        Http2ServerConn.flush)."""
        if self.transport is not None and not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self._flush_now)
        return 0

    def _flush_now(self):
        self.flush_pending = False
        self.write_now()

    cdef int write_now(self) except -1:
        cdef bytes out
        if self.transport is None:
            return 0
        out = self.codec.data_to_send()
        if PyBytes_GET_SIZE(out):
            self.transport.write(out)
            self.cluster.upstream_cx_tx_bytes_total.add(PyBytes_GET_SIZE(out))
        return 0

    cdef int stream_done(self, H2UpStream s) except -1:
        if s.sid and self.streams.get(s.sid) is s:
            del self.streams[s.sid]
        if self.closed:
            return 0
        if self.draining and not self.streams:
            self.write_now()
            if self.transport is not None:
                self.transport.close()
            elif self.task is not None:
                self.task.cancel()
            return 0
        self._serve_waiting()
        if not self.streams and not self.swept and self.cluster.idle_sweep is not None:
            # listed once; while it stays listed the sweep tells reuse by rq_count
            self.swept = True
            self.idle_since = mono()
            self.seen_rq = self.rq_count
            self.cluster.idle_sweep.add(self, self.loop)
        return 0

    def _idle_check(self, double now, double timeout):
        """The cluster's IdleSweep asks (idle_sweep.pxd): closed here once idle that long."""
        cdef double d
        if not (self.closed or self.draining or self.streams):
            d = idle_deadline(now, timeout, self.rq_count, &self.seen_rq, &self.idle_since)
            if d > 0:
                return d
            self.cluster.upstream_cx_idle_timeout.inc()
        self.local_close = True
        self.close()
        self.swept = False
        return -1.0

    def _on_max_duration(self):
        """max_connection_duration: no new streams; closed once the open ones end."""
        self.max_timer = None
        if self.closed:
            return
        self.cluster.upstream_cx_max_duration_reached.inc()
        self.local_close = True
        self.close()

    cdef int _serve_waiting(self) except -1:
        """Requests queued on the host take the room a stream left (or, after a failed
        connection, a new connection)."""
        cdef Host host = self.host
        cdef Cluster cl = self.cluster
        cdef UpstreamCallbacks w
        cdef H2Connection c
        while host.waiting:
            c = None
            if self.can_take():
                c = self
            else:
                for c2 in host.h2conns:
                    if (<H2Connection>c2).can_take():
                        c = c2
                        break
                if c is None and cl.cx_active < cl.max_connections:
                    c = H2Connection(cl, host, self.loop)
            if c is None:
                return 0
            w = host.waiting.popleft()
            cl.pending_active -= 1
            cl.upstream_rq_pending_active.dec()
            if w._wants_connection():
                w._attach(c.open_stream())
        return 0

    cdef int _fail_all(self, int kind) except -1:
        """The connection is gone: every stream fails (before its response) or resets."""
        cdef H2UpStream s
        cdef UpstreamCallbacks d
        streams = list(self.streams.values())
        self.streams = {}
        for s in streams:
            d = s.ds
            s.ds = None
            s.done = True
            if d is None:
                continue
            try:
                if s.got_head:
                    self.cluster.upstream_rq_rx_reset.inc()
                    d._reset()
                else:
                    d._fail(kind, s)
            except Exception as exc:
                (<object>d)._internal_error(exc)
        return 0

    def close(self):
        """No new streams; closes once the open ones end (a removed host)."""
        self.draining = True
        self._leave_pool()
        if not self.streams and not self.closed:
            if self.transport is not None:
                self.codec.goaway(ERR_NO_ERROR)
                self.write_now()
                self.transport.close()
            elif self.task is not None:
                self.task.cancel()

    # asyncio protocol -----------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(high=self.cluster.per_connection_buffer_limit)
        if self.closed:
            transport.abort()
            return
        self.connected = True
        if self.cluster.max_connection_duration > 0:
            self.max_timer = self.loop.call_later(self.cluster.max_connection_duration,
                                                  self._on_max_duration)
        for s in self.streams.values():
            (<H2UpStream>s).connected = True
            self.host.outcome(OUTCOME_CONNECT_SUCCESS)  # outlier detection: each pool ready
        self.write_now()    # preface, SETTINGS and the requests encoded meanwhile

    def data_received(self, bytes data):
        self.cluster.upstream_cx_rx_bytes_total.add(PyBytes_GET_SIZE(data))
        try:
            self._dispatch(self.codec.feed(data))
        except Exception as exc:
            log.exception("internal error on an HTTP/2 upstream connection: %r", exc)
            self.cluster.upstream_cx_protocol_error.inc()
            self.transport.abort()
            return
        if self.codec.closed and self.transport is not None:
            self.write_now()
            self.transport.close()
        else:
            self.flush()

    cdef int _dispatch(self, list events) except -1:
        cdef H2UpStream s
        cdef UpstreamCallbacks d
        cdef Cluster cl = self.cluster
        cdef HeaderList rh
        cdef object ev
        for ev in events:
            t = type(ev)
            if t is Data:
                s = self.streams.get((<Data>ev).stream_id)
                if s is None or s.ds is None:
                    continue
                d = s.ds
                d._upstream_read()
                if (<Data>ev).end_stream:
                    s.recv_end = True
                if s.tunnel:
                    self._tunnel_data(s, d, <Data>ev)
                    continue
                d._on_upstream_data((<Data>ev).data, (<Data>ev).end_stream)
                if s.paused:
                    s.unacked += (<Data>ev).flow_controlled_length
                elif not s.done:
                    self.codec.acknowledge_received_data(s.sid,
                                                         (<Data>ev).flow_controlled_length)
                if (<Data>ev).end_stream and s.ds is d:
                    d._on_upstream_complete(s)
                d._after_upstream_read()
            elif t is ResponseHeaders:
                s = self.streams.get((<ResponseHeaders>ev).stream_id)
                if s is None or s.ds is None:
                    continue
                d = s.ds
                d._upstream_read()
                s.got_head = True
                rh = adopt((<ResponseHeaders>ev).headers)
                if (<ResponseHeaders>ev).end_stream:
                    s.recv_end = True
                elif s.upgrade and rh.status == 200:
                    # the extended CONNECT taken: to the router it is the 101 of the
                    # upgrade it asked for (Envoy's transformUpgradeResponseFromH2toH1)
                    rh.status = 101
                    rh.add(b"upgrade", s.upgrade)
                    rh.add(b"connection", b"upgrade")
                    s.tunnel = True
                if d._on_upstream_head(s, rh, (<ResponseHeaders>ev).end_stream) and \
                        s.ds is d and (<ResponseHeaders>ev).end_stream:
                    d._on_upstream_complete(s)
                d._after_upstream_read()
            elif t is Trailers:
                s = self.streams.get((<Trailers>ev).stream_id)
                if s is None or s.ds is None:
                    continue
                d = s.ds
                s.recv_end = True
                d._on_upstream_trailers(adopt((<Trailers>ev).headers))
                if s.ds is d:
                    d._on_upstream_complete(s)
                d._after_upstream_read()
            elif t is StreamReset:
                s = self.streams.pop((<StreamReset>ev).stream_id, None)
                if s is None or s.done:
                    continue
                s.done = True
                d = s.ds
                s.ds = None
                if d is not None:
                    if (<StreamReset>ev).remote:
                        cl.upstream_rq_rx_reset.inc()
                    else:
                        cl.upstream_cx_protocol_error.inc()
                    if s.got_head:
                        d._reset()
                    elif not (<StreamReset>ev).remote:
                        d._fail(FAIL_PROTOCOL, s)
                    else:
                        d._fail(FAIL_REFUSED if (<StreamReset>ev).error_code == ERR_REFUSED_STREAM
                                else FAIL_REMOTE_RESET, s)
                self.stream_done(s)
            elif t is WindowUpdated:
                self._window_opened()
            elif t is GoAway:
                self.draining = True
                self._leave_pool()
                last = (<GoAway>ev).last_stream_id
                for sid in [k for k in self.streams if k > last]:
                    s = self.streams.pop(sid)
                    s.done = True
                    d = s.ds
                    s.ds = None
                    if d is not None:
                        d._fail(FAIL_REFUSED, s)    # never processed: safe to retry
                if not self.streams and self.transport is not None:
                    self.transport.close()
            elif t is H2ConnectionError:
                cl.upstream_cx_protocol_error.inc()
                self.draining = True
                self._leave_pool()
                self._fail_all(FAIL_PROTOCOL)
        return 0

    cdef int _tunnel_data(self, H2UpStream s, UpstreamCallbacks d, Data ev) except -1:
        """A DATA frame of a taken extended CONNECT: the tunnel's bytes for the client,
        its END_STREAM the upstream's end of the tunnel."""
        if PyBytes_GET_SIZE(ev.data):
            d._write(ev.data)
        if s.paused:
            s.unacked += ev.flow_controlled_length
        elif not s.done:
            self.codec.acknowledge_received_data(s.sid, ev.flow_controlled_length)
        if ev.end_stream and s.ds is d:
            d._tunnel_closed()
        d._after_upstream_read()
        return 0

    def _window_opened(self):
        """The peer gave window back: streams that paused their client for it resume."""
        cdef H2UpStream s
        cdef long long low = self.cluster.per_connection_buffer_limit // 2
        for s in list(self.streams.values()):
            if s.upstream_full and s.ds is not None and \
                    self.codec.outbound_buffered(s.sid) <= low:
                s.upstream_full = False
                s.ds._resume(PAUSE_UPSTREAM_FULL)

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        if self.closed:
            return
        self.closed = True
        self.connected = False
        self._gone()
        if self.max_timer is not None:
            self.max_timer.cancel()
            self.max_timer = None
        if self.local_close:
            self.cluster.upstream_cx_destroy_local.inc()
        elif exc is None:
            self.cluster.upstream_cx_destroy_remote.inc()
        self._fail_all(FAIL_RESET)
        self.transport = None
        self._serve_waiting_after()

    def _serve_waiting_after(self):
        cdef Host host = self.host
        cdef Cluster cl = self.cluster
        cdef UpstreamCallbacks w
        cdef H2Connection c
        while host.waiting and cl.cx_active < cl.max_connections:
            w = host.waiting.popleft()
            cl.pending_active -= 1
            cl.upstream_rq_pending_active.dec()
            if w._wants_connection():
                c = H2Connection(cl, host, self.loop)
                w._attach(c.open_stream())

    def pause_writing(self):
        # the upstream reads slower than we write: stop reading every stream's client
        cdef H2UpStream s
        self.write_paused = True
        for s in list(self.streams.values()):
            if s.ds is not None:
                s.ds._pause(PAUSE_UPSTREAM_FULL)

    def resume_writing(self):
        cdef H2UpStream s
        self.write_paused = False
        for s in list(self.streams.values()):
            if s.ds is not None and not s.upstream_full:
                s.ds._resume(PAUSE_UPSTREAM_FULL)


cdef class H2UpStream(PoolConn):
    """One request/response exchange on an H2Connection."""

    cdef int start(self, UpstreamCallbacks ds, bint head_req, bint upgrade) except -1:
        self.ds = ds
        self.head_req = head_req
        self.upgrade = b"" if upgrade else None
        return 0

    cdef int encode_headers(self, HeaderMap h, bint end_stream) except -1:
        cdef H2Connection c = self.conn
        cdef bytes proto
        if self.done or c.closed:
            return 0
        self.sid = c.codec.get_next_available_stream_id()
        c.streams[self.sid] = self
        proto = h.get_all(b"upgrade") if self.upgrade is not None else None
        if proto and h.method() != b"CONNECT":
            # an HTTP/1.1 upgrade (or a downstream extended CONNECT, which the connection
            # manager turned into one) goes as extended CONNECT, as Envoy sends it
            # (an HTTP/1.1 upgrade's request ends with its head; the stream stays open for
            # the tunnel: the client's end is its close, as on an HTTP/1.1 upstream)
            self.upgrade = proto
            c.codec.send_headers(self.sid, upgrade_request_list(h, b"http", proto), False)
            return c.flush()
        self.upgrade = None     # a CONNECT (tcp_proxy's tunnel) goes as it is
        c.codec.send_headers(self.sid, request_list(h, b"http"), end_stream)
        if end_stream:
            self.sent_end = True
        return c.flush()

    cdef int encode_data(self, bytes data, bint end_stream) except -1:
        cdef H2Connection c = self.conn
        if self.done or c.closed or self.sent_end or not self.sid:
            return 0
        if not PyBytes_GET_SIZE(data) and not end_stream:
            return 0
        c.codec.send_data(self.sid, data, end_stream)
        if end_stream:
            self.sent_end = True
        c.flush()
        if not self.upstream_full and self.ds is not None and \
                c.codec.outbound_buffered(self.sid) > self.cluster.per_connection_buffer_limit:
            # the upstream's window is shut: stop reading the client until it opens
            self.upstream_full = True
            self.ds._pause(PAUSE_UPSTREAM_FULL)
        return 0

    cdef int encode_trailers(self, HeaderMap trailers) except -1:
        cdef H2Connection c = self.conn
        if self.done or c.closed or self.sent_end or not self.sid:
            return 0
        c.codec.send_trailers(self.sid, trailer_list(trailers))
        self.sent_end = True
        return c.flush()

    cdef int write(self, bytes data) except -1:
        # an upgraded HTTP/1.1 client's bytes: DATA of the extended CONNECT stream
        if self.tunnel and PyBytes_GET_SIZE(data):
            return self.encode_data(data, False)
        return 0

    cdef int release(self) except -1:
        if self.done:
            return 0
        if not self.sent_end or not self.recv_end:
            return self.abort()
        self.done = True
        self.ds = None
        return self.conn.stream_done(self)

    cdef int abort(self) except -1:
        cdef H2Connection c = self.conn
        self.ds = None
        if self.done:
            return 0
        self.done = True
        if self.sid and not c.closed and not (self.sent_end and self.recv_end):
            self.cluster.upstream_rq_tx_reset.inc()
            c.codec.reset_stream(self.sid, ERR_CANCEL)
            c.flush()
        return c.stream_done(self)

    cdef int read_pause(self, bint paused) except -1:
        cdef long long n
        self.paused = paused
        if not paused and self.unacked and not self.done and not self.conn.closed:
            n = self.unacked
            self.unacked = 0
            self.conn.codec.acknowledge_received_data(self.sid, n)
            self.conn.flush()
        return 0


cdef class H2Shadow(Mirror):
    """A mirrored request on a stream of the mirror cluster's HTTP/2 connections (the pool
    its own requests use, as Envoy's async client does). The answer is read and dropped;
    nothing here can delay or fail the main request: at most `limit` bytes wait for the
    stream or in the stream's send buffer, past that the mirror is reset (counted as the
    cluster's upstream_rq_tx_reset)."""

    def __cinit__(self, Cluster cluster, ConnPool pool, loop, HeaderMap headers,
                  bint end_stream, bint head_req, double timeout, Py_ssize_t limit):
        cdef Host host
        cdef int r
        self.pool = pool
        self.headers = headers
        self.end_headers = end_stream
        self.head_req = head_req
        self.limit = limit if limit > 0 else 1048576
        self.queue = []
        host = self._rq_pick(cluster)
        if host is None:
            return
        self._rq_start(host)
        if timeout > 0:
            self.timer = loop.call_later(timeout, self._on_timeout)
        r = pool.new_stream(cluster, host, self)
        if r == POOL_OVERFLOW:
            self._end(False)
        elif r == POOL_QUEUED:
            self.waiting = True

    cdef bint _wants_connection(self):
        self.waiting = False
        return not self.closed

    cdef int _attach(self, PoolConn c) except -1:
        cdef H2UpStream up = <H2UpStream>c
        if self.closed:
            up.ds = self
            return up.abort()
        self.up = up
        up.start(self, self.head_req, False)
        up.encode_headers(self.headers, self.end_headers)
        self.headers = None
        q = self.queue
        self.queue = None
        self.queued = 0
        for item in q:
            if self.closed:
                break
            if type(item) is tuple:
                self.send_data(<bytes>(<tuple>item)[0], <bint>(<tuple>item)[1])
            else:
                self.send_trailers(<HeaderList>item)
        return 0

    cdef int _fail(self, int kind, PoolConn c) except -1:
        self.up = None
        return self._end(False)

    cdef bint _on_upstream_head(self, PoolConn c, HeaderMap rh, bint end_stream) except -1:
        return True

    cdef int _on_upstream_data(self, bytes data, bint end_stream) except -1:
        return 0

    cdef int _on_upstream_trailers(self, HeaderList trailers) except -1:
        return 0

    cdef int _on_upstream_complete(self, PoolConn c) except -1:
        cdef H2UpStream up = self.up
        self.up = None
        if up is not None:
            up.release()
        return self._end(True)

    cdef int _reset(self) except -1:
        self.up = None
        return self._end(False)

    cdef int _write(self, bytes data) except -1:
        return 0

    cdef int send_data(self, bytes data, bint end_stream) except -1:
        cdef H2UpStream up = self.up
        if self.closed:
            return 0
        if up is None:
            self.queue.append((data, end_stream))
            self.queued += PyBytes_GET_SIZE(data)
            if self.queued > self.limit:
                self.reset()
            return 0
        up.encode_data(data, end_stream)
        if up.upstream_full:    # the mirror's window is shut and its buffer past the limit
            self.reset()
        return 0

    cdef int send_trailers(self, HeaderList trailers) except -1:
        if self.closed:
            return 0
        if self.up is None:
            self.queue.append(trailers)
            return 0
        return self.up.encode_trailers(trailers)

    cdef int reset(self) except -1:
        cdef H2UpStream up = self.up
        if self.closed:
            return 0
        self.cluster.upstream_rq_tx_reset.inc()
        self.up = None
        if up is not None:
            up.abort()
        elif self.waiting:
            self.waiting = False
            self.pool.cancel(self.cluster, self.host, self)
        return self._end(False)

    def _on_timeout(self):
        self.timer = None
        if not self.closed:
            self.cluster.upstream_rq_timeout.inc()
            self.reset()

    cdef int _end(self, bint ok) except -1:
        """The mirror is over (answered, failed or reset): release its counts once."""
        self.closed = True
        self.queue = None
        self.headers = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        return self._rq_over(ok)
