# The HTTP stream and the HttpFilter interface; see http_stream.pxd for the contract.

cimport cython

from sofamesh._core.headers cimport HeaderMap
from sofamesh._core.http_common cimport fmt_address, mono, uuid4, DS_TUNNEL
from sofamesh._core.upstream cimport Cluster
from sofamesh.proxy.original_dst import local_address as _local_address


cdef class HttpFilter:
    def __init__(self, str name="", bint wants_data=False, bint wants_encode=False):
        self.name = name
        self.wants_data = wants_data
        self.wants_encode = wants_encode

    cpdef int decode_headers(self, HttpStream s, bint end_stream) except -1:
        return FILTER_CONTINUE

    cpdef int decode_data(self, HttpStream s, bytes data, bint end_stream) except -1:
        return FILTER_CONTINUE

    cpdef int encode_headers(self, HttpStream s, int status, bint end_stream) except -1:
        return FILTER_CONTINUE

    cpdef int encode_data(self, HttpStream s, bytes data, bint end_stream) except -1:
        return FILTER_CONTINUE

    cpdef int encode_trailers(self, HttpStream s, object trailers) except -1:
        return FILTER_CONTINUE


# PERF(benchmarks/instr_per_request.py --tracing 0): one per request when tracing is on;
# a free list and no GC tracking (it holds ids, strings and the upstream Host, never a
# stream)
@cython.freelist(64)
@cython.no_gc
cdef class TraceCtx:
    pass


cdef class StreamLog:
    cdef int log_stream(self, HttpStream s, double duration_ms) except -1:
        return 0


