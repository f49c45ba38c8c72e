# The router filter, always last in the chain: route -> cluster -> host -> a stream from the
# cluster's connection pool; retries (with Envoy's backoff), per-try and route timeouts,
# request mirrors, and the upstream request head. See http_router.pxd.

from cpython.bytes cimport PyBytes_GET_SIZE

from sofamesh._core.buffer cimport WriteBuf
from sofamesh._core.codecs.http1 cimport (
    Head, h1_hdr, HK_OTHER, HK_HOST, HK_TRANSFER_ENCODING, HK_CONNECTION, HK_KEEP_ALIVE,
    HK_PROXY_CONNECTION, HK_UPGRADE, HK_EXPECT, HK_TE, HK_XFF, HK_X_FORWARDED_PROTO,
    HK_X_REQUEST_ID, HK_EXPECTED_TIMEOUT, HK_ENVOY_CONTROL,
)
from sofamesh._core.conn_pool cimport PoolConn, POOL_OVERFLOW
from sofamesh._core.hcm_config cimport HcmConfig
from sofamesh._core.http1_upstream cimport ShadowConn, shadow_head
from sofamesh._core.http_common cimport (
    mono, uuid4, strip_port, no_cl_method, DS_CLOSED, DS_TUNNEL,
    FAIL_NO_HEALTHY, FAIL_OVERFLOW, FAIL_CONNECT, FAIL_CONNECT_TIMEOUT, FAIL_RESET,
    FAIL_PROTOCOL, FAIL_TIMEOUT, PAUSE_QUEUE, PAUSE_UPSTREAM_FULL,
)
from sofamesh._core.http_stream cimport HttpStream, add_formatted
from sofamesh._core.router cimport (
    Route, rng_next, RA_DIRECT, RA_REDIRECT,
    RETRY_5XX, RETRY_GATEWAY, RETRY_CONNECT_FAILURE, RETRY_RESET,
)
from sofamesh._core.upstream cimport Cluster, Host, LB_RING_HASH
from sofamesh._core.upstream import hash64

cdef bytes RESET_BEFORE = b"upstream connect error or disconnect/reset before headers. "


