# HTTP/1.1 downstream connections (the HTTP/1 server codec's connection, one stream at a
# time) and the connection manager's per-stream flow: filter chain, local replies, timers,
# stats, access log. See http_proxy.pxd; the stream layers are in http_stream.pxd.
#
# Request path:  data_received -> parse_request (C) -> RouteTable.route (C) -> filters ->
#                the router (http_router) mutates the request HeaderMap -> a pooled upstream
#                stream encodes it (headers, then decoded body pieces / trailers).
# Response path: the pool's connection parses the head -> _on_upstream_head (router and
#                connection-manager mutations) -> the HTTP/1 encoder (codecs/http1_encode)
#                renders it; body pieces are re-framed (content-length: as they are).
# No coroutine, future or task per request: only new upstream connections use a task.

import os
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from sofamesh._core.buffer cimport WriteBuf
from sofamesh._core.codecs.http1 cimport (
    Head, parse_request, H1_E_TOO_LARGE, H1_E_TOO_MANY, H1_E_NOT_IMPL, H1_E_BAD_TARGET,
    H1_E_OBS_FOLD, unfold_head,
)
from sofamesh._core.codecs.http1_body cimport (
    BodyReader, parse_trailers, FR_NONE, FR_LENGTH, FR_CHUNKED, FR_EOF,
)
from sofamesh._core.codecs.http1_encode cimport (
    response_framing, encode_response_head, encode_chunk, encode_last_chunk,
)
from sofamesh._core.conn_pool cimport PoolConn
from sofamesh._core.hcm_config cimport HcmConfig, overload_hit
from sofamesh._core.headers cimport HeaderMap, HeaderList
from sofamesh._core.http_common cimport (
    mono, date_value, int_bytes, needs_normalizing,
    DS_HEAD, DS_BODY, DS_WAIT, DS_DRAIN, DS_TUNNEL, DS_CLOSED,
    SERVER_PASS_THROUGH,
    PAUSE_UPSTREAM_FULL, PAUSE_PIPELINE,
)
from sofamesh._core.http_grpc cimport (
    grpc_local_status, grpc_message_encode, is_grpc_request,
)
from sofamesh._core.http_stream cimport HttpFilter, FILTER_CONTINUE, FILTER_STOP
from sofamesh._core.http_router cimport RouterStream
from sofamesh._core.http_tracing cimport decorate
from sofamesh._core.http_common import normalize_request_path
from sofamesh._core.codecs.http2_frames import PREFACE as _PREFACE
from sofamesh._core import hcm_config as _hcm_config
from sofamesh._core import http_stream as _http_stream


cdef bytes H2_PREFACE = _PREFACE


# a held response's most bytes (Envoy's encoder buffer limit: the listener's default
# per_connection_buffer_limit_bytes, 1 MiB); beyond it the answer is a 500
cdef Py_ssize_t HOLD_LIMIT = 1024 * 1024
HOLD_LIMIT_ = HOLD_LIMIT
cdef double DELAYED_CLOSE_S = 1.0  # Envoy's HCM delayed_close_timeout default

cdef enum:
    H1_E_TIMEOUT = -1000        # not a parse error: request_headers_timeout (_header_timeout)


