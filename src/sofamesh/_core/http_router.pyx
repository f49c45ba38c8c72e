# The router filter, always last in the chain: route -> cluster -> host -> a stream from the
# cluster's connection pool; retries (with Envoy's backoff), per-try and route timeouts,
# request mirrors, and the upstream request head. See http_router.pxd.

from cpython.bytes cimport PyBytes_GET_SIZE

from sofamesh._core.conn_pool cimport Mirror, PoolConn, POOL_OVERFLOW
from sofamesh._core.hcm_config cimport HcmConfig, mutate_xfcc, replaces_request_id
from sofamesh._core.http_grpc cimport (grpc_outcome, grpc_retry_bit, grpc_timeout,
                                       grpc_route_timeout, set_grpc_timeout_headers)
from sofamesh._core.http_tracing cimport (inject_trace, start_trace, trace_retry,
                                          TRACE_B3, TRACE_SW8)
from sofamesh._core.headers cimport HeaderMap, HeaderList
from sofamesh._core.http1_upstream cimport ShadowConn, mirror_headers
from sofamesh._core.http2_upstream cimport H2Shadow
from sofamesh._core.tcp_upstream cimport TcpUpstreamConn
from sofamesh._core.http_common cimport (
    mono, uuid4, strip_port, date_value, int_bytes, DS_CLOSED, DS_TUNNEL,
    SERVER_OVERWRITE, SERVER_APPEND_IF_ABSENT,
    FAIL_NO_HEALTHY, FAIL_OVERFLOW, FAIL_CONNECT, FAIL_CONNECT_TIMEOUT, FAIL_RESET,
    FAIL_PROTOCOL, FAIL_TIMEOUT, FAIL_REMOTE_RESET, FAIL_REFUSED, PAUSE_QUEUE,
    PAUSE_UPSTREAM_FULL,
)
from sofamesh._core.http_stream cimport HttpFilter, HttpStream, add_formatted, FILTER_STOP
from sofamesh._core.router cimport (
    Route, rng_next, RA_DIRECT, RA_REDIRECT, RA_PLUGIN,
    RETRY_5XX, RETRY_GATEWAY, RETRY_CONNECT_FAILURE, RETRY_RESET, RETRY_RETRIABLE_4XX,
    RETRY_STATUS_CODES, RETRY_REFUSED_STREAM, RETRY_GRPC,
)
from sofamesh._core.upstream cimport (Cluster, Host, LB_RING_HASH, OUTCOME_CONNECT_FAILED,
                                      OUTCOME_CONNECT_SUCCESS, OUTCOME_TIMEOUT)
from sofamesh._core.upstream import hash64
from sofamesh.proxy.internal_listener import upstream_host as _upstream_host

# a failed attempt's error.reason on its upstream span (Envoy's reset reasons)
cdef dict RESET_REASON = {
    FAIL_CONNECT: "remote connection failure", FAIL_CONNECT_TIMEOUT: "connection timeout",
    FAIL_RESET: "remote reset", FAIL_REMOTE_RESET: "remote reset",
    FAIL_PROTOCOL: "protocol error", FAIL_REFUSED: "remote refused stream reset",
}
cdef bytes RESET_BEFORE = b"upstream connect error or disconnect/reset before headers. "
cdef tuple OVERLOADED = (b"x-envoy-overloaded", b"true")
cdef double DELAYED_CLOSE_S = 1.0  # Envoy's HCM delayed_close_timeout default


cdef int retry_failed(RouterStream s, int kind) except -1:
    """A failed attempt retried; a traced one with spawn_upstream_span ends its upstream
    span with Envoy's reset reason first."""
    if s.trace is not None:
        s.request_id = trace_retry(s.trace, s.head, s.cfg, s, 0, RESET_REASON.get(kind),
                                   s.request_id)
    return s._schedule_retry()