cdef class HttpStream(UpstreamCallbacks):
    cdef int _decode_continue(self) except -1:
        raise NotImplementedError

    cdef int _overloaded(self) except -1:
        """The overload manager's stop_accepting_requests (proxy/overload.py): Envoy's 503
        "envoy overloaded", response flag OM, counted in downstream_rq_overload_close."""
        self.cfg.rq_overload_close.inc()
        self.resp_flags = "OM"
        return self._local_reply(503, b"envoy overloaded", None, False)

    cdef int _local_reply(self, int code, bytes body, tuple extra, bint close) except -1:
        raise NotImplementedError

    cdef int _flush_out(self) except -1:
        raise NotImplementedError

    cdef int _end_request_stats(self, int status) except -1:
        """The stream ended (answered, reset or abandoned): connection manager and cluster
        stats, then the access log."""
        cdef HcmConfig cfg = self.cfg
        cdef Cluster cl = self.cluster
        cdef double ms = (mono() - self.t_start) * 1000.0
        self.in_request = False
        if self.stream_timer is not None:
            self.stream_timer.cancel()
            self.stream_timer = None
        cfg.rq_active.dec()
        cfg.rq_completed.inc()
        if status:
            if status < 200:
                cfg.rq_1xx.inc()
            elif status < 300:
                cfg.rq_2xx.inc()
            elif status < 400:
                cfg.rq_3xx.inc()
            elif status < 500:
                cfg.rq_4xx.inc()
            else:
                cfg.rq_5xx.inc()
        cfg.rq_time.record(ms)
        cdef TraceCtx span = self.trace
        if span is not None:
            self.trace = None
            if span.sampled:
                try:
                    cfg.tracer.finish(self, span, status)
                except Exception:
                    pass
        if cl is not None:
            cl.rq_active -= 1
            cl.upstream_rq_active.dec()
            cl.upstream_rq_completed.inc()
            if self.service_ms >= 0:
                cl.upstream_rq_time.record(self.service_ms)
        if cfg.access_log is not None:
            if self.request_id is None and cfg.generate_request_id and \
                    self.resp_flags != "DPE" and \
                    self.head.find_from("x-request-id", 12, 0) < 0:
                # Envoy gives every request an id before routing; a local reply's log
                # line carries it too
                self.request_id = uuid4()
            al = cfg.access_log
            try:
                # PERF(benchmarks/instr_per_request.py --mixer als): a C call for the gRPC
                # access log's buffer, not a Python method call (~400 instructions)
                if isinstance(al, StreamLog):
                    (<StreamLog>al).log_stream(self, ms)
                else:
                    al.log(self, ms)
            except Exception:
                pass
        return 0

    # stream API for filters --------------------------------------------------------------
    @property
    def method(self):
        return self.head.method()

    @property
    def path(self):
        return self.head.path()

    @property
    def authority(self):
        return self.head.authority()

    @property
    def protocol(self):
        v = self.http_version
        return "HTTP/2" if v == 20 else "HTTP/1.1" if v == 11 else "HTTP/1.0"

    @property
    def config(self):
        return self.cfg

    @property
    def downstream_remote_address(self):
        return (self.remote_ip.decode(), self.remote_port)

    def get_request_header(self, name):
        """The first value of a request header (name: str or bytes, any case), or None."""
        if isinstance(name, str):
            name = name.encode("latin-1")
        cdef bytes b = name
        cdef HeaderMap h = self.head
        cdef int i = h.find_from(b, <int>len(b), 0)
        if i < 0:
            return None
        return h.value_at(i)

    def get_response_header(self, name):
        """The first value of a header of the proxied response (encode filters), or None."""
        if isinstance(name, str):
            name = name.encode("latin-1")
        cdef bytes b = name
        cdef HeaderMap h = self.resp_head
        if h is None:
            return None
        cdef int i = h.find_from(b, <int>len(b), 0)
        return h.value_at(i) if i >= 0 else None

    def set_response_header(self, name, value):
        """Replaces a header of the proxied response (encode_headers only): Envoy's
        setInline / setCopy."""
        self.remove_response_header(name)
        if isinstance(name, str):
            name = name.encode("latin-1")
        if isinstance(value, str):
            value = value.encode("latin-1")
        if self.resp_head is not None:
            self.resp_head.add((<bytes>name).lower(), value)

    def remove_response_header(self, name):
        """Removes a header of the proxied response (encode_headers only). Without
        content-length the HTTP/1 codec frames the body chunked."""
        if isinstance(name, str):
            name = name.encode("latin-1")
        if self.resp_head is not None:
            self.resp_head.remove((<bytes>name).lower())

    def replace_data(self, data):
        """From encode_data / encode_trailers: the response body bytes passed on (to the
        earlier filters, then downstream) instead of the ones the filter was given; from
        decode_data, the request body bytes passed on (to the later filters, then the
        router)."""
        self.enc_swap = bytes(data)

    def _local_encode(self, HeaderMap resp, int code, bytes body):
        """A local reply through the encode filters, last to first, as Envoy passes every
        response: its head (the reply's own headers set, the filters' additions not yet),
        then its body as one last piece; returns the body to send (a compressor's). Called
        by the codecs' _local_reply when a filter wants encoding."""
        cdef HcmConfig cfg = self.cfg
        cdef HttpFilter f
        cdef Py_ssize_t j
        cdef tuple filters = cfg.filters
        cdef bint end = not body or self.head_req  # a HEAD answer ends with its head
        self.resp_head = resp
        for j in range(len(filters) - 1, -1, -1):
            f = filters[j]
            if f.wants_encode:
                f.encode_headers(self, code, end)
        if not end and cfg.any_data:
            for j in range(len(filters) - 1, -1, -1):
                f = filters[j]
                if f.wants_data:
                    f.encode_data(self, body, True)
                    if self.enc_swap is not None:
                        body = self.enc_swap
                        self.enc_swap = None
        return body

    @property
    def upstream_cluster(self):
        return self.cluster.name if self.cluster is not None else None

    @property
    def request_head(self):
        """The request's HeaderMap (for compiled matchers: router.HeaderMatcher.test)."""
        return self.head

    def request_headers(self):
        cdef HeaderMap h = self.head
        return [(h.name_at(i), h.value_at(i)) for i in range(h.count()) if h.live(i)]

    def add_request_header(self, name, value):
        """Adds a request header; later filters and the upstream see it."""
        if isinstance(name, str):
            name = name.encode("latin-1")
        if isinstance(value, str):
            value = value.encode("latin-1")
        self.head.add((<bytes>name).lower(), value)

    def remove_request_header(self, name):
        if isinstance(name, str):
            name = name.encode("latin-1")
        self.head.remove((<bytes>name).lower())

    def add_response_header(self, name, value):
        """Adds a header to the response, proxied or local."""
        if isinstance(name, str):
            name = name.encode("latin-1")
        if isinstance(value, str):
            value = value.encode("latin-1")
        if self.resp_add_extra is None:
            self.resp_add_extra = []
        self.resp_add_extra.append((<bytes>name).lower())
        self.resp_add_extra.append(value)

    def route_filter_config(self, str name):
        if self.route is None:
            return None
        return self.route.filter_config.get(name)

    def send_local_reply(self, int code, body=b"", headers=(), str flags=""):
        """Replies without the upstream (a filter denying a request, say)."""
        if isinstance(body, str):
            body = body.encode()
        extra = []
        for k, v in headers:
            extra.append((k.encode() if isinstance(k, str) else k).lower())
            extra.append(v.encode() if isinstance(v, str) else v)
        if flags:
            self.resp_flags = flags
        self._local_reply(code, body, tuple(extra) if extra else None, False)

    def continue_decoding(self):
        """Resumes the filter chain after a filter returned FILTER_STOP."""
        if self.stopped and self.in_request and not self.resp_started:
            self._decode_continue()

    def busy(self):
        return self.in_request or self.state == DS_TUNNEL

    def close(self):
        """Closes the connection (after flushing what was written)."""
        self.close_after = True
        if self.transport is not None:
            self.transport.close()

    def request_header_value(self, name):
        return self.get_request_header(name)


