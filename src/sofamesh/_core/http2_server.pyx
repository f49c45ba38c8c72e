# HTTP/2 downstream connections and streams; see http2_server.pxd for the contract.
#
# Request path:  data_received -> codec.feed (C) -> RequestHeaders -> H2Stream._begin ->
#                RouteTable.route -> filters -> the router (http_router) -> a pooled
#                upstream stream (HTTP/1.1 or HTTP/2, by the cluster).
# Response path: UpstreamCallbacks (_on_upstream_head / _data / _trailers) -> the codec's
#                send_* -> one transport write per read or upstream callback (flush).

import logging

from cpython.bytes cimport PyBytes_GET_SIZE

from sofamesh._core.codecs.http2_events cimport (
    RequestHeaders, Data, Trailers, StreamReset, WindowUpdated, GoAway,
    ConnectionError as H2ConnectionError,
)
from sofamesh._core.codecs.http1 cimport Head
from sofamesh._core.codecs.http2_map cimport adopt, response_list, trailer_list
from sofamesh._core.conn_pool cimport PoolConn
from sofamesh._core.hcm_config cimport HcmConfig, overload_hit
from sofamesh._core.http_tracing cimport decorate
from sofamesh._core.headers cimport HeaderMap, HeaderList
from sofamesh._core.http_common cimport (
    mono, date_value, int_bytes, DS_BODY, DS_WAIT, DS_CLOSED, SERVER_PASS_THROUGH,
)
from sofamesh._core.http_grpc cimport (
    grpc_local_status, grpc_message_encode, is_grpc_request,
)
from sofamesh._core.http_stream cimport HttpFilter
from sofamesh._core.http_router cimport RouterStream
from sofamesh._core.router cimport Route
from sofamesh._core.stats cimport Counter

from sofamesh._core.codecs.http2 import Connection as _Connection
from sofamesh._core import hcm_config as _hcm_config

log = logging.getLogger("sofamesh.proxy")

cdef unsigned int ERR_NO_ERROR = 0
cdef unsigned int ERR_INTERNAL_ERROR = 2
cdef double LINGER_S = 1.0    # Envoy's HCM delayed_close_timeout default