cdef class RouterStream(HttpStream):
    cdef int _router(self) except -1:
        cdef HcmConfig cfg = self.cfg
        cdef Route route = self.route
        cdef Cluster cl
        if route is None:
            cfg.no_route.inc()
            self.resp_flags = "NR"
            return self._local_reply(404, b"", b"", False)
        if route.action == RA_DIRECT:
            cfg.rq_direct_response.inc()
            return self._local_reply(route.status, route.body, b"", False)
        if route.action == RA_REDIRECT:
            cfg.rq_direct_response.inc()    # Envoy counts redirects here too
            return self._local_reply(route.status, b"", self._location(), False)
        name = route.pick_cluster()
        cl = cfg.clusters.get(name)
        if cl is None:
            cfg.no_cluster.inc()
            self.resp_flags = "NC"
            return self._local_reply(503, b"", b"", False)
        self.cluster = cl
        cl.upstream_rq_total.inc()
        if cl.rq_active >= cl.max_requests:
            cl.upstream_rq_pending_overflow.inc()
            self.resp_flags = "UO"
            return self._local_reply(503, RESET_BEFORE + b"reset reason: overflow",
                                     b"x-envoy-overloaded: true\r\n", False)
        cl.rq_active += 1
        cl.upstream_rq_active.inc()
        self.host = None
        if route.hash_headers and cl.lb_policy == LB_RING_HASH:
            self.host = self._hash_pick(cl, route)
        if route.auto_host and self.host is None:
            # the Host header names the chosen endpoint, so pick it before rendering
            self.host = cl.choose()
        self._render_upstream_head()
        if route.mirrors and not self.upgrade:
            self._start_shadows(route)
        if route.retry_on and route.num_retries > 0 and not self.upgrade:
            self.retry_body = []
            self.retry_ok = True
        self.up_queue = [self.up_head]
        self.up_queued = PyBytes_GET_SIZE(self.up_head)
        self.attempts = 1
        if self.req_done:
            self._arm_timer()
        return self._assign(self.host)

    cdef bytes _location(self):
        cdef Route r = self.route
        cdef Head h = self.head
        cdef bytes path = h.path()
        cdef bytes host = h.host()
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
        return b"location: " + scheme + b"://" + host + path + b"\r\n"

    cdef int _render_upstream_head(self) except -1:
        cdef HcmConfig cfg = self.cfg
        cdef Head h = self.head
        cdef Route route = self.route
        cdef WriteBuf wb = self.wb
        cdef int i, k
        cdef h1_hdr* hd
        cdef bint check_remove = bool(route.req_remove) or self.req_remove_extra is not None
        cdef bytes rid
        cdef int hrh = -1
        # an edge proxy replaces a client's x-request-id (Envoy's preserve_external_request_id)
        cdef bint regen = h.xrid_idx < 0 or (cfg.use_remote_address and cfg.generate_request_id
                                             and not cfg.preserve_external_request_id)
        wb.add(h.base, h.method_len)
        wb.add(" ", 1)
        if route.prefix_rewrite is not None and route.pm == 0:
            wb.add_bytes(route.prefix_rewrite)
            k = <int>PyBytes_GET_SIZE(route.pvalue)
            wb.add(h.base + h.path_off + k, h.path_len - k)
        elif route.rx_rewrite is not None:
            path = h.path()
            q = path.find(b"?")
            if q < 0:
                wb.add_bytes(route.rx_rewrite.sub(route.rx_subst, path))
            else:
                wb.add_bytes(route.rx_rewrite.sub(route.rx_subst, path[:q]))
                wb.add_bytes(path[q:])
        else:
            wb.add(h.base + h.path_off, h.path_len)
        wb.add(" HTTP/1.1\r\nhost: ", 17)
        if route.host_rewrite_hdr is not None:
            # host_rewrite_header: the named request header's (non-empty) value
            hrh = h.find(<bytes>route.host_rewrite_hdr, <int>len(route.host_rewrite_hdr))
            if hrh >= 0 and h.hdrs[hrh].value_len == 0:
                hrh = -1
        if hrh >= 0:
            wb.add(h.base + h.hdrs[hrh].value_off, h.hdrs[hrh].value_len)
        elif route.host_rewrite is not None:
            wb.add_bytes(route.host_rewrite)
        elif route.auto_host and self.host is not None and self.host.hostname:
            wb.add_bytes(self.host.hostname.encode())
        elif h.abs_host_len or h.host2_idx >= 0 or cfg.strip_any_host_port:
            wb.add_bytes(strip_port(h.host()) if cfg.strip_any_host_port else h.host())
        elif h.host_idx >= 0:
            wb.add(h.base + h.hdrs[h.host_idx].value_off, h.hdrs[h.host_idx].value_len)
        wb.add("\r\n", 2)
        for i in range(h.nhdr):
            hd = &h.hdrs[i]
            k = hd.kind
            if k != HK_OTHER:
                if k == HK_HOST or k == HK_KEEP_ALIVE or k == HK_PROXY_CONNECTION or \
                        k == HK_TE or k == HK_TRANSFER_ENCODING or k == HK_EXPECT or \
                        k == HK_EXPECTED_TIMEOUT or k == HK_ENVOY_CONTROL:
                    continue
                if (k == HK_UPGRADE or k == HK_CONNECTION) and not self.upgrade:
                    continue
                if cfg.use_remote_address and (k == HK_X_FORWARDED_PROTO or
                                               (k == HK_XFF and not cfg.skip_xff_append)):
                    continue
                if k == HK_X_REQUEST_ID and regen:
                    continue
            if hd.skip or (h.ntok and h.nominated(i)):
                continue
            if check_remove and self._removed(h, i):
                continue
            wb.add(h.base + hd.name_off, hd.value_off + hd.value_len - hd.name_off)
            wb.add("\r\n", 2)
        if h.chunked:
            wb.add("transfer-encoding: chunked\r\n", 28)
        elif h.content_length < 0 and not self.upgrade and not no_cl_method(h):
            # Envoy frames a body-less request explicitly, except for these methods
            wb.add("content-length: 0\r\n", 19)
        if cfg.use_remote_address:
            if not cfg.skip_xff_append:
                wb.add("x-forwarded-for: ", 17)
                if h.xff_idx >= 0:
                    wb.add(h.base + h.hdrs[h.xff_idx].value_off, h.hdrs[h.xff_idx].value_len)
                    wb.add(",", 1)
                wb.add_bytes(self.xff_ip)
                wb.add("\r\n", 2)
            wb.add("x-forwarded-proto: http\r\n", 25)
            # an edge request (no internal_address_config): Envoy names the peer
            wb.add("x-envoy-external-address: ", 26)
            wb.add_bytes(self.remote_ip)
            wb.add("\r\n", 2)
        elif h.xfp_idx < 0:
            wb.add("x-forwarded-proto: http\r\n", 25)
        if regen:
            if cfg.generate_request_id:
                rid = uuid4()
                wb.add("x-request-id: ", 14)
                wb.add_bytes(rid)
                wb.add("\r\n", 2)
                self.request_id = rid
        elif cfg.rid_in_response:
            self.request_id = h.value_at(h.xrid_idx)
        if cfg.via_line:
            wb.add_bytes(cfg.via_line)
        wb.add_bytes(route.timeout_line)
        if (route.prefix_rewrite is not None and route.pm == 0) or \
                route.rx_rewrite is not None:
            wb.add("x-envoy-original-path: ", 23)
            wb.add(h.base + h.path_off, h.path_len)
            wb.add("\r\n", 2)
        if route.host_rewrite is not None or route.auto_host or hrh >= 0:
            wb.add("x-envoy-original-host: ", 23)
            wb.add_bytes(h.host())
            wb.add("\r\n", 2)
        if route.req_add:
            wb.add_bytes(route.req_add)
        if route.req_dyn:
            add_formatted(self, route.req_dyn, wb)
        if route.req_add_if_absent:
            for name, line in route.req_add_if_absent:
                if h.find(<bytes>name, <int>len(name)) < 0:
                    wb.add_bytes(line)
        if self.req_add_extra is not None:
            for line in self.req_add_extra:
                wb.add_bytes(line)
        wb.add("\r\n", 2)
        self.up_head = wb.take()
        return 0

    cdef int _start_shadows(self, Route route) except -1:
        """request_mirror_policies: a copy of the upstream request (host suffixed
        `-shadow`) to each mirror cluster, fire and forget."""
        cdef HcmConfig cfg = self.cfg
        cdef Cluster cl
        cdef ShadowConn sh
        for name, share, no_suffix in route.mirrors:
            if share < 1000000 and <long long>(rng_next() % 1000000) >= share:
                continue
            cl = cfg.clusters.get(name)
            if cl is None:
                continue
            shead = shadow_head(self.up_head, cfg.local_ip, not no_suffix)
            sh = ShadowConn(cl, cfg.loop, shead, self.head.is_head_method,
                            route.timeout, min(cfg.buffer_limit, cl.per_connection_buffer_limit))
            if not self.req_done and not sh.closed:
                if self.shadows is None:
                    self.shadows = []
                self.shadows.append(sh)
        return 0

    cdef Host _hash_pick(self, Cluster cl, Route route):
        """hash_policy headers -> one key (Envoy combines several by rotate-xor) -> the
        ring's host; no header present: None (the cluster's random pick)."""
        cdef Head h = self.head
        cdef int i
        cdef bint have = False
        cdef unsigned long long hv = 0, one
        for name, terminal in route.hash_headers:
            i = h.find(<bytes>name, <int>len(name))
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
        cdef ShadowConn sh
        cdef list shadows = self.shadows
        self.shadows = None
        for sh in shadows:
            sh.reset()
        return 0

    cdef bint _removed(self, Head h, int i):
        name = h.name_at(i)
        if name in self.route.req_remove:
            return True
        return self.req_remove_extra is not None and name in self.req_remove_extra

    cdef int _send_up(self, bytes data) except -1:
        cdef PoolConn u = self.up
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef ShadowConn sh
        if self.shadows is not None:
            for sh in self.shadows:
                sh.send(data)
        if self.retry_body is not None:
            if self.retry_bytes + n <= self.cfg.buffer_limit:
                self.retry_body.append(data)
                self.retry_bytes += n
            else:
                self.retry_body = None      # too big to replay: no retries for this one
                self.retry_ok = False
        if u is not None and u.connected:
            u.write(data)
        else:
            self.up_queue.append(data)
            self.up_queued += n
            if self.up_queued > self.cfg.buffer_limit:
                self._pause(PAUSE_QUEUE)
        return 0

    cdef int _flush_up(self) except -1:
        cdef PoolConn u = self.up
        cdef bytes b
        if not self.up_queue:
            return 0
        if len(self.up_queue) == 1:
            b = self.up_queue[0]
        else:
            b = b"".join(self.up_queue)
        self.up_queue = []
        self.up_queued = 0
        u.write(b)
        self._resume(PAUSE_QUEUE)
        return 0

    cdef int _assign(self, Host host) except -1:
        cdef Cluster cl = self.cluster
        if host is None:
            host = cl.choose()
        if host is None:
            cl.upstream_cx_none_healthy.inc()
            return self._fail(FAIL_NO_HEALTHY, None)
        self.host = host
        if self.cfg.pool.new_stream(cl, host, self) == POOL_OVERFLOW:
            return self._fail(FAIL_OVERFLOW, None)
        return 0

    cdef int _attach(self, PoolConn c) except -1:
        cdef Host host = c.host
        self.up = c
        self._resume(PAUSE_UPSTREAM_FULL)     # a retry: the previous connection's pause is moot
        host.rq_active += 1
        host.rq_total += 1
        self.upstream_host = host.address + ":" + str(host.port) \
            if self.cfg.access_log is not None else "-"
        c.start(self, self.head.is_head_method, self.upgrade)
        self.t_upstream = mono()
        if self.route.per_try_timeout > 0:
            self.try_deadline = self.t_upstream + self.route.per_try_timeout
            self._arm_at(self.try_deadline)
        if c.connected:
            self._flush_up()
        return 0

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
        self.up_queue = [self.up_head] + list(self.retry_body or ())
        self.up_queued = 0
        self.cluster.upstream_rq_total.inc()
        self._assign(None)

    cdef int _fail(self, int kind, PoolConn c) except -1:
        cdef Cluster cl = self.cluster
        cdef bytes body, reason
        cdef bytes extra = b""
        cdef int code = 503
        if self.host is not None and c is not None:
            self.host.rq_active -= 1
        if c is not None:
            self.up = None
        if kind == FAIL_CONNECT or kind == FAIL_CONNECT_TIMEOUT:
            if self._can_retry(RETRY_CONNECT_FAILURE | RETRY_RESET | RETRY_5XX |
                               RETRY_GATEWAY):
                return self._schedule_retry()
        elif kind == FAIL_RESET or kind == FAIL_PROTOCOL:
            if self._can_retry(RETRY_RESET | RETRY_5XX | RETRY_GATEWAY):
                return self._schedule_retry()
        if self.resp_started:
            return self._reset()
        if self.host is not None:
            self.host.rq_error += 1
        if cl is not None and kind != FAIL_NO_HEALTHY:
            cl.count_status(504 if kind == FAIL_TIMEOUT else 502 if kind == FAIL_PROTOCOL else 503)
        if kind == FAIL_NO_HEALTHY:
            self.resp_flags = "UH"
            return self._local_reply(503, b"no healthy upstream", b"", not self.req_done)
        if kind == FAIL_TIMEOUT:
            self.resp_flags = "UT"
            return self._local_reply(504, b"upstream request timeout", b"", not self.req_done)
        if kind == FAIL_OVERFLOW:
            self.resp_flags = "UO"
            reason = b"overflow"
            extra = b"x-envoy-overloaded: true\r\n"
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
        else:
            self.resp_flags = "UC"
            reason = b"connection termination"
        if self.attempts > 1:
            self.resp_flags = "URX"
            body = RESET_BEFORE + b"retried and the latest reset reason: " + reason
        else:
            body = RESET_BEFORE + b"reset reason: " + reason
        return self._local_reply(code, body, extra, not self.req_done)

    cdef int _arm_timer(self) except -1:
        cdef Route r = self.route
        cdef double now
        if r is None or r.timeout <= 0:
            return 0
        now = mono()
        self.deadline = now + r.timeout
        if self.timer is not None:
            if self.timer_at <= self.deadline + 0.001:
                # PERF(benchmarks/http1_e2e.py): keep-alive requests reuse the armed timer;
                # it fires, sees the later deadline and re-arms once per timeout period.
                return 0
            self.timer.cancel()
        self.timer_at = self.deadline
        self.timer = self.cfg.loop.call_later(r.timeout, self._on_timer)
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
            if self.cfg.idle_timeout <= 0:
                return
            if now + 0.0005 < self.deadline:
                self.timer_at = self.deadline
                self.timer = self.cfg.loop.call_later(self.deadline - now, self._on_timer)
                return
            self.cfg.cx_idle_timeout.inc()
            self.close()
            return
        if self.resp_started and self.resp_status == 101 or self.cluster is None or \
                self.route is None or (self.route.timeout <= 0 and self.try_deadline <= 0):
            return
        if not self.req_done:
            return
        cdef double due = self.deadline if self.route.timeout > 0 else 0
        if self.try_deadline > 0 and (due == 0 or self.try_deadline < due):
            due = self.try_deadline
        if now + 0.0005 < due:
            self.timer_at = due
            self.timer = self.cfg.loop.call_later(due - now, self._on_timer)
            return
        cdef bint per_try = False
        if due == self.try_deadline and (self.route.timeout <= 0 or now + 0.0005 < self.deadline):
            # this attempt ran out of time: retry it if the policy allows (Envoy)
            per_try = True
            self.try_deadline = 0
            self.cluster.upstream_rq_per_try_timeout.inc()
            if self.up is not None and not self.resp_started:
                u = self.up
                self.up = None
                self.host.rq_active -= 1
                (<PoolConn>u).ds = None
                (<PoolConn>u).abort()
                if self._can_retry(RETRY_5XX | RETRY_GATEWAY | RETRY_RESET):
                    self._schedule_retry()
                    if self.route.timeout > 0:
                        self._arm_at(self.deadline)
                    return
        if not per_try:
            self.cluster.upstream_rq_timeout.inc()
        if self.host is not None:
            self.host.rq_timeout += 1
        if self.up is not None:
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