cdef class DownstreamConn(RouterStream):
    def __cinit__(self, HcmConfig cfg):
        self.cfg = cfg
        self.state = DS_HEAD
        self.pending = None
        self.h1 = Head()
        self.head = self.h1
        self.body = BodyReader()
        self.wb = WriteBuf(2048)
        self.up_queue = []
        self.remote_ip = b""
        self.resp_flags = "-"
        self.upstream_host = "-"

    # asyncio protocol -----------------------------------------------------------------
    def connection_made(self, transport):
        cdef HcmConfig cfg = self.cfg
        self.transport = transport
        self.t_write = transport.write
        transport.set_write_buffer_limits(high=cfg.buffer_limit)
        peer = transport.get_extra_info("peername")
        if peer:
            self.remote_ip = peer[0].encode()
            self.remote_port = peer[1]
            # Envoy appends its own address to x-forwarded-for for a loopback peer
            self.xff_ip = cfg.local_ip if (self.remote_ip.startswith(b"127.") or
                                           self.remote_ip == b"::1") else self.remote_ip
        cfg.cx_total.inc()
        cfg.cx_active.inc()
        if cfg.codec_type == 0:
            self.sniff = True           # AUTO: HTTP/1 unless the bytes open with h2's preface
        else:
            self._count_http1()
        cfg.listener_cx_total.inc()
        cfg.listener_cx_active.inc()
        cfg.conns.add(self)
        self._arm_idle()

    def data_received(self, bytes data):
        self.cfg.cx_rx_bytes_total.add(PyBytes_GET_SIZE(data))
        self.got_data = True
        if self.state == DS_TUNNEL:
            self._tunnel_up(data)
            return
        if self.state == DS_CLOSED:
            return
        if self.pending is not None:
            data = self.pending + data
            self.pending = None
        if self.sniff:
            if data[:24] == H2_PREFACE[:PyBytes_GET_SIZE(data)]:
                if PyBytes_GET_SIZE(data) < 24:
                    self.pending = data
                    return
                self._to_http2(data)
                return
            self.sniff = False
            self._count_http1()
        # a read: the loop has run since, so what earlier callbacks wrote is on its way
        self.resp_pending = 0
        self.dispatching = True
        try:
            self._process(data, 0)
        except Exception as exc:       # a bug must not take the process down: count, close
            self._internal_error(exc)
        self.dispatching = False

    cdef int _count_http1(self) except -1:
        self.h1_counted = True
        self.cfg.cx_http1_total.inc()
        self.cfg.cx_http1_active.inc()
        return 0

    def _to_http2(self, bytes data):
        """AUTO: the client spoke HTTP/2 (prior knowledge): the connection goes to the
        HTTP/2 codec's connection with what was read."""
        cdef HcmConfig cfg = self.cfg
        transport = self.transport
        self.sniff = False
        self.state = DS_CLOSED
        self.transport = None
        self.t_write = None
        cfg.conns.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        h2 = cfg.codec("http2")(cfg)
        transport.set_protocol(h2)
        h2._adopt(transport)
        h2.data_received(data)

    def hand_over(self):
        """Hot restart (proxy/hot_restart.py): a plain HTTP/1.1 connection between requests,
        with nothing read ahead and nothing left to write, can move to the new process.
        Returns a duplicate of its descriptor (None when it is not in that state); once the
        new process has it, `handed_over()` drops this side."""
        t = self.transport
        if (self.state != DS_HEAD or self.in_request or self.pending is not None or
                self.dispatching or self.sniff or t is None or t.get_write_buffer_size() or
                t.get_extra_info("sslcontext") is not None):
            return None
        sock = t.get_extra_info("socket")
        if sock is None:
            return None
        return os.dup(sock.fileno())

    def handed_over(self):
        """The transport goes without a FIN (the new process's duplicate keeps the socket
        open): the new process serves the connection from its next byte, still in the
        kernel's receive queue."""
        self.close_after = True          # counted as closed here (cx_destroy_local)
        if self.transport is not None:
            self.transport.abort()

    def eof_received(self):
        # A client FIN closes the connection and resets an in-flight request, as Envoy
        # does for HTTP/1.1 (no half-close support on HTTP streams), but in a terminated
        # CONNECT's tunnel: there it half-closes the upstream (Envoy's end_stream).
        if self.connect and self.state == DS_TUNNEL and self.up is not None:
            self.ds_eof = True
            self.up.encode_data(b"", True)
            return True
        return False

    def connection_lost(self, exc):
        cdef HcmConfig cfg = self.cfg
        cdef PoolConn u
        if self.state == DS_CLOSED and self.transport is None:
            return
        prev = self.state
        self.state = DS_CLOSED
        cfg.cx_active.dec()
        if self.h1_counted:
            cfg.cx_http1_active.dec()
        cfg.listener_cx_active.dec()
        cfg.listener_cx_destroy.inc()
        cfg.cx_destroy.inc()
        if self.ds_eof:
            # Envoy: the client's half close ended the CONNECT stream's request side, the
            # upstream's end closed the connection; counted as the client's close
            cfg.cx_destroy_remote.inc()
            if self.in_request:
                cfg.rq_rx_reset.inc()
        elif self.close_after or prev == DS_CLOSED:
            cfg.cx_destroy_local.inc()
        else:
            cfg.cx_destroy_remote.inc()
        cfg.conns.discard(self)
        if prev == DS_TUNNEL or self.upgrade:
            cfg.cx_upgrades_active.dec()
        if self.in_request and prev == DS_TUNNEL:
            self._end_request_stats(self.resp_status)
        elif self.in_request:
            cfg.rq_rx_reset.inc()
            self.resp_flags = "DC"
            if self.host is not None and self.up is None:
                cfg.pool.cancel(self.cluster, self.host, self)
            self._end_request_stats(0)
        if self.up is not None:
            u = self.up
            self.up = None
            u.ds = None
            u.abort()
        if self.shadows is not None:
            self._drop_shadows()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.hdr_timer is not None:
            self.hdr_timer.cancel()
            self.hdr_timer = None
        if self.retry_timer is not None:
            self.retry_timer.cancel()
            self.retry_timer = None
            self.cluster.retries_active -= 1
        self.transport = None
        self.t_write = None

    def pause_writing(self):
        # our client reads slower than the upstream sends: stop reading the upstream
        if self.up is not None:
            self.up.read_pause(True)

    def resume_writing(self):
        if self.up is not None:
            self.up.read_pause(False)

    # request path -----------------------------------------------------------------------
    cdef int _process(self, bytes data, Py_ssize_t off) except -1:
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data), k
        cdef int r
        cdef HcmConfig cfg = self.cfg
        while off < n:
            if self.state == DS_HEAD:
                if self.resp_pending + self.resp_held >= 2:
                    return self._flood()
                r = parse_request(self.h1, data, off, cfg.max_head_bytes, cfg.max_headers)
                if r == 0:
                    self.pending = data[off:] if off else data
                    if cfg.request_headers_timeout > 0 and self.hdr_timer is None:
                        self.hdr_timer = cfg.loop.call_later(cfg.request_headers_timeout,
                                                             self._header_timeout)
                    return 0
                if self.hdr_timer is not None:
                    self.hdr_timer.cancel()
                    self.hdr_timer = None
                if r == H1_E_OBS_FOLD:
                    data = unfold_head(data, self.h1.start, self.h1.length)
                    off = 0
                    n = PyBytes_GET_SIZE(data)
                    continue
                if r > 0 and (cfg.normalize_path or cfg.merge_slashes) and \
                        needs_normalizing(self.h1, cfg.merge_slashes):
                    fixed = normalize_request_path(data, self.h1.start, self.h1.path_off,
                                                   self.h1.path_len, cfg.normalize_path,
                                                   cfg.merge_slashes)
                    if fixed is not None:
                        data = fixed
                        off = 0
                        n = PyBytes_GET_SIZE(data)
                        continue
                if r < 0:
                    return self._error_reply(r)
                off += r
                self._on_head()
            elif self.state == DS_BODY or self.state == DS_DRAIN:
                k = self.body.feed(PyBytes_AS_STRING(data) + off, n - off)
                if k < 0:
                    cfg.cx_protocol_error.inc()
                    if self.resp_started:
                        return self._reset()
                    self.resp_flags = "DPE"
                    return self._local_reply(400, b"Bad Request", None, True)
                if self.state == DS_BODY and k > 0:
                    self.bytes_rx += k
                    if cfg.stream_idle_timeout > 0:
                        self.idle_due = mono() + cfg.stream_idle_timeout
                    self._request_body(data, off, k)
                    if self.state == DS_CLOSED:
                        return 0
                off += k
                if self.body.done:
                    if self.state == DS_DRAIN:
                        self.state = DS_HEAD
                    elif self.state == DS_BODY:
                        self._request_complete()
            elif self.state == DS_WAIT:
                # pipelined request: keep it until this response is done
                self.pending = data[off:] if off else data
                if PyBytes_GET_SIZE(self.pending) > cfg.buffer_limit:
                    self._pause(PAUSE_PIPELINE)
                return 0
            elif self.state == DS_TUNNEL:
                self._tunnel_up(data[off:] if off else data)
                return 0
            else:
                return 0
        return 0

    cdef int _request_body(self, bytes data, Py_ssize_t off, Py_ssize_t k) except -1:
        """k bytes of request body at data[off:]: decoded payload (and trailers) to the
        stream; chunk framing stays in the codec."""
        cdef BodyReader b = self.body
        cdef list chunks
        cdef Py_ssize_t fw
        if b.mode != FR_CHUNKED:
            return self._decode_data(data if (off == 0 and k == PyBytes_GET_SIZE(data))
                                     else data[off:off + k], b.done)
        chunks = b.chunks
        if chunks:
            b.chunks = []
            self._decode_data(chunks[0] if len(chunks) == 1 else b"".join(chunks), False)
            if not self.in_request or self.state == DS_CLOSED:
                return 0
        if b.trailers_dropped:
            fw = b.fwd
            if k > fw and self.cfg.enable_trailers:
                if self.trailers_raw is None:
                    self.trailers_raw = []
                self.trailers_raw.append(data[off + fw:off + k])
        if b.done:
            if self.trailers_raw is not None:
                raw = b"".join(self.trailers_raw)
                self.trailers_raw = None
                return self._send_trailers(parse_trailers(raw))
            return self._decode_data(b"", True)
        return 0

    cdef int _decode_data(self, bytes data, bint end_stream) except -1:
        """Request body for the filters that asked for data, then the router."""
        cdef HttpFilter f
        cdef tuple filters
        cdef Py_ssize_t j
        if self.cfg.any_data:
            filters = self.cfg.filters
            for j in range(len(filters)):
                f = filters[j]
                if f.wants_data:
                    f.decode_data(self, data, end_stream)
                    if self.state == DS_CLOSED or (self.resp_started and self.up is None):
                        return 0
                    if self.enc_swap is not None:   # s.replace_data (a decompressor)
                        data = self.enc_swap
                        self.enc_swap = None
        if self.resp_started and self.up is None:
            return 0            # answered locally: the body is dropped
        return self._send_data(data, end_stream)

    cdef int _tunnel_up(self, bytes data) except -1:
        if self.up is not None:
            self.up.write(data)
        else:
            self.up_queue.append(data)
            self.up_queued += PyBytes_GET_SIZE(data)
        return 0

    cdef int _request_complete(self) except -1:
        self.req_done = True
        self.shadows = None         # the mirrors have the whole body
        self.rq_due = 0
        if self.state == DS_BODY:
            self.state = DS_WAIT
        if self.in_request and self.cluster is not None and not self.resp_started:
            self._arm_timer()
        return 0

    cdef int _on_head(self) except -1:
        cdef HcmConfig cfg = self.cfg
        cdef Head h = self.h1
        cdef int fr
        self.in_request = True
        self.t_start = mono()
        self.resp_started = False
        self.resp_chunk_encode = False
        self.held_body = None
        self.held_head = None
        self.req_done = False
        self.close_after = False
        self.upgrade = False
        self.stopped = False
        self.attempts = 0
        self.resp_status = 0
        self.resp_flags = "-"
        self.bytes_rx = 0
        self.bytes_tx = 0
        self.route = None
        self.cluster = None
        self.host = None
        self.retry_body = None
        self.retry_ok = False
        self.retry_bytes = 0
        self.up_queue = []
        self.up_queued = 0
        self.req_trailers = None
        self.trailers_raw = None
        self.request_id = None
        if self.shadows is not None:
            self._drop_shadows()
        self.try_deadline = 0
        self.t_upstream = 0
        self.service_ms = -1
        self.upstream_host = "-"
        self.resp_add_extra = None
        self.filter_state = None
        self.trace = None
        cfg.rq_total.inc()
        cfg.rq_http1_total.inc()
        cfg.rq_active.inc()
        if cfg.request_timeout > 0 or cfg.stream_idle_timeout > 0:
            self.rq_due = self.t_start + cfg.request_timeout if cfg.request_timeout > 0 else 0
            self.idle_due = self.t_start + cfg.stream_idle_timeout \
                if cfg.stream_idle_timeout > 0 else 0
            self._arm_stream_timer()
        fr = h.framing()
        self.body.start(fr, h.content_length)
        self.body.chunks = [] if fr == FR_CHUNKED else None
        self.state = DS_BODY if fr != FR_NONE else DS_WAIT
        self.head_req = h.is_head_method
        self.http_version = 11 if h.minor else 10
        if fr == FR_NONE:
            self.req_done = True
        self.up_end = self.req_done
        if h.conn_close or (h.minor == 0 and not h.conn_keep_alive) or cfg.draining \
                or self.idle_draining:
            self.close_after = True
        elif cfg.overload_no_keepalive and overload_hit(cfg.overload_no_keepalive):
            # overload manager: disable_http_keepalive
            self.close_after = True
            cfg.cx_overload_disable_keepalive.inc()
        if h.method_len == 7 and h.base[0] == 67 and h.base[1] == 79 and h.base[2] == 78:
            self.close_after = True     # CONNECT: the connection is never reused (Envoy)
            return self._on_connect_head()
        if h.minor == 0 and not cfg.accept_http_10:
            self.close_after = True
            cfg.cx_protocol_error.inc()
            return self._local_reply(426, b"Upgrade Required", None, True)
        if h.host_idx < 0 and h.abs_host_len == 0 and h.minor == 1:
            return self._local_reply(400, b"", None, True)
        if h.conn_upgrade and h.upgrade_idx >= 0:
            self.upgrade = True
        h.drop_connection_headers(True, self.upgrade)
        if h.expect_continue and fr != FR_NONE:
            # Envoy answers 100-continue itself and does not forward Expect.
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.resp_pending += self.resp_held     # Envoy flushes its codec's buffer here
            self.resp_held = 0
            cfg.rq_1xx.inc()
        if cfg.overload_reject and overload_hit(cfg.overload_reject):  # stop_accepting_requests
            return self._overloaded()
        self.route = cfg.routes.route(h)
        if cfg.decorate:    # HCM tracing: the route's decorator, local replies included
            decorate(self, h)
        if self.upgrade:
            up = h.value_at(h.upgrade_idx).lower()
            if up not in cfg.upgrades and (self.route is None or up not in self.route.upgrades):
                cfg.rq_ws_on_non_ws_route.inc()
                return self._local_reply(403, b"", None, True)
            cfg.cx_upgrades_total.inc()
            cfg.cx_upgrades_active.inc()
        self.fidx = 0
        return self._decode_continue()

    cdef int _on_connect_head(self) except -1:
        """A CONNECT request: an upgrade of type CONNECT (HCM or route upgrade_configs,
        else 403 as Envoy). On a route with connect_config it is terminated here: the
        router opens a raw TCP connection (tcp_upstream), its 200 starts the tunnel
        (_on_upstream_head); the request has no end until the client half-closes."""
        cdef HcmConfig cfg = self.cfg
        cdef Head h = self.h1
        if h.minor == 0 and not cfg.accept_http_10:
            cfg.cx_protocol_error.inc()
            return self._local_reply(426, b"Upgrade Required", None, True)
        h.drop_connection_headers(True, True)
        if cfg.overload_reject and overload_hit(cfg.overload_reject):
            return self._overloaded()
        self.route = cfg.routes.route(h)
        if b"connect" in cfg.upgrades or \
                (self.route is not None and b"connect" in self.route.upgrades):
            self.upgrade = True     # counted in cx_upgrades_active until the close
            cfg.cx_upgrades_total.inc()
            cfg.cx_upgrades_active.inc()
        elif self.route is not None:
            # Envoy refuses an upgrade its route does not allow; with no route at all the
            # router answers 404
            cfg.rq_ws_on_non_ws_route.inc()
            return self._local_reply(403, b"", None, True)
        if self.route is not None and self.route.connect_term:
            self.connect = True
            self.req_done = False
            self.up_end = False
        self.fidx = 0
        return self._decode_continue()

    cdef int _arm_idle(self) except -1:
        """No request in flight: the connection closes after the HCM idle_timeout."""
        cdef double t = self.cfg.idle_timeout
        if t <= 0:
            return 0
        self.deadline = mono() + t
        if self.timer is not None:
            if self.timer_at <= self.deadline + 0.001:
                return 0
            self.timer.cancel()
        self.timer_at = self.deadline
        self.timer = self.cfg.loop.call_later(t, self._on_timer)
        return 0

    # UpstreamCallbacks ------------------------------------------------------------------
    cdef bint _wants_connection(self):
        return self.state != DS_CLOSED and self.in_request

    cdef int _upstream_read(self) except -1:
        if self.cfg.stream_idle_timeout > 0:
            self.idle_due = mono() + self.cfg.stream_idle_timeout
        return 0

    cdef int _after_upstream_read(self) except -1:
        if self.out_head is not None:
            self._flush_out()
        return 0

    cdef int _tunnel_closed(self) except -1:
        self.close_after = True
        if self.transport is not None:
            self.transport.close()
        return 0

    # response path ----------------------------------------------------------------------
    cdef bint _on_upstream_head(self, PoolConn c, HeaderMap rh, bint end_stream) except -1:
        cdef HcmConfig cfg = self.cfg
        cdef int status = rh.get_status()
        if not self._router_response(c, rh):
            return False        # retried
        if not self.req_done or (self.upgrade and not self.connect):
            # (an upgrade's request has no end on HTTP/1.1 (Envoy): taken, the connection
            # is the tunnel's; refused, the bytes the client may have sent after its head
            # cannot be told from a next request, so it closes)
            if not self.req_done or status != 101:
                self.close_after = True
            cfg.rq_response_before_rq_complete.inc()
        if cfg.draining and not self.close_after:
            self.close_after = True
            cfg.cx_drain_close.inc()
        self._hcm_response(rh, status, end_stream)
        self.resp_started = True
        self.cluster.count_status(status)
        self._encode_headers(rh, end_stream,
                             self.close_after and status != 101 and not self.connect)
        if (status == 101 and self.upgrade) or self.connect:
            self._flush_out()
            self.state = DS_TUNNEL
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            if self.pending is not None:    # the client's bytes sent ahead of the 200
                p = self.pending
                self.pending = None
                self._resume(PAUSE_PIPELINE)
                self._tunnel_up(p)
        return True

    cdef int _on_upstream_data(self, bytes data, bint end_stream) except -1:
        if self.cfg.any_data:
            data = self._encode_filters_data(data, end_stream)
            if data is None:
                return 0
        self.bytes_tx += PyBytes_GET_SIZE(data)
        if self.held_head is not None:
            self.held_body.append(data)
            self.held_size += PyBytes_GET_SIZE(data)
            if self.held_size > HOLD_LIMIT:
                # Envoy's responseDataTooLarge: nothing sent yet, so a 500 instead
                self.held_head = None
                self.held_body = None
                self.resp_started = False
                return self._local_reply(500, b"Internal Server Error", None, False)
            return self._release_held() if end_stream else 0
        return self._encode_data(data, end_stream)

    cdef int _on_upstream_trailers(self, HeaderList trailers) except -1:
        """The upstream response ended with trailers: forwarded with
        http_protocol_options.enable_trailers on a chunked response, else dropped (Envoy)."""
        cdef bytes tail = b""
        if self.trace is not None and self.grpc:
            self._trace_grpc(trailers)
        if self.cfg.any_encode:
            self._encode_trailers(trailers)
            if self.enc_swap is not None:   # a filter's last body bytes (a compressor's end)
                tail = self.enc_swap
                self.enc_swap = None
                self.bytes_tx += PyBytes_GET_SIZE(tail)
        if self.held_head is not None:      # the trailers end it: no chunked framing left
            self.held_body.append(tail)
            return self._release_held()
        if self.cfg.enable_trailers and self.resp_framing == FR_CHUNKED:
            if tail:
                self._encode_data(tail, False)
            encode_last_chunk(self.wb, trailers)
            return self._write(self.wb.take())
        return self._encode_data(tail, True)

    cdef int _on_upstream_complete(self, PoolConn c) except -1:
        self._flush_out()
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
        # Envoy's codec ends a content-length body with an empty flush (see _flood)
        return self._finish(self.resp_framing == FR_LENGTH)

    # HTTP/1 response encoding ------------------------------------------------------------
    cdef int _encode_headers(self, HeaderMap h, bint end_stream, bint announce_close) except -1:
        """Renders the response head; it waits for the first body bytes (out_head)."""
        cdef int status = h.get_status()
        cdef int minor = 1 if (self.h1.minor or status == 426) else 0
        cdef int framing
        if self.held_body is not None:
            if not end_stream and self.held_head is None:
                self.held_head = h          # the head waits for the response's end
                self.held_announce = announce_close
                return 0
            self.held_body = None           # a headers-only response: nothing to hold
        if end_stream and isinstance(h, HeaderList) and status >= 200 and status != 204 \
                and status != 304 and h.find_from("content-length", 14, 0) < 0 \
                and h.find_from("transfer-encoding", 17, 0) < 0:
            # a headers-only answer from an HTTP/2 upstream (a gRPC trailers-only one):
            # Envoy's HTTP/1 codec frames it as it frames a local reply
            if not self.head_req:
                h.add(b"content-length", b"0")
            elif minor:
                h.add(b"transfer-encoding", b"chunked")
        if (status == 101 and self.upgrade) or self.connect:
            framing = FR_NONE
        else:
            framing = response_framing(h, minor, end_stream)
            if framing == FR_EOF:
                self.close_after = True
                announce_close = True
        self.resp_framing = framing
        # this head leaves with Envoy's held marker (_flood)
        self.resp_pending += self.resp_held
        self.resp_held = 0
        encode_response_head(self.wb, h, minor, framing, announce_close)
        # PERF(benchmarks/http1_e2e.py): the head waits for the first body bytes so a small
        # response leaves in one write(2) instead of two.
        self.out_head = self.wb.take()
        if end_stream:
            self._flush_out()
        return 0

    cdef int _encode_data(self, bytes data, bint end_stream) except -1:
        cdef WriteBuf wb
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        if self.head_req:
            n = 0
        if self.resp_framing == FR_CHUNKED:
            wb = self.wb
            if n > 32768:
                wb.add_hex(n)
                wb.add("\r\n", 2)
                self._write(wb.take())
                self._write(data)
                wb.add("\r\n", 2)
            elif n:
                encode_chunk(wb, data)
            if end_stream:
                encode_last_chunk(wb, None)
            if wb.len:
                self._write(wb.take())
        elif n:
            self._write(data)
        if end_stream:
            self._flush_out()
        return 0

    cdef int _write(self, bytes data) except -1:
        cdef bytes h = self.out_head
        if h is not None:
            self.out_head = None
            if PyBytes_GET_SIZE(data) <= 32768:
                data = h + data
            elif self.transport is not None:
                self.t_write(h)
                self.cfg.cx_tx_bytes_total.add(PyBytes_GET_SIZE(h))
        if self.transport is not None:
            self.t_write(data)
            self.cfg.cx_tx_bytes_total.add(PyBytes_GET_SIZE(data))
        return 0

    cdef int _flush_out(self) except -1:
        cdef bytes h = self.out_head
        if h is not None:
            self.out_head = None
            if self.transport is not None:
                self.t_write(h)
                self.cfg.cx_tx_bytes_total.add(PyBytes_GET_SIZE(h))
        return 0

    cdef int _finish(self, bint held) except -1:
        """The response is complete: account, then serve the next pipelined request.
        `held`: Envoy would keep this response's flood-check marker until the next one."""
        cdef bytes p
        if self.state == DS_TUNNEL:
            return 0
        self._end_request_stats(self.resp_status)
        if held:
            self.resp_held += 1
        elif self.dispatching:
            self.resp_pending += 1
        if self.close_after or self.cfg.draining:
            self.state = DS_CLOSED
            self._delayed_close()
            return 0
        if self.state == DS_WAIT:
            self.state = DS_HEAD
        elif self.state == DS_BODY:
            self.state = DS_DRAIN
            self.body.chunks = None
        # The upstream connection that was full is gone (pooled, aborted or failed): its
        # resume_writing would go to another stream, so nothing else clears this pause and
        # the next request on this connection would never be read.
        self._resume(PAUSE_UPSTREAM_FULL)
        if self.cfg.hand_over is not None and self.state == DS_HEAD and not self.dispatching:
            # hot restart: the new process takes it from here (not from inside a read: what
            # follows in that read is this connection's; a later scan hands it over)
            self.cfg.hand_over(self)
        self._arm_idle()
        if self.pending is not None:
            p = self.pending
            self.pending = None
            self._resume(PAUSE_PIPELINE)
            if self.state == DS_HEAD or self.state == DS_DRAIN:
                # Envoy parses what waited in a later run of its loop, after this response
                # is written: only a held marker counts then
                self.resp_pending = 0
                self.dispatching = True
                self._process(p, 0)
                self.dispatching = False
        return 0

    cdef int _release_held(self) except -1:
        """A held response has ended: its head as the encode filters left it, then its
        body, framed by the head (a content-length a filter set, else chunked)."""
        cdef HeaderMap h = self.held_head
        cdef bytes body = b"".join(self.held_body)
        self.held_head = None
        self.held_body = None
        self.resp_status = h.get_status()
        self._encode_headers(h, not body, self.held_announce)
        if body:
            self._encode_data(body, True)
        return 0

    def hold_response(self):
        """From a filter's encode_headers: hold this response (head and body) until it
        ends, so filters can still change its head (set_response_status,
        set_response_header) when they have seen its body and trailers. A local reply, or
        a response that ends with its head, is not held."""
        if self.held_head is None:
            self.held_body = []
            self.held_size = 0

    def set_response_status(self, int code):
        """Changes the status a held response goes out with (from encode_trailers)."""
        cdef HeaderMap h = self.held_head
        if h is None:
            return
        if isinstance(h, HeaderList):
            (<HeaderList>h).status = code
        elif isinstance(h, Head):
            (<Head>h).status = code

    cdef int _local_reply(self, int code, bytes body, tuple extra, bint close) except -1:
        cdef HcmConfig cfg = self.cfg
        cdef HeaderList resp
        if self.resp_started:
            return self._reset()
        if cfg.reply_map is not None:
            code, body = self._map_reply(code, body)
        self._drop_upstream()
        # Envoy does not keep a connection whose request body it did not read. Pipelined
        # requests behind a local reply are served, up to the flood check (_flood).
        cdef bint announce = close or cfg.draining or not self.req_done or self.close_after
        if announce:
            self.close_after = True
        if not self.req_done:       # counted on every answer, local or proxied (Envoy)
            cfg.rq_response_before_rq_complete.inc()
        self.resp_status = code
        self.resp_started = True
        if is_grpc_request(self.h1):
            # a gRPC request (over HTTP/1.1 too) gets Envoy's trailers-only gRPC answer:
            # HTTP 200, the gRPC status the HTTP status maps to, the body as grpc-message
            resp = HeaderList(status=200)
            resp.add(b"content-type", b"application/grpc")
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
        if cfg.via:
            resp.add(b"via", cfg.via)
        if extra is not None:
            resp.add_flat(extra)
        if cfg.any_encode:  # a local reply passes the encode filters too (Envoy)
            body = self._local_encode(resp, code, body)
            self.held_body = None           # whole already: nothing to hold
        if self.resp_add_extra is not None:
            resp.add_flat(tuple(self.resp_add_extra))
        if not body and code >= 200 and code != 204 and code != 304:
            # Envoy's HTTP/1 codec frames a headers-only response: content-length: 0, but
            # to a HEAD request (HTTP/1.1) an informational transfer-encoding: chunked
            if not self.head_req:
                resp.add(b"content-length", b"0")
            elif self.h1.minor:
                resp.add(b"transfer-encoding", b"chunked")
        self._encode_headers(resp, not body, announce)
        if body:
            self._encode_data(body, True)
        self.bytes_tx = PyBytes_GET_SIZE(body)
        if self.state == DS_DRAIN and not self.body.done:
            self._end_request_stats(code)
            return 0
        if self.state == DS_BODY:
            self.state = DS_WAIT
        return self._finish(False)

    def _header_timeout(self):
        """HCM request_headers_timeout: a head still incomplete that long after its first
        byte gets Envoy's 408 "request header timeout" and the connection closes."""
        self.hdr_timer = None
        if self.state != DS_HEAD or self.pending is None or self.transport is None:
            return
        self.cfg.rq_header_timeout.inc()
        self._error_reply(H1_E_TIMEOUT)

    cdef int _error_reply(self, int err) except -1:
        cdef HcmConfig cfg = self.cfg
        # A malformed request still counts as a request, as in Envoy.
        self.in_request = True
        self.http_version = 11 if self.h1.minor else 10
        self.t_start = mono()
        self.route = None
        self.cluster = None
        self.host = None
        self.req_done = True
        self.resp_started = False
        self.service_ms = -1
        self.resp_flags = "DPE"
        cfg.rq_total.inc()
        cfg.rq_http1_total.inc()
        cfg.rq_active.inc()
        # the codec gave up on the request before its end (Envoy counts these answers too)
        cfg.rq_response_before_rq_complete.inc()
        self.state = DS_WAIT
        self.pending = None
        if err == H1_E_BAD_TARGET:
            return self._local_reply(400, b"", None, True)
        if err == H1_E_TIMEOUT:
            self.resp_flags = "DT"
            return self._local_reply(408, b"request header timeout", None, True)
        cfg.cx_protocol_error.inc()
        if err == H1_E_TOO_LARGE or err == H1_E_TOO_MANY:
            cfg.rq_header_overflow.inc()
            return self._local_reply(431, b"Request Header Fields Too Large", None, True)
        if err == H1_E_NOT_IMPL:
            return self._local_reply(501, b"Not Implemented", None, True)
        return self._local_reply(400, b"Bad Request", None, True)

    cdef int _flood(self) except -1:
        """A request begins while two responses count as queued: Envoy's HTTP/1 codec
        refuses it (pipelining flood protection: at most 2 responses not yet written) and
        closes the connection after flushing them. Envoy had begun the stream: it is
        counted and logged as a protocol error without a response (`"- - HTTP/1.1" 0 DPE`).

        Envoy counts a response until the socket write that drains a marker placed after
        it. Responses written while parsing one read (local replies) count until the loop
        runs again; a proxied content-length body ends with an empty flush that leaves its
        marker behind until the next response's head is written, however late. So, with
        bytes of another request behind: two local replies in one read close the
        connection; a local reply after a content-length response (pipelined, or in a later
        read) too; a chunked or body-less response, or a local reply alone, does not.
        Observed with Envoy 1.40 (differential `pipelined-*` cases)."""
        cdef HcmConfig cfg = self.cfg
        self.in_request = True
        self.http_version = 11 if self.h1.minor else 10
        self.t_start = mono()
        self.route = None
        self.cluster = None
        self.host = None
        self.request_id = None
        self.resp_status = 0
        self.resp_flags = "DPE"
        self.service_ms = -1
        self.bytes_rx = 0
        self.bytes_tx = 0
        self.upstream_host = "-"
        cfg.rq_total.inc()
        cfg.rq_http1_total.inc()
        cfg.rq_active.inc()
        self._end_request_stats(0)
        self.close_after = True
        self.state = DS_CLOSED
        self.pending = None
        self._delayed_close()
        return 0

    cdef int _delayed_close(self) except -1:
        """Close after the response, as Envoy's HCM delayed close (delayed_close_timeout,
        1 s): what is queued is written and our side shut, then the client's bytes are read
        and dropped until it closes, or for 1 s. Closing at once with the client's bytes
        unread (a request head still trickling in, a body not read) makes the kernel answer
        with a RST that can overtake the response, and the client loses it. A transport
        with no half-close (TLS) closes at once."""
        t = self.transport
        if t is None:
            return 0
        if not t.can_write_eof():
            t.close()
            return 0
        if self.hdr_timer is not None:
            self.hdr_timer.cancel()
        if self.pause_mask:
            self.pause_mask = 0
            t.resume_reading()
        t.write_eof()
        self.hdr_timer = self.cfg.loop.call_later(DELAYED_CLOSE_S, self._delayed_close_done)
        return 0

    def _delayed_close_done(self):
        self.hdr_timer = None
        if self.transport is not None:
            self.transport.close()

    cdef int _reset(self) except -1:
        """Abort the downstream connection mid-response (Envoy resets the stream)."""
        self.out_head = None
        self.cfg.rq_tx_reset.inc()
        if self.in_request:
            self._end_request_stats(self.resp_status)
        self.close_after = True
        self.state = DS_CLOSED
        if self.up is not None:
            u = self.up
            self.up = None
            (<PoolConn>u).ds = None
            (<PoolConn>u).abort()
        if self.transport is not None:
            self.transport.abort()
        return 0

    def _internal_error(self, exc):
        import logging
        logging.getLogger("sofamesh.proxy").exception("internal error on a downstream "
                                                      "connection: %r", exc)
        self.cfg.cx_protocol_error.inc()
        if self.transport is not None:
            self.close_after = True
            self.state = DS_CLOSED
            self.transport.abort()

    cdef int _pause(self, int reason) except -1:
        if self.pause_mask == 0 and self.transport is not None:
            self.transport.pause_reading()
        self.pause_mask |= reason
        return 0

    cdef int _resume(self, int reason) except -1:
        if self.pause_mask & reason:
            self.pause_mask &= ~reason
            if self.pause_mask == 0 and self.transport is not None and \
                    self.state != DS_CLOSED:
                self.transport.resume_reading()
        return 0


_hcm_config.register_codec("http1", DownstreamConn)
from sofamesh._core import http2_server  # noqa: F401 (registers codec "http2")  # no-cython-lint

FILTER_CONTINUE_ = FILTER_CONTINUE
FILTER_STOP_ = FILTER_STOP

# Python API: the names the Server, the xDS layer and Python filters import from here.
globals().update(HcmConfig=_hcm_config.HcmConfig, HttpFilter=_http_stream.HttpFilter,
                 HttpStream=_http_stream.HttpStream)