cdef bytes _fmt_op(HttpStream s, str op, str arg):
    """One Envoy header command operator (see sofamesh.proxy.routes.FORMAT_OPERATORS)."""
    if op == "DOWNSTREAM_REMOTE_ADDRESS" or op == "DOWNSTREAM_DIRECT_REMOTE_ADDRESS":
        return fmt_address(s.remote_ip, s.remote_port)
    if op == "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" or \
            op == "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT":
        return s.remote_ip
    if op == "DOWNSTREAM_LOCAL_ADDRESS" or op == "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT":
        local = _local_address(s.transport)
        if not local:
            return b""
        if op == "DOWNSTREAM_LOCAL_ADDRESS":
            return fmt_address(local[0], local[1])
        return local[0].encode()
    if op == "PROTOCOL":
        return b"HTTP/2" if s.http_version == 20 else \
            b"HTTP/1.1" if s.http_version == 11 else b"HTTP/1.0"
    if op == "UPSTREAM_CLUSTER":
        return s.cluster.name.encode() if s.cluster is not None else b""
    if op == "UPSTREAM_HOST" or op == "UPSTREAM_REMOTE_ADDRESS":
        if s.host is None or s.t_upstream == 0:
            return b""      # request headers are formatted before a host is chosen
        return fmt_address(s.host.address, s.host.port)
    if op == "REQ":
        name, _, limit = arg.partition(":")
        for alt in name.split("?"):
            alt = alt.strip().lower()
            if alt == ":authority":
                v = s.head.authority()
            elif alt == ":path":
                v = s.head.path()
            elif alt == ":method":
                v = s.head.method()
            else:
                v = s.get_request_header(alt)
            if v:
                return v[:int(limit)] if limit.isdigit() else v
        return b""
    if op == "HOSTNAME":
        import socket
        return socket.gethostname().encode()
    return b""


cdef int add_formatted(HttpStream s, tuple dyn, HeaderMap h) except -1:
    """Header values with %OPERATORS%, evaluated for this request; Envoy leaves a header
    out when its value comes out empty."""
    cdef list out
    for name, parts in dyn:
        out = []
        for p in parts:
            out.append(p if isinstance(p, bytes) else _fmt_op(s, p[0], p[1]))
        v = b"".join(out)
        if v:
            h.add((<bytes>name).lower(), v)
    return 0