cdef class Http2ServerConn:
    def __cinit__(self, HcmConfig cfg):
        self.cfg = cfg
        self.streams = {}
        self.remote_ip = b""
        self.stats_seen = {}

    # asyncio protocol -----------------------------------------------------------------
    def connection_made(self, transport):
        cdef HcmConfig cfg = self.cfg
        cfg.cx_total.inc()
        cfg.listener_cx_total.inc()
        cfg.cx_active.inc()
        cfg.listener_cx_active.inc()
        self._adopt(transport)

    def _adopt(self, transport):
        """Takes the connection (from connection_made, or from the HTTP/1 connection that
        saw the preface: it counted the connection already)."""
        cdef HcmConfig cfg = self.cfg
        self.transport = transport
        transport.set_write_buffer_limits(high=cfg.buffer_limit)
        peer = transport.get_extra_info("peername")
        if peer:
            self.remote_ip = peer[0].encode()
            self.remote_port = peer[1]
            self.xff_ip = cfg.local_ip if (self.remote_ip.startswith(b"127.") or
                                           self.remote_ip == b"::1") else self.remote_ip
        cfg.cx_http2_total.inc()
        cfg.cx_http2_active.inc()
        cfg.conns.add(self)
        self.codec = _Connection(False, **cfg.h2_options)
        self.flush()
        self._arm_idle()

    def data_received(self, bytes data):
        if self.closed or self.lingering:
            return
        self.cfg.cx_rx_bytes_total.add(PyBytes_GET_SIZE(data))
        try:
            self._dispatch(self.codec.feed(data))
        except Exception as exc:       # a bug must not take the process down: count, close
            self._internal_error(exc)
            return
        self.flush()
        if self.codec.closed:           # a connection error: its GOAWAY is queued
            self._sync_stats()
            self._linger_close()
            # Its streams end with it now: connection_lost can come much later (a TLS close
            # waits for the client's close_notify), and an upstream answering meanwhile
            # had a closed codec to write to (found by tests/fuzz/proxy_campaign.py).
            _reset_streams(self, False)     # flag DPE, as Envoy's

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        cdef HcmConfig cfg = self.cfg
        if self.transport is None:
            return
        self.closed = True
        self.transport = None
        cfg.cx_active.dec()
        cfg.cx_http2_active.dec()
        cfg.listener_cx_active.dec()
        cfg.listener_cx_destroy.inc()
        cfg.cx_destroy.inc()
        if self.close_when_idle or self.codec.goaway_sent:
            cfg.cx_destroy_local.inc()
        else:
            cfg.cx_destroy_remote.inc()
        cfg.conns.discard(self)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if self.rt_timer is not None:
            self.rt_timer.cancel()
            self.rt_timer = None
        if self.drain_timer is not None:
            self.drain_timer.cancel()
            self.drain_timer = None
        _reset_streams(self, True)
        self._sync_stats()

    def pause_writing(self):
        # our client reads slower than the upstreams send: stop reading them
        cdef H2Stream s
        self.write_paused = True
        for s in list(self.streams.values()):
            if s.up is not None:
                s.up.read_pause(True)

    def resume_writing(self):
        cdef H2Stream s
        self.write_paused = False
        for s in list(self.streams.values()):
            if s.up is not None and not s.paused_up:
                s.up.read_pause(False)

    # connection -------------------------------------------------------------------------
    cdef int flush(self) except -1:
        """What the codec queued leaves once per turn of the event loop: the responses of
        one read, or of one upstream read that completes many streams, share a write(2).
        PERF(benchmarks/h2_bench.py): 3-5 writes per request became 0.2."""
        if self.transport is not None and not self.flush_pending:
            self.flush_pending = True
            self.cfg.loop.call_soon(self._flush_now)
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
            self.cfg.cx_tx_bytes_total.add(PyBytes_GET_SIZE(out))
        return 0

    cdef int _dispatch(self, list events) except -1:
        cdef HcmConfig cfg = self.cfg
        cdef H2Stream s
        cdef object ev
        cdef bint counted = False       # an event the codec counted: http2.* is synced
        for ev in events:
            t = type(ev)
            if t is Data:
                s = self.streams.get((<Data>ev).stream_id)
                if s is None:
                    # a stream we answered and forgot: its window still comes back
                    self.codec.acknowledge_received_data((<Data>ev).stream_id,
                                                         (<Data>ev).flow_controlled_length)
                    continue
                s._on_data((<Data>ev).data, (<Data>ev).end_stream,
                           (<Data>ev).flow_controlled_length)
            elif t is RequestHeaders:
                s = H2Stream.__new__(H2Stream)
                s.conn = self
                s.cfg = cfg
                s.sid = (<RequestHeaders>ev).stream_id
                s.transport = self.transport
                s.remote_ip = self.remote_ip
                s.remote_port = self.remote_port
                s.xff_ip = self.xff_ip
                s.resp_flags = "-"
                s.upstream_host = "-"
                s.up_queue = []
                self.streams[s.sid] = s
                if self.idle_timer is not None:
                    self.idle_timer.cancel()
                    self.idle_timer = None
                s._begin(adopt((<RequestHeaders>ev).headers), (<RequestHeaders>ev).end_stream,
                         (<RequestHeaders>ev).protocol)
            elif t is Trailers:
                counted = True
                s = self.streams.get((<Trailers>ev).stream_id)
                if s is not None:
                    s._on_trailers(adopt((<Trailers>ev).headers))
            elif t is StreamReset:
                counted = True
                s = self.streams.get((<StreamReset>ev).stream_id)
                if s is not None:
                    if not (<StreamReset>ev).remote:
                        cfg.cx_protocol_error.inc()    # a malformed request, reset by us
                    s._on_reset((<StreamReset>ev).remote)
            elif t is WindowUpdated:
                for s in list(self.streams.values()):
                    if s.paused_up:
                        s._check_window()
            elif t is GoAway:
                counted = True
                # the client goes away: finish what it opened, then close
                self.close_when_idle = True
                if not self.streams:
                    self._close_when_done(False)
            elif t is H2ConnectionError:
                counted = True
                cfg.cx_protocol_error.inc()
                log.debug("HTTP/2 connection error from %s: %s", self.remote_ip,
                          (<H2ConnectionError>ev).reason)
        if counted:
            self._sync_stats()
        return 0

    cdef int _stream_ended(self, H2Stream s) except -1:
        if self.streams.get(s.sid) is s:
            del self.streams[s.sid]
        if not self.streams:
            if self.close_when_idle:
                self._close_when_done(False)
            elif self.cfg.draining:
                self.close()
            else:
                self._arm_idle()
        return 0

    cdef int _sync_stats(self) except -1:
        """Adds what the codec counted since the last sync to the listener's http2.*."""
        cdef dict st
        cdef dict seen = self.stats_seen
        cdef Counter c
        if self.codec is None:
            return 0
        st = self.codec.stats
        for k, c in self.cfg.h2_stats.items():
            v = st.get(k, 0)
            d = v - seen.get(k, 0)
            if d > 0:
                c.add(d)
                seen[k] = v
        return 0

    cdef int _arm_idle(self) except -1:
        cdef double t = self.cfg.idle_timeout
        if t > 0 and self.idle_timer is None and not self.closed:
            self.idle_timer = self.cfg.loop.call_later(t, self._on_idle)
        return 0

    cdef int arm_at(self, double when) except -1:
        """A stream's route or per-try deadline: one timer per connection, armed for the
        earliest (PERF(benchmarks/h2_bench.py): a timer per request cost ~3%; streams with
        the same route timeout never re-arm it)."""
        if self.rt_timer is None or when < self.rt_due - 0.001:
            if self.rt_timer is not None:
                self.rt_timer.cancel()
            self.rt_due = when
            self.rt_timer = self.cfg.loop.call_later(max(when - mono(), 0.0), self._on_rt_timer)
        return 0

    def _on_rt_timer(self):
        cdef H2Stream s
        cdef double now = mono(), due = 0
        self.rt_timer = None
        for s in list(self.streams.values()):
            if s.timer_at <= 0:
                continue
            if s.timer_at <= now + 0.0005:
                s.timer_at = 0
                s._on_timer()
            elif due == 0 or s.timer_at < due:
                due = s.timer_at
        for s in list(self.streams.values()):     # re-armed by _on_timer
            if s.timer_at > 0 and (due == 0 or s.timer_at < due):
                due = s.timer_at
        if due > 0 and not self.closed:
            self.arm_at(due)

    def _on_idle(self):
        self.idle_timer = None
        if self.closed or self.streams:
            return
        self.cfg.cx_idle_timeout.inc()
        self.close()

    def busy(self):
        return bool(self.streams)

    def close(self):
        """Envoy's graceful drain (idle timeout, listener drain): GOAWAY with the largest
        stream id (no new streams soon), then after the HCM drain_timeout a GOAWAY naming
        the last stream taken, and close once those streams are done."""
        if self.transport is None or self.codec.goaway_sent:
            return
        self.codec.goaway(ERR_NO_ERROR, 0x7fffffff)
        self.write_now()
        self.drain_timer = self.cfg.loop.call_later(self.cfg.drain_timeout, self._final_goaway)

    def _final_goaway(self):
        self.drain_timer = None
        if self.transport is None:
            return
        self.codec.goaway(ERR_NO_ERROR)
        self._close_when_done(False)

    def _close_when_done(self, bint now):
        """Write what is queued; close now, or once the streams still open are done."""
        if self.transport is None:
            return
        self.write_now()
        self.close_when_idle = True
        if now or not self.streams:
            self._sync_stats()
            self.transport.close()

    def _linger_close(self):
        """After a connection error, as Envoy's delayed close: the GOAWAY is written and
        our side shut, then the client's bytes are read and dropped until it closes (or
        LINGER_S), so that bytes left unread cannot make the kernel answer with a RST that
        overtakes the GOAWAY. A transport with no half-close (TLS) closes at once."""
        t = self.transport
        if t is None:
            return
        self.write_now()
        self.close_when_idle = True
        if not t.can_write_eof():
            t.close()
            return
        self.lingering = True
        t.write_eof()
        if self.drain_timer is not None:
            self.drain_timer.cancel()
        self.drain_timer = self.cfg.loop.call_later(LINGER_S, self._linger_done)

    def _linger_done(self):
        self.drain_timer = None
        if self.transport is not None:
            self.transport.close()

    def _internal_error(self, exc):
        log.exception("internal error on an HTTP/2 downstream connection: %r", exc)
        self.cfg.cx_protocol_error.inc()
        if self.transport is not None:
            self.transport.abort()