cdef class RouterStream(HttpStream):
    cdef int _router(self) except -1:
        cdef HcmConfig cfg = self.cfg
        cdef Route route = self.route
        cdef Cluster cl
        cdef double t
        cfg.router_rq_total.inc()   # every request the router decodes, routed or not (Envoy)
        if route is None:
            cfg.no_route.inc()
            self.resp_flags = "NR"
            return self._local_reply(404, b"", None, False)
        if route.action == RA_DIRECT:
            cfg.rq_direct_response.inc()
            # a 3xx direct response names the request's own URL as its location (Envoy)
            return self._local_reply(route.status, route.body,
                                     (b"location", self._location())
                                     if 300 <= route.status < 400 else None, False)
        if route.action == RA_REDIRECT:
            cfg.rq_direct_response.inc()    # Envoy counts redirects here too
            return self._local_reply(route.status, b"", (b"location", self._location()),
                                     False)
        if route.action == RA_PLUGIN:     # Lua (proxy/lua_cluster.py): never raises
            name = route.plugin.cluster(self.head, cfg.clusters)
        else:
            name = route.pick_cluster()
        cl = cfg.clusters.get(name)
        if cl is None:
            cfg.no_cluster.inc()
            self.resp_flags = "NC"
            return self._local_reply(route.cluster_not_found, b"", None, False)
        self.cluster = cl
        cl.upstream_rq_total.inc()
        if cl.rq_active >= cl.max_requests:
            cl.upstream_rq_pending_overflow.inc()
            self.resp_flags = "UO"
            return self._local_reply(503, RESET_BEFORE + b"reset reason: overflow",
                                     OVERLOADED, False)
        cl.rq_active += 1
        cl.upstream_rq_active.inc()
        self.host = None
        self.rq_timeout = route.timeout
        if route.max_grpc_timeout >= 0 and self.grpc:   # RouteAction.max_grpc_timeout
            self.rq_timeout = grpc_route_timeout(self.head, route)
        if route.grpc_timeout_max >= 0 and self.grpc:
            # max_stream_duration.grpc_timeout_header_max: the stream's own deadline
            t = grpc_timeout(self.head, route)
            if t > 0:
                self.dur_due = self.t_start + t
                self._arm_stream_timer()
        if route.hash_headers and cl.lb_policy == LB_RING_HASH:
            self.host = self._hash_pick(cl, route)
        if route.auto_host and self.host is None:
            # the Host header names the chosen endpoint, so pick it before the rewrite
            self.host = cl.choose()
        self._mutate_request(self.head)
        if route.mirrors and not self.upgrade:
            self._start_shadows(route)
        if route.retry_on and route.num_retries > 0 and not self.upgrade:
            self.retry_body = list(self.up_queue)
            self.retry_bytes = self.up_queued
            self.retry_ok = self.retry_bytes <= cfg.buffer_limit
            if not self.retry_ok:
                self.retry_body = None
        self.attempts = 1
        self.tried_hosts = [] if route.prev_hosts >= 0 else None
        if self.req_done:
            self._arm_timer()
        return self._assign(self.host)

    cdef int _decode_continue(self) except -1:
        cdef HcmConfig cfg = self.cfg
        cdef HttpFilter f
        cdef tuple filters = cfg.filters
        cdef int r
        if self.fidx == 0:
            mutate_xfcc(cfg, self.head, self.transport)  # forward_client_cert_details
            if cfg.trace_ppm >= 0 and self.trace is None:
                self.trace = start_trace(self.head, cfg, self.trace_spare)
                if cfg.trace_kind == TRACE_B3:
                    self.trace_spare = self.trace
        while self.fidx < len(filters):
            f = filters[self.fidx]
            self.fidx += 1
            r = f.decode_headers(self, self.req_done)
            if not self.in_request or self.resp_started or self.state == DS_CLOSED:
                return 0            # the filter replied locally
            if r == FILTER_STOP:
                self.stopped = True
                return 0
        self.stopped = False
        return self._router()

    cdef tuple _map_reply(self, int code, bytes body):
        """local_reply_config: the first mapper matching the status rewrites the reply."""
        cdef int op, value, new_status
        for op, value, new_status, new_body in self.cfg.reply_map:
            if op < 0 or (op == 0 and code == value) or (op == 1 and code >= value) or \
                    (op == 2 and code <= value) or (op == 3 and code != value):
                if new_status:
                    code = new_status
                if new_body is not None:
                    body = new_body
                break
        return code, body

    cdef int _drop_upstream(self) except -1:
        """A local reply: the upstream stream serving the request, if any, is aborted."""
        cdef PoolConn u = self.up
        if u is not None:
            self.up = None
            u.ds = None
            u.abort()
            if self.host is not None:
                self.host.rq_active -= 1
        return 0

    cdef bytes _encode_filters_data(self, bytes data, bint end_stream):
        """Response body through the encode filters (last to first): the bytes to send on
        (a filter may replace them: s.replace_data), or None if a filter ended the stream."""
        cdef tuple filters = self.cfg.filters
        cdef HttpFilter f
        cdef Py_ssize_t j
        for j in range(len(filters) - 1, -1, -1):
            f = filters[j]
            if f.wants_data:
                f.encode_data(self, data, end_stream)
                if self.state == DS_CLOSED:
                    return None
                if self.enc_swap is not None:   # s.replace_data (a compressor)
                    data = self.enc_swap
                    self.enc_swap = None
        return data

    cdef int _encode_trailers(self, HeaderList trailers) except -1:
        """The response's trailers to the encode filters (last to first)."""
        cdef HcmConfig cfg = self.cfg
        cdef HttpFilter f
        cdef Py_ssize_t j
        for j in range(len(cfg.filters) - 1, -1, -1):
            f = cfg.filters[j]
            if f.wants_encode:
                f.encode_trailers(self, trailers)
        return 0

    cdef int _inject_trace(self, HeaderMap h) except -1:
        """The span's context replaces the caller's on the upstream request (B3 or W3C);
        the request id is marked when the connection manager traced the request."""
        self.request_id = inject_trace(self.trace, h, self.cfg, self.request_id)
        return 0

    cdef int _trace_grpc(self, HeaderMap m) except -1:
        """A traced gRPC call's status and message (response headers or trailers)."""
        cdef bytes st = m.get_all(b"grpc-status")
        if st is not None:
            self.trace.grpc_status = st
            self.trace.grpc_message = m.get_all(b"grpc-message")
        return 0

    cdef int _hcm_response(self, HeaderMap rh, int status, bint end_stream) except -1:
        """A proxied response's head: the encode filters (last to first), then the
        connection manager's response mutations (Envoy's order of additions)."""
        cdef HcmConfig cfg = self.cfg
        cdef HttpFilter f
        cdef Py_ssize_t j
        if self.trace is not None and self.grpc:
            self._trace_grpc(rh)
        if cfg.any_encode:
            self.resp_head = rh
            for j in range(len(cfg.filters) - 1, -1, -1):
                f = cfg.filters[j]
                if f.wants_encode:
                    f.encode_headers(self, status, end_stream)
        rh.remove(b"date")
        rh.add(b"date", date_value())
        if cfg.server_mode == SERVER_OVERWRITE:
            rh.remove(b"server")
            rh.add(b"server", cfg.server_name)
        elif cfg.server_mode == SERVER_APPEND_IF_ABSENT and \
                rh.find_from("server", 6, 0) < 0:
            rh.add(b"server", cfg.server_name)
        if cfg.via:
            rh.add(b"via", cfg.via)
        if cfg.rid_in_response and self.request_id is not None:
            rh.add(b"x-request-id", self.request_id)
        if self.resp_add_extra is not None:
            rh.add_flat(tuple(self.resp_add_extra))
        return 0

    cdef int _arm_stream_timer(self) except -1:
        cdef double due = self.rq_due
        if self.idle_due > 0 and (due == 0 or self.idle_due < due):
            due = self.idle_due
        if self.dur_due > 0 and (due == 0 or self.dur_due < due):
            due = self.dur_due
        if self.stream_timer is not None:
            self.stream_timer.cancel()
            self.stream_timer = None
        if due > 0:
            self.stream_timer = self.cfg.loop.call_later(max(due - mono(), 0.0),
                                                         self._on_stream_timer)
        return 0

    def _on_stream_timer(self):
        """HCM request_timeout (408 `request timeout`) and stream_idle_timeout (`stream
        timeout`: 504 once the request is complete, 408 before; a reset once the response
        has started), as Envoy."""
        cdef HcmConfig cfg = self.cfg
        cdef double now = mono()
        self.stream_timer = None
        if self.state == DS_CLOSED or not self.in_request or self.state == DS_TUNNEL:
            return
        try:
            if self.rq_due > 0 and not self.req_done and now + 0.0005 >= self.rq_due:
                cfg.rq_timeout.inc()
                self._abandon_upstream()
                self._local_reply(408, b"request timeout", None, True)
            elif self.idle_due > 0 and now + 0.0005 >= self.idle_due:
                cfg.rq_idle_timeout.inc()
                self.resp_flags = "SI"
                if self.resp_started:
                    self._reset()
                else:
                    self._abandon_upstream()
                    if self.req_done:
                        self._local_reply(504, b"stream timeout", None, False)
                    else:
                        self._local_reply(408, b"stream timeout", None, True)
            elif self.dur_due > 0 and now + 0.0005 >= self.dur_due:
                # the stream's max duration (a gRPC request's grpc-timeout): Envoy's
                # connection manager answers DEADLINE_EXCEEDED, or resets a started response
                cfg.rq_max_duration_reached.inc()
                self.resp_flags = "DT"
                if self.resp_started:
                    self._reset()
                else:
                    self._abandon_upstream()
                    self._local_reply(504 if self.req_done else 408,
                                      b"downstream duration timeout", None, not self.req_done)
            else:
                self._arm_stream_timer()
        except Exception as exc:
            self._internal_error(exc)

    cdef bytes _location(self):
        cdef Route r = self.route
        cdef HeaderMap h = self.head
        cdef bytes path = h.path()
        cdef bytes host = h.authority()
        cdef bytes scheme = r.location_scheme or b"http"
        if r.location_host is not None:
            if b":" in host and not host.endswith(b"]"):
                host = r.location_host + host[host.rfind(b":"):]
            else:
                host = r.location_host
        if r.location_port is not None:
            if b":" in host and not host.endswith(b"]"):
                host = host[:host.rfind(b":")]
            if not ((scheme == b"http" and r.location_port == b"80") or
                    (scheme == b"https" and r.location_port == b"443")):
                host = host + b":" + r.location_port
        elif r.location_scheme is not None and b":" in host and not host.endswith(b"]"):
            host = host[:host.rfind(b":")]      # scheme change drops the port (Envoy)
        q = path.find(b"?")
        query = path[q:] if q >= 0 else b""
        if r.location_path is not None:
            if b"?" in r.location_path:
                path, query = r.location_path, b""
            else:
                path = r.location_path + query
        elif r.location_prefix is not None:
            rest = path[len(r.pvalue):] if r.pm == 0 else path
            path = r.location_prefix + rest
        if r.strip_query:
            q = path.find(b"?")
            if q >= 0:
                path = path[:q]
        return scheme + b"://" + host + path

    cdef int _mutate_request(self, HeaderMap h) except -1:
        """The request as the upstream gets it (Envoy's router and connection manager
        header mutations), applied to the stream's request headers; every try and every
        mirror encodes the result in its own codec."""
        cdef HcmConfig cfg = self.cfg
        cdef Route route = self.route
        cdef bytes rid, path, v, host
        cdef int hrh = -1
        cdef int xrid = h.find_from("x-request-id", 12, 0)
        if self.trace is not None:
            self.trace.hend = h.count() + 1     # (http_tracing: where the router's own start)
        # an edge proxy replaces a client's x-request-id (Envoy's preserve_external_request_id)
        cdef bint regen = xrid < 0 or replaces_request_id(cfg)
        cdef bint rewrite = (route.prefix_rewrite is not None and route.pm == 0) or \
            route.rx_rewrite is not None
        h.remove_router_controls()
        if route.req_remove:
            for name in route.req_remove:
                h.remove(<bytes>name)
        if rewrite:
            path = h.path()
            if route.rx_rewrite is None:
                h.set_path(route.prefix_rewrite + path[PyBytes_GET_SIZE(route.pvalue):])
            else:
                q = path.find(b"?")
                if q < 0:
                    h.set_path(route.rx_rewrite.sub(route.rx_subst, path))
                else:
                    h.set_path(route.rx_rewrite.sub(route.rx_subst, path[:q]) + path[q:])
            h.add(b"x-envoy-original-path", path)
        if route.host_rewrite_hdr is not None:
            # host_rewrite_header: the named request header's (non-empty) value
            hrh = h.find_from(<bytes>route.host_rewrite_hdr, <int>len(route.host_rewrite_hdr), 0)
            if hrh >= 0 and not h.value_at(hrh):
                hrh = -1
        if hrh >= 0 or route.host_rewrite is not None or route.auto_host:
            host = h.authority()
            if hrh >= 0:
                h.set_authority(h.value_at(hrh))
            elif route.host_rewrite is not None:
                h.set_authority(route.host_rewrite)
            elif self.host is not None and self.host.hostname:
                h.set_authority(self.host.hostname.encode())
            h.add(b"x-envoy-original-host", host)
        elif cfg.strip_any_host_port:
            h.set_authority(strip_port(h.authority()))
        if cfg.use_remote_address:
            # a peer that is no IP (an internal listener's, a pipe's: xff_ip None) is neither
            # appended nor named, as Envoy's appendXff and isInternalAddress do
            if not cfg.skip_xff_append and self.xff_ip is not None:
                v = h.get_all(b"x-forwarded-for")
                h.remove(b"x-forwarded-for")
                h.add(b"x-forwarded-for", v + b"," + self.xff_ip if v else self.xff_ip)
            h.remove(b"x-forwarded-proto")
            h.add(b"x-forwarded-proto", cfg.scheme if cfg.scheme is not None else b"http")
            # an edge request (no internal_address_config): Envoy names the peer
            if self.xff_ip is not None:
                h.add(b"x-envoy-external-address", self.remote_ip)
        elif h.find_from("x-forwarded-proto", 17, 0) < 0:
            h.add(b"x-forwarded-proto", cfg.scheme if cfg.scheme is not None else b"http")
        if regen:
            if xrid >= 0:
                h.remove(b"x-request-id")
            if cfg.generate_request_id:
                rid = uuid4()
                h.add(b"x-request-id", rid)
                self.request_id = rid
        elif cfg.rid_in_response or self.trace is not None:
            # (a traced request's id gets the trace mark: inject_trace)
            self.request_id = h.value_at(xrid)
        if cfg.via:
            h.add(b"via", cfg.via)
        if self.trace is not None:
            self._inject_trace(h)
        if route.max_grpc_timeout >= 0 and self.grpc:
            set_grpc_timeout_headers(h, self.rq_timeout, route.per_try_timeout)
        elif route.timeout_hdr:
            h.add_flat(route.timeout_hdr)
        if route.attempt_count:     # include_request_attempt_count: this is try 1
            h.remove(b"x-envoy-attempt-count")
            h.add(b"x-envoy-attempt-count", b"1")
        if route.req_add:
            h.add_flat(route.req_add)
        if route.req_dyn:
            add_formatted(self, route.req_dyn, h)
        if route.req_add_if_absent:
            for name, value in route.req_add_if_absent:
                if h.find_from(<bytes>name, <int>len(name), 0) < 0:
                    h.add(<bytes>name, <bytes>value)
        return 0

    cdef bint _router_response(self, PoolConn c, HeaderMap rh) except -1:
        """The response head from the upstream: retry it (False) or take it, with the
        router's response mutations (service time, the route's header adds/removes)."""
        cdef Route route = self.route
        cdef int status = rh.get_status(), rbit = 0
        # outlier detection: every response head, retried or not
        self.host.outcome(grpc_outcome(rh, status) if self.grpc else status)
        if status >= 500:
            rbit = RETRY_5XX
            if status == 502 or status == 503 or status == 504:
                rbit |= RETRY_GATEWAY
        elif status == 409:
            rbit = RETRY_RETRIABLE_4XX
        if route.retry_statuses and status in route.retry_statuses:
            rbit |= RETRY_STATUS_CODES
        if route.retry_on & RETRY_GRPC:
            rbit |= grpc_retry_bit(rh)
        if rbit and self._can_retry(rbit):
            self.host.rq_active -= 1
            self.up = None
            c.ds = None
            c.abort()
            if self.trace is not None:
                self.request_id = trace_retry(self.trace, self.head, self.cfg, self, status,
                                              None, self.request_id)
            self._schedule_retry()
            return False
        if self.attempts > 1 and not rbit:
            self.cluster.upstream_rq_retry_success.inc()
        self.try_deadline = 0
        self.resp_status = status
        # Envoy's upstream service time runs from the request's last byte sent upstream
        self.service_ms = <int>((mono() - (self.t_sent if self.t_sent > self.t_upstream
                                           else self.t_upstream)) * 1000)
        if (status != 101 or not self.upgrade) and not self.connect:
            rh.add(b"x-envoy-upstream-service-time", int_bytes(self.service_ms))
        if route.attempt_count_resp:
            rh.remove(b"x-envoy-attempt-count")
            rh.add(b"x-envoy-attempt-count", int_bytes(self.attempts))
        if route.resp_remove:
            for name in route.resp_remove:
                rh.remove(<bytes>name)
        if route.resp_add:
            rh.add_flat(route.resp_add)
        if route.resp_dyn:
            add_formatted(self, route.resp_dyn, rh)
        return True

    cdef int _start_shadows(self, Route route) except -1:
        """request_mirror_policies: a copy of the upstream request (host suffixed
        `-shadow`) to each mirror cluster, fire and forget."""
        cdef HcmConfig cfg = self.cfg
        cdef Cluster cl
        cdef Mirror sh
        cdef Py_ssize_t limit
        cdef bint end = self.up_end and self.req_trailers is None and not self.up_queue
        cdef int i
        for name, share, no_suffix, hdr in route.mirrors:
            if share < 1000000 and <long long>(rng_next() % 1000000) >= share:
                continue
            if hdr is not None:     # cluster_header: the request names the mirror cluster
                i = self.head.find_from(hdr, len(<bytes>hdr), 0)
                if i < 0:
                    continue
                name = self.head.value_at(i).decode("latin-1")
            cl = cfg.clusters.get(name)
            if cl is None:
                continue
            hm = mirror_headers(self.head, cfg.local_ip, not no_suffix)
            limit = min(cfg.buffer_limit, cl.per_connection_buffer_limit)
            if self._h2(cl):    # a stream of the mirror cluster's own HTTP/2 pool
                sh = H2Shadow(cl, cfg.pool2, cfg.loop, hm, end, self.head_req, route.timeout,
                              limit)
            else:
                sh = ShadowConn(cl, cfg.loop, hm, end, self.head_req, route.timeout, limit)
            for data in self.up_queue:
                sh.send_data(data, False)
            if not self.req_done and not sh.closed:
                if self.shadows is None:
                    self.shadows = []
                self.shadows.append(sh)
            elif not end:
                if self.req_trailers is not None:
                    sh.send_trailers(self.req_trailers)
                else:
                    sh.send_data(b"", True)
        return 0

    cdef Host _hash_pick(self, Cluster cl, Route route):
        """hash_policy headers -> one key (Envoy combines several by rotate-xor) -> the
        ring's host; no header present: None (the cluster's random pick)."""
        cdef HeaderMap h = self.head
        cdef int i
        cdef bint have = False
        cdef unsigned long long hv = 0, one
        for name, terminal in route.hash_headers:
            i = h.find_from(<bytes>name, <int>len(name), 0)
            if i < 0:
                continue
            one = hash64(h.value_at(i))
            hv = ((hv << 1) | (hv >> 63)) ^ one if have else one
            have = True
            if terminal:
                break
        if not have:
            return None
        return cl.choose_hash(hv)

    cdef int _drop_shadows(self) except -1:
        cdef Mirror sh
        cdef list shadows = self.shadows
        self.shadows = None
        for sh in shadows:
            sh.reset()
        return 0

    cdef int _send_data(self, bytes data, bint end_stream) except -1:
        """Decoded request body for the upstream (and mirrors, and the retry buffer)."""
        cdef PoolConn u = self.up
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef Mirror sh
        if end_stream:
            self.up_end = True
        if self.shadows is not None:
            for sh in self.shadows:
                sh.send_data(data, end_stream)
        if self.retry_body is not None:
            if self.retry_bytes + n <= self.cfg.buffer_limit:
                self.retry_body.append(data)
                self.retry_bytes += n
            else:
                self.retry_body = None      # too big to replay: no retries for this one
                self.retry_ok = False
        if u is not None:
            u.encode_data(data, end_stream)
            if end_stream:
                self.t_sent = mono()
        else:
            self.up_queue.append(data)
            self.up_queued += n
            if self.up_queued > self.cfg.buffer_limit:
                self._pause(PAUSE_QUEUE)
        return 0

    cdef int _send_trailers(self, HeaderList trailers) except -1:
        cdef Mirror sh
        self.up_end = True
        self.req_trailers = trailers
        if self.shadows is not None:
            for sh in self.shadows:
                sh.send_trailers(trailers)
        if self.up is not None:
            self.up.encode_trailers(trailers)
            self.t_sent = mono()
        return 0

    cdef int _replay(self, PoolConn c) except -1:
        """A new upstream stream gets the request so far: headers, then the queued body."""
        cdef list q = self.up_queue
        cdef Py_ssize_t i, last = len(q) - 1
        cdef bint fin = self.up_end and self.req_trailers is None
        self.up_queue = []
        self.up_queued = 0
        c.encode_headers(self.head, fin and last < 0)
        for i in range(last + 1):
            c.encode_data(<bytes>q[i], fin and i == last)
        if self.up_end and self.req_trailers is not None:
            c.encode_trailers(self.req_trailers)
        if self.up_end:
            self.t_sent = self.t_upstream
        self._resume(PAUSE_QUEUE)
        return 0

    cdef int _assign(self, Host host) except -1:
        cdef Cluster cl = self.cluster
        cdef int _k
        if host is None and cl.original_dst is not None:
            # ORIGINAL_DST (CLUSTER_PROVIDED): the downstream's original destination, or the
            # x-envoy-original-dst-host header with use_http_header (proxy/original_dst.py)
            od = cl.original_dst
            host = od.pick(self.transport, self.head.get_all(od.header) if od.use_header
                           else None)
        elif host is None:
            host = cl.choose()
            if self.tried_hosts:
                # retry_host_predicate previous_hosts: choose again, up to
                # host_selection_retry_max_attempts times, while the host was tried; the
                # last choice stands (Envoy)
                for _k in range(self.route.prev_hosts):
                    if host is None or host not in self.tried_hosts:
                        break
                    host = cl.choose()
        if host is None:
            cl.upstream_cx_none_healthy.inc()
            return self._fail(FAIL_NO_HEALTHY, None)
        self.host = host
        if self.tried_hosts is not None:
            self.tried_hosts.append(host)
        if cl.tls is not None and self.cfg.conn_state is not None:
            # the connection's shared filter state to an internal listener: a host (pool)
            # of its own per state (proxy/internal_listener.py)
            host = self.host = _upstream_host(cl, host, self.transport, self.cfg.conn_state)
        if self.connect:
            # a terminated CONNECT: its own raw TCP connection, never pooled (Envoy's
            # TcpUpstream)
            return self._attach(TcpUpstreamConn(cl, host, self.cfg.loop))
        # both pools queue on Host.waiting, so either one's cancel() takes a waiter back
        if (self.cfg.pool2 if self._h2(cl) else self.cfg.pool).new_stream(cl, host, self) \
                == POOL_OVERFLOW:
            return self._fail(FAIL_OVERFLOW, None)
        return 0

    cdef inline bint _h2(self, Cluster cl):
        """This request goes to `cl` over HTTP/2: the cluster speaks it (h2[3]:
        use_downstream_protocol_config, only for HTTP/2 requests)."""
        return cl.h2 is not None and (not cl.h2[3] or self.http_version == 20)

    cdef int _attach(self, PoolConn c) except -1:
        cdef Host host = c.host
        self.up = c
        self._resume(PAUSE_UPSTREAM_FULL)     # a retry: the previous connection's pause is moot
        host.rq_active += 1
        host.rq_total += 1
        if c.connected:  # outlier detection (Envoy's onPoolReady); else http1_upstream's
            host.outcome(OUTCOME_CONNECT_SUCCESS)
        self.upstream_host = host.host_port
        if self.trace is not None:
            self.trace.up_host = host
            if self.cfg.trace_kind == TRACE_SW8 and self.trace.trace_id is not None:
                self.cfg.tracer.inject(self, self.trace, host)     # SkyWalking's sw8
        c.start(self, self.head_req, self.upgrade)
        self.t_upstream = mono()
        if self.route.per_try_timeout > 0:
            self.try_deadline = self.t_upstream + self.route.per_try_timeout
            self._arm_at(self.try_deadline)
        return self._replay(c)

    cdef bint _can_retry(self, int bit):
        cdef Route r = self.route
        if r is None or not (r.retry_on & bit) or not self.retry_ok or not self.req_done:
            return False
        if self.attempts > r.num_retries or self.resp_started or self.state == DS_CLOSED:
            return False
        if self.cluster.retries_active >= self.cluster.max_retries:
            self.cluster.upstream_rq_retry_overflow.inc()
            return False
        return True

    cdef int _schedule_retry(self) except -1:
        cdef Cluster cl = self.cluster
        # Envoy's backoff: full jitter over base * 2^(attempt-1), capped at max_interval
        cdef double base = self.route.retry_base
        cdef int _i
        for _i in range(self.attempts - 1):
            if base < self.route.retry_max:
                base *= 2
        if base > self.route.retry_max:
            base = self.route.retry_max
        cl.upstream_rq_retry.inc()
        cl.retries_active += 1
        self.attempts += 1
        self.up = None
        self.retry_timer = self.cfg.loop.call_later(
            (rng_next() % 1000000) / 1000000.0 * base, self._do_retry)
        return 0

    def _do_retry(self):
        self.retry_timer = None
        self.cluster.retries_active -= 1
        if self.state == DS_CLOSED or not self.in_request:
            return
        self.up_queue = list(self.retry_body or ())
        self.up_queued = 0
        self.cluster.upstream_rq_total.inc()
        cdef Route r = self.route
        cdef double left, t
        cdef int ms
        if r.attempt_count:
            self.head.remove(b"x-envoy-attempt-count")
            self.head.add(b"x-envoy-attempt-count", int_bytes(self.attempts))
        if r.max_grpc_timeout >= 0 and self.grpc and self.rq_timeout > 0 and self.deadline > 0:
            # what is left of the gRPC request's timeout, in both headers
            set_grpc_timeout_headers(self.head, max(self.deadline - mono(), 0.001),
                                     r.per_try_timeout)
        elif r.timeout_hdr and r.timeout > 0 and self.deadline > 0:
            # Envoy announces what is left of the route timeout to a retry (or the per-try
            # timeout, when shorter)
            left = self.deadline - mono()
            t = r.per_try_timeout if 0 < r.per_try_timeout < left else left
            ms = <int>(t * 1000) if t > 0 else 0
            self.head.remove(b"x-envoy-expected-rq-timeout-ms")
            self.head.add(b"x-envoy-expected-rq-timeout-ms", int_bytes(ms))
        self._assign(None)

    cdef int _fail(self, int kind, PoolConn c) except -1:
        cdef Cluster cl = self.cluster
        cdef bytes body, reason
        cdef tuple extra = None
        cdef tuple tries = None     # include_attempt_count_in_response: local replies too
        cdef int code = 503
        if self.host is not None and c is not None:
            self.host.rq_active -= 1
        if c is not None:
            self.up = None
        if self.trace is not None:
            self.trace.up_reason = RESET_REASON.get(kind)
        if self.host is not None and kind > FAIL_OVERFLOW and kind != FAIL_TIMEOUT:
            self.host.outcome(OUTCOME_CONNECT_FAILED)  # outlier detection (Envoy: any reset)
        if kind == FAIL_CONNECT or kind == FAIL_CONNECT_TIMEOUT:
            if self._can_retry(RETRY_CONNECT_FAILURE | RETRY_RESET | RETRY_5XX |
                               RETRY_GATEWAY):
                return retry_failed(self, kind)
        elif kind == FAIL_RESET or kind == FAIL_PROTOCOL or kind == FAIL_REMOTE_RESET:
            if self._can_retry(RETRY_RESET | RETRY_5XX | RETRY_GATEWAY):
                return retry_failed(self, kind)
        elif kind == FAIL_REFUSED:
            if self._can_retry(RETRY_REFUSED_STREAM | RETRY_RESET | RETRY_5XX | RETRY_GATEWAY):
                return retry_failed(self, kind)
        if self.resp_started:
            return self._reset()
        if self.host is not None:
            self.host.rq_error += 1
        if cl is not None and kind != FAIL_NO_HEALTHY:
            cl.count_status(504 if kind == FAIL_TIMEOUT else 502 if kind == FAIL_PROTOCOL else 503)
        if self.route is not None and self.route.attempt_count_resp:
            tries = (b"x-envoy-attempt-count", int_bytes(self.attempts))
        if kind == FAIL_NO_HEALTHY:
            self.resp_flags = "UH"
            return self._local_reply(503, b"no healthy upstream", tries, not self.req_done)
        if kind == FAIL_TIMEOUT:
            self.resp_flags = "UT"
            return self._local_reply(504, b"upstream request timeout", tries, not self.req_done)
        if kind == FAIL_OVERFLOW:
            self.resp_flags = "UO"
            reason = b"overflow"
            extra = OVERLOADED
        elif kind == FAIL_CONNECT:
            self.resp_flags = "UF"
            reason = b"remote connection failure"
        elif kind == FAIL_CONNECT_TIMEOUT:
            self.resp_flags = "UF"
            reason = b"connection timeout"
        elif kind == FAIL_PROTOCOL:
            self.resp_flags = "UPE"
            reason = b"protocol error"
            code = 502         # Envoy: a reply it cannot parse is a bad gateway
        elif kind == FAIL_REMOTE_RESET:
            self.resp_flags = "UR"
            reason = b"remote reset"
        elif kind == FAIL_REFUSED:
            self.resp_flags = "UR"
            reason = b"remote refused stream reset"
        else:
            self.resp_flags = "UC"
            reason = b"connection termination"
        if self.attempts > 1:
            # Envoy 1.40 keeps the last attempt's flag beside the retry limit's (URX,UF)
            self.resp_flags = "URX," + self.resp_flags
            body = RESET_BEFORE + b"retried and the latest reset reason: " + reason
        else:
            body = RESET_BEFORE + b"reset reason: " + reason
        if tries is not None:
            extra = tries if extra is None else extra + tries
        return self._local_reply(code, body, extra, not self.req_done)

    cdef int _arm_timer(self) except -1:
        cdef Route r = self.route
        cdef double now
        if r is None or self.rq_timeout <= 0:
            return 0
        now = mono()
        self.deadline = now + self.rq_timeout
        if self.timer is not None:
            if self.timer_at <= self.deadline + 0.001:
                # PERF(benchmarks/http1_e2e.py): keep-alive requests reuse the armed timer;
                # it fires, sees the later deadline and re-arms once per timeout period.
                return 0
            self.timer.cancel()
        self.timer_at = self.deadline
        self.timer = self.cfg.loop.call_later(self.rq_timeout, self._on_timer)
        return 0

    cdef int _arm_at(self, double when) except -1:
        """Makes sure the connection timer fires no later than `when` (mono clock)."""
        if self.timer is not None:
            if self.timer_at <= when + 0.001:
                return 0
            self.timer.cancel()
        self.timer_at = when
        self.timer = self.cfg.loop.call_later(max(when - mono(), 0.0), self._on_timer)
        return 0

    def _abandon_upstream(self):
        """The stream ends before its upstream answered: no retry, no place in a queue."""
        if self.retry_timer is not None:
            self.retry_timer.cancel()
            self.retry_timer = None
            self.cluster.retries_active -= 1
        if self.host is not None and self.up is None:
            self.cfg.pool.cancel(self.cluster, self.host, self)

    def _on_timer(self):
        cdef double now = mono()
        self.timer = None
        if self.state == DS_CLOSED:
            return
        if not self.in_request and self.state != DS_TUNNEL:
            if self.cfg.idle_timeout <= 0 and not self.idle_draining:
                return
            if now + 0.0005 < self.deadline:
                self.timer_at = self.deadline
                self.timer = self.cfg.loop.call_later(self.deadline - now, self._on_timer)
                return
            if self.idle_draining or self.cfg.drain_timeout <= 0 or not self.got_data or \
                    self.pending is not None:
                if not self.idle_draining:
                    self.cfg.cx_idle_timeout.inc()
                self.close()
                return
            # Envoy: on a connection that has had bytes (its codec exists), the idle timeout
            # starts the HCM's drain sequence; with no request coming (one that does is
            # answered with `connection: close`), the connection closes after drain_timeout
            # and the delayed close (delayed_close_timeout, 1 s). Without a byte: at once. With
            # a request head begun and not ended: at once too (Envoy counts it a stream and
            # leaves it to stream_idle_timeout, 5 min by default; a slow-client defence here)
            self.cfg.cx_idle_timeout.inc()
            self.idle_draining = True
            self.deadline = now + self.cfg.drain_timeout + DELAYED_CLOSE_S
            self.timer_at = self.deadline
            self.timer = self.cfg.loop.call_later(self.deadline - now, self._on_timer)
            return
        # an upgraded stream (101; over HTTP/2 its 200) has no route timeout any more
        if self.resp_started and (self.resp_status == 101 or (
                self.upgrade and self.resp_status == 200 and self.http_version == 20)) or \
                self.cluster is None or \
                self.route is None or (self.rq_timeout <= 0 and self.try_deadline <= 0):
            return
        if not self.req_done:
            return
        cdef double due = self.deadline if self.rq_timeout > 0 else 0
        if self.try_deadline > 0 and (due == 0 or self.try_deadline < due):
            due = self.try_deadline
        if now + 0.0005 < due:
            self._arm_at(due)       # (a codec may keep the timer itself: H2Stream)
            return
        cdef bint per_try = False
        if due == self.try_deadline and (self.rq_timeout <= 0 or now + 0.0005 < self.deadline):
            # this attempt ran out of time: retry it if the policy allows (Envoy)
            per_try = True
            self.try_deadline = 0
            self.cluster.upstream_rq_per_try_timeout.inc()
            if self.up is not None and not self.resp_started:
                self.host.outcome(OUTCOME_TIMEOUT)  # outlier detection
                u = self.up
                self.up = None
                self.host.rq_active -= 1
                (<PoolConn>u).ds = None
                (<PoolConn>u).abort()
                if self._can_retry(RETRY_5XX | RETRY_GATEWAY | RETRY_RESET):
                    retry_failed(self, FAIL_TIMEOUT)
                    if self.rq_timeout > 0:
                        self._arm_at(self.deadline)
                    return
        if not per_try:
            self.cluster.upstream_rq_timeout.inc()
        if self.host is not None:
            self.host.rq_timeout += 1
        if self.up is not None:
            self.host.outcome(OUTCOME_TIMEOUT)  # outlier detection
            u = self.up
            self.up = None
            self.host.rq_active -= 1
            (<PoolConn>u).ds = None
            (<PoolConn>u).abort()
        if self.retry_timer is not None:
            self.retry_timer.cancel()
            self.retry_timer = None
            self.cluster.retries_active -= 1
        if self.host is not None:
            self.cfg.pool.cancel(self.cluster, self.host, self)
        try:
            if self.resp_started:
                self.resp_flags = "UT"
                self._reset()
            else:
                self._fail(FAIL_TIMEOUT, None)
        except Exception as exc:
            self._internal_error(exc)