cdef int _reset_streams(Http2ServerConn c, bint remote) except -1:
    """The connection is gone (remote: the client went) or going after a protocol error:
    every stream's upstream is abandoned."""
    cdef H2Stream s
    for s in list(c.streams.values()):
        try:
            s._on_reset(remote)
        except Exception as exc2:
            log.exception("internal error resetting an HTTP/2 stream: %r", exc2)
    c.streams = {}
    return 0


cdef class H2Stream(RouterStream):
    """One request/response exchange of an HTTP/2 connection."""

    cdef int _begin(self, HeaderList h, bint end_stream, bytes protocol) except -1:
        cdef HcmConfig cfg = self.cfg
        self.head = h
        self.http_version = 20
        self.in_request = True
        self.t_start = mono()
        self.req_done = end_stream
        self.up_end = end_stream
        self.state = DS_WAIT if end_stream else DS_BODY
        self.head_req = h.method_ == b"HEAD"
        self.grpc = is_grpc_request(h)
        self.service_ms = -1
        cfg.rq_total.inc()
        cfg.rq_http2_total.inc()
        cfg.rq_active.inc()
        if cfg.request_timeout > 0 or cfg.stream_idle_timeout > 0:
            self.rq_due = self.t_start + cfg.request_timeout if cfg.request_timeout > 0 else 0
            self.idle_due = self.t_start + cfg.stream_idle_timeout \
                if cfg.stream_idle_timeout > 0 else 0
            self._arm_stream_timer()
        if h.method_ == b"CONNECT":
            if protocol is not None:    # the codec took it: allow_connect advertised it
                return self._begin_upgrade(h, protocol)
            return self._begin_connect(h)
        if h.find_from("expect", 6, 0) >= 0 and h.get_all(b"expect").lower() == b"100-continue":
            # Envoy answers 100-continue itself (no proxy_100_continue) and drops the header
            h.remove(b"expect")
            if not end_stream:
                self._h2_headers([(b":status", b"100")], False)
                self.resp_ended = False
        if cfg.overload_reject and overload_hit(cfg.overload_reject):  # stop_accepting_requests
            return self._overloaded()
        self.route = cfg.routes.route(h)
        if cfg.decorate:    # HCM tracing: the route's decorator, local replies included
            decorate(self, h)
        self.fidx = 0
        return self._decode_continue()

    cdef int _begin_upgrade(self, HeaderList h, bytes protocol) except -1:
        """Extended CONNECT (RFC 8441, `allow_connect`): an upgrade of type :protocol,
        served as Envoy serves it. The request becomes the HTTP/1.1 upgrade it stands for
        (GET, `upgrade: <protocol>`, `connection: upgrade`) and is routed as one: a route or
        connection manager without that upgrade type gets 403 (counted in
        downstream_rq_ws_on_non_ws_route, the connection drained). The upstream's 101 is
        answered `:status 200` without its connection headers, then DATA frames carry the
        tunnel's bytes both ways and END_STREAM its half close."""
        cdef HcmConfig cfg = self.cfg
        cdef bytes up = protocol.lower()
        if cfg.overload_reject and overload_hit(cfg.overload_reject):
            return self._overloaded()
        h.method_ = b"GET"
        h.add(b"upgrade", protocol)
        h.add(b"connection", b"upgrade")
        self.route = cfg.routes.route(h)
        if cfg.decorate:
            decorate(self, h)
        if up not in cfg.upgrades and (self.route is None or up not in self.route.upgrades):
            if self.route is not None:  # no route at all: the router's 404 (Envoy)
                cfg.rq_ws_on_non_ws_route.inc()
                self.conn.close()   # Envoy drains the connection: GOAWAY before the 403
                return self._local_reply(403, b"", None, False)
        else:
            self.upgrade = True
            cfg.cx_upgrades_total.inc()
            cfg.cx_upgrades_active.inc()
        self.fidx = 0
        return self._decode_continue()

    cdef int _upgrade_done(self) except -1:
        if self.upgrade:
            self.upgrade = False
            self.cfg.cx_upgrades_active.dec()
        return 0

    cdef int _begin_connect(self, HeaderList h) except -1:
        """A CONNECT stream (RFC 9113 8.5): an upgrade of type CONNECT as on HTTP/1.1
        (http_proxy._on_connect_head); on a route with connect_config its DATA frames are
        the tunnel's bytes and END_STREAM its half close (tcp_upstream)."""
        cdef HcmConfig cfg = self.cfg
        if cfg.overload_reject and overload_hit(cfg.overload_reject):
            return self._overloaded()
        self.route = cfg.routes.route(h)
        if b"connect" in cfg.upgrades or \
                (self.route is not None and b"connect" in self.route.upgrades):
            cfg.cx_upgrades_total.inc()
        elif self.route is not None:    # no route at all: the router's 404 (Envoy)
            cfg.rq_ws_on_non_ws_route.inc()
            self.conn.close()   # Envoy drains the connection: GOAWAY before the 403
            return self._local_reply(403, b"", None, False)
        self.connect = self.route is not None and self.route.connect_term
        self.fidx = 0
        return self._decode_continue()

    cdef int _on_data(self, bytes data, bint end_stream, long long flow) except -1:
        cdef HcmConfig cfg = self.cfg
        cdef HttpFilter f
        cdef tuple filters
        cdef Py_ssize_t j
        if self.pause_mask:
            self.unacked += flow
        else:
            self.conn.codec.acknowledge_received_data(self.sid, flow)
        if self.state != DS_BODY:
            return 0                    # answered already: the rest of the body is dropped
        self.bytes_rx += PyBytes_GET_SIZE(data)
        if cfg.stream_idle_timeout > 0:
            self.idle_due = mono() + cfg.stream_idle_timeout
        if cfg.any_data:
            filters = cfg.filters
            for j in range(len(filters)):
                f = filters[j]
                if f.wants_data:
                    f.decode_data(self, data, end_stream)
                    if self.state == DS_CLOSED or (self.resp_started and self.up is None):
                        break
                    if self.enc_swap is not None:   # s.replace_data (a decompressor)
                        data = self.enc_swap
                        self.enc_swap = None
        if self.state == DS_BODY and not (self.resp_started and self.up is None):
            self._send_data(data, end_stream)
        if end_stream:
            self._request_complete()
        return 0

    cdef int _on_trailers(self, HeaderList t) except -1:
        if self.state != DS_BODY:
            return 0
        if not (self.resp_started and self.up is None):
            self._send_trailers(t)
        return self._request_complete()

    cdef int _request_complete(self) except -1:
        self.req_done = True
        self.shadows = None
        self.rq_due = 0
        if self.state == DS_BODY:
            self.state = DS_WAIT
        if self.in_request and self.cluster is not None and not self.resp_started:
            self._arm_timer()
        if self.resp_ended and not self.rst:
            return self._finish()
        return 0

    cdef int _on_reset(self, bint remote) except -1:
        """The client reset the stream (or the connection went): abandon the upstream."""
        cdef HcmConfig cfg = self.cfg
        cdef PoolConn u
        if self.rst or self.state == DS_CLOSED:
            return 0
        self.rst = True
        self.state = DS_CLOSED
        self._upgrade_done()
        if self.in_request:
            cfg.rq_rx_reset.inc()
            if self.resp_flags == "-":
                self.resp_flags = "DR" if remote else "DPE"
            self._abandon_upstream()
            self._end_request_stats(0)
        if self.up is not None:
            u = self.up
            self.up = None
            u.ds = None
            if self.host is not None:
                self.host.rq_active -= 1
            u.abort()
        if self.shadows is not None:
            self._drop_shadows()
        self.timer_at = 0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        return self.conn._stream_ended(self)

    cdef int _finish(self) except -1:
        """Both directions are over (or the response is and the request body is not
        wanted: Envoy resets the stream with NO_ERROR after a complete response)."""
        if self.state == DS_CLOSED:
            return 0
        if not self.req_done and not self.rst and not self.conn.closed:
            self.conn.codec.reset_stream(self.sid, ERR_NO_ERROR)
            self.rst = True
        self.state = DS_CLOSED
        self._upgrade_done()
        if self.in_request:
            self._end_request_stats(self.resp_status)
        self.timer_at = 0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.conn.flush()
        return self.conn._stream_ended(self)

    # timers: the connection's (see Http2ServerConn.arm_at) --------------------------------
    cdef int _arm_timer(self) except -1:
        cdef Route r = self.route
        if r is None or self.rq_timeout <= 0:
            return 0
        self.deadline = mono() + self.rq_timeout
        return self._arm_at(self.deadline)

    cdef int _arm_at(self, double when) except -1:
        if self.timer_at > 0 and self.timer_at <= when + 0.001:
            return 0
        self.timer_at = when
        return self.conn.arm_at(when)

    # encoding --------------------------------------------------------------------------
    cdef int _overload_keepalive(self) except -1:
        """Before a response's headers: the overload manager's disable_http_keepalive,
        drawn against its value, starts the connection's drain (GOAWAY), as Envoy does."""
        cdef HcmConfig cfg = self.cfg
        if cfg.overload_no_keepalive and not self.conn.codec.goaway_sent and \
                overload_hit(cfg.overload_no_keepalive):
            cfg.cx_overload_disable_keepalive.inc()
            self.conn.close()
        return 0

    cdef int _h2_headers(self, list headers, bint end_stream) except -1:
        if self.rst or self.conn.closed:
            return 0
        self.conn.codec.send_headers(self.sid, headers, end_stream)
        if end_stream:
            self.resp_ended = True
        return 0

    cdef int _h2_data(self, bytes data, bint end_stream) except -1:
        if self.rst or self.conn.closed or self.resp_ended:
            return 0
        if not PyBytes_GET_SIZE(data) and not end_stream:
            return 0
        self.conn.codec.send_data(self.sid, data, end_stream)
        if end_stream:
            self.resp_ended = True
        elif self.up is not None and not self.paused_up and \
                self.conn.codec.outbound_buffered(self.sid) > self.cfg.buffer_limit:
            # the client's window is shut: stop reading the upstream until it opens
            self.paused_up = True
            self.up.read_pause(True)
        return 0

    cdef int _check_window(self) except -1:
        if self.conn.codec.outbound_buffered(self.sid) <= self.cfg.buffer_limit // 2:
            self.paused_up = False
            if self.up is not None and not self.conn.write_paused:
                self.up.read_pause(False)
        return 0

    # HttpStream ------------------------------------------------------------------------
    cdef int _flush_out(self) except -1:
        return self.conn.flush()

    cdef int _local_reply(self, int code, bytes body, tuple extra, bint close) except -1:
        cdef HcmConfig cfg = self.cfg
        cdef HeaderList resp
        if self.resp_started:
            return self._reset()
        if cfg.reply_map is not None:
            code, body = self._map_reply(code, body)
        self._drop_upstream()
        self.resp_status = code
        self.resp_started = True
        if not self.req_done:       # counted on every answer, local or proxied (Envoy)
            cfg.rq_response_before_rq_complete.inc()
        if self.grpc:
            # Envoy answers a gRPC request with a trailers-only gRPC response: HTTP 200 and
            # the gRPC status its HTTP status maps to, the body as grpc-message
            resp = HeaderList(status=200)
            resp.add(b"content-type", b"application/grpc")
            # (a stream past its max duration: DEADLINE_EXCEEDED whatever the HTTP status)
            resp.add(b"grpc-status", b"4" if self.resp_flags == "DT" else
                     grpc_local_status(code))
            if body:
                resp.add(b"grpc-message", grpc_message_encode(body))
            body = b""
        else:
            resp = HeaderList(status=code)
            if body:
                resp.add(b"content-length", int_bytes(PyBytes_GET_SIZE(body)))
                resp.add(b"content-type", b"text/plain")
        resp.add(b"date", date_value())
        if cfg.server_mode != SERVER_PASS_THROUGH:
            resp.add(b"server", cfg.server_name)
        if extra is not None:
            resp.add_flat(extra)
        if cfg.via:
            resp.add(b"via", cfg.via)
        if cfg.any_encode:  # a local reply passes the encode filters too (Envoy)
            body = self._local_encode(resp, code, body)
        if self.resp_add_extra is not None:
            resp.add_flat(tuple(self.resp_add_extra))
        self._overload_keepalive()
        self._h2_headers(response_list(resp), not body or self.head_req)
        if body and not self.head_req:
            self._h2_data(body, True)
        self.bytes_tx = PyBytes_GET_SIZE(body)
        return self._finish()

    # UpstreamCallbacks -------------------------------------------------------------------
    cdef bint _wants_connection(self):
        return self.state != DS_CLOSED and self.in_request

    cdef int _upstream_read(self) except -1:
        if self.cfg.stream_idle_timeout > 0:
            self.idle_due = mono() + self.cfg.stream_idle_timeout
        return 0

    cdef int _after_upstream_read(self) except -1:
        return self.conn.flush()

    cdef bint _on_upstream_head(self, PoolConn c, HeaderMap rh, bint end_stream) except -1:
        cdef int status = rh.get_status()
        if not self._router_response(c, rh):
            return False        # retried
        if status == 101 and self.upgrade:
            # the upgrade taken: HTTP/2 says so with a 200 (RFC 8441 section 5), its
            # HTTP/1.1 connection headers dropped (Envoy)
            rh.remove(b"upgrade")
            rh.remove(b"connection")
            if type(rh) is Head:
                (<Head>rh).status = 200
            else:
                (<HeaderList>rh).status = 200
            status = 200
        self._hcm_response(rh, status, end_stream)
        self.resp_started = True
        if not self.req_done:
            self.cfg.rq_response_before_rq_complete.inc()
        self.cluster.count_status(status)
        self._overload_keepalive()
        self._h2_headers(response_list(rh), end_stream)
        return True

    cdef int _on_upstream_data(self, bytes data, bint end_stream) except -1:
        if self.cfg.any_data:
            data = self._encode_filters_data(data, end_stream)
            if data is None:
                return 0
        self.bytes_tx += PyBytes_GET_SIZE(data)
        if self.head_req:
            data = b""
        return self._h2_data(data, end_stream)

    cdef int _on_upstream_trailers(self, HeaderList trailers) except -1:
        cdef list t
        cdef bytes tail = None
        if self.trace is not None and self.grpc:
            self._trace_grpc(trailers)
        if self.cfg.any_encode:
            self._encode_trailers(trailers)
            tail = self.enc_swap            # a filter's last body bytes (a compressor's end)
            self.enc_swap = None
        if self.rst or self.conn.closed or self.resp_ended:
            return 0
        if tail:
            self.bytes_tx += PyBytes_GET_SIZE(tail)
            self._h2_data(tail, False)
        t = trailer_list(trailers)
        if t:
            self.conn.codec.send_trailers(self.sid, t)
            self.resp_ended = True
            return 0
        return self._h2_data(b"", True)

    cdef int _on_upstream_complete(self, PoolConn c) except -1:
        self.up = None
        if self.host is not None:
            self.host.rq_active -= 1
            if self.resp_status < 500:
                self.host.rq_success += 1
            else:
                self.host.rq_error += 1
        if c is not None and c.reusable and self.req_done:
            c.release()
        elif c is not None:
            c.abort()
        if not self.resp_ended:
            self._h2_data(b"", True)
        return self._finish()

    cdef int _reset(self) except -1:
        """The response broke off: reset this stream (the connection goes on)."""
        cdef PoolConn u
        cdef HcmConfig cfg = self.cfg
        if self.state == DS_CLOSED:
            return 0
        cfg.rq_tx_reset.inc()
        if self.up is not None:
            u = self.up
            self.up = None
            u.ds = None
            u.abort()
        if not self.rst and not self.conn.closed:
            self.conn.codec.reset_stream(self.sid, ERR_INTERNAL_ERROR)
        self.rst = True
        self.state = DS_CLOSED
        if self.in_request:
            self._end_request_stats(self.resp_status)
        self.timer_at = 0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.conn.flush()
        return self.conn._stream_ended(self)

    cdef int _write(self, bytes data) except -1:
        # a terminated CONNECT's upstream bytes: DATA frames of this stream
        self.bytes_tx += PyBytes_GET_SIZE(data)
        return self._h2_data(data, False)

    cdef int _tunnel_closed(self) except -1:
        # the CONNECT upstream's end: END_STREAM (a reset with NO_ERROR follows when the
        # client has not ended its side, as after any complete response)
        if self.state == DS_CLOSED:
            return 0
        self._on_upstream_complete(None)
        return self.conn.flush()

    cdef int _pause(self, int reason) except -1:
        self.pause_mask |= reason
        return 0

    cdef int _resume(self, int reason) except -1:
        cdef long long n
        if self.pause_mask & reason:
            self.pause_mask &= ~reason
            if self.pause_mask == 0 and self.unacked and not self.rst and \
                    not self.conn.closed:
                n = self.unacked
                self.unacked = 0
                self.conn.codec.acknowledge_received_data(self.sid, n)
                self.conn.flush()
        return 0

    def close(self):
        """A filter closes the stream: reset it (the connection's other streams go on)."""
        self._reset()

    def _internal_error(self, exc):
        log.exception("internal error on an HTTP/2 stream: %r", exc)
        self.cfg.cx_protocol_error.inc()
        self._reset()


_hcm_config.register_codec("http2", Http2ServerConn)
