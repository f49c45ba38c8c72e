# A sampled request's Zipkin v2 SERVER span written as JSON in C, straight from the stream
# (proxy/tracing_zipkin.py). The same bytes as json.dumps(separators=(",", ":")) of the span
# proxy/tracing builds in Python (SpanRecord + ZipkinTracer._json), which stays the path for
# what this writer does not cover (server_span returns None): gRPC requests,
# spawn_upstream_span, a request without an id yet (a local reply), custom tags that reuse
# a built-in tag's name.
# PERF(benchmarks/instr_per_request.py --tracing 1): the Python span cost ~55k instructions
# (tags dict, SpanRecord) plus ~68k of json.dumps per sampled request.

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport strlen

from sofamesh._core.buffer cimport WriteBuf
from sofamesh._core.headers cimport HeaderMap
from sofamesh._core.http_common cimport wall_us
from sofamesh._core.http_stream cimport HttpStream, TraceCtx
from sofamesh._core.router cimport Route

# the tags the Python path writes itself (proxy/tracing.Tracer._server_tags, _common_tags)
BUILTIN_TAGS = frozenset((
    "node_id", "zone", "guid:x-request-id", "http.url", "http.method", "downstream_cluster",
    "user_agent", "http.protocol", "peer.address", "guid:x-client-trace-id", "grpc.path",
    "grpc.authority", "grpc.content_type", "grpc.timeout", "request_size", "response_size",
    "component", "upstream_cluster", "upstream_cluster.name", "http.status_code",
    "response_flags", "error", "grpc.status_code", "grpc.message",
))

cdef const char* HEX = "0123456789abcdef"


cdef inline int _lit(WriteBuf b, const char* s) except -1:
    return b.add(s, <Py_ssize_t>strlen(s))


cdef inline int _rawb(WriteBuf b, bytes s) except -1:
    return b.add(PyBytes_AS_STRING(s), PyBytes_GET_SIZE(s))


cdef int _esc(WriteBuf b, const char* s, Py_ssize_t n) except -1:
    """A latin-1 string's characters as json.dumps (ensure_ascii) writes them, unquoted."""
    cdef Py_ssize_t i
    cdef unsigned char c
    if b.len + n * 6 > b.cap:
        b.grow(n * 6)
    cdef char* o = b.data + b.len
    for i in range(n):
        c = <unsigned char>s[i]
        if 32 <= c <= 126 and c != 34 and c != 92:
            o[0] = <char>c
            o += 1
            continue
        o[0] = b'\\'
        if c == 34 or c == 92:
            o[1] = <char>c
            o += 2
        elif c == 10:
            o[1] = b'n'
            o += 2
        elif c == 13:
            o[1] = b'r'
            o += 2
        elif c == 9:
            o[1] = b't'
            o += 2
        elif c == 8:
            o[1] = b'b'
            o += 2
        elif c == 12:
            o[1] = b'f'
            o += 2
        else:
            o[1] = b'u'
            o[2] = b'0'
            o[3] = b'0'
            o[4] = HEX[c >> 4]
            o[5] = HEX[c & 15]
            o += 6
    b.len = o - b.data
    return 0


cdef inline int _str(WriteBuf b, bytes s) except -1:
    """A quoted JSON string."""
    _lit(b, '"')
    _esc(b, PyBytes_AS_STRING(s), PyBytes_GET_SIZE(s))
    return _lit(b, '"')


cdef int _tag(WriteBuf b, bint* first, const char* name, const char* v, Py_ssize_t vn) \
        except -1:
    """"name":"value" in the tags object; an empty value is left out (Zipkin's spans drop
    empty tags). name: a JSON-safe literal."""
    if vn <= 0:
        return 0
    if first[0]:
        first[0] = False
    else:
        _lit(b, ",")
    _lit(b, '"')
    _lit(b, name)
    _lit(b, '":"')
    _esc(b, v, vn)
    return _lit(b, '"')


cdef inline int _tagb(WriteBuf b, bint* first, const char* name, bytes v) except -1:
    if v is None:
        return 0
    return _tag(b, first, name, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v))


cdef int _tagi(WriteBuf b, bint* first, const char* name, long long v) except -1:
    if first[0]:
        first[0] = False
    else:
        _lit(b, ",")
    _lit(b, '"')
    _lit(b, name)
    _lit(b, '":"')
    b.add_uint(<unsigned long long>v if v > 0 else 0)
    return _lit(b, '"')


cdef inline int _tagl(WriteBuf b, bint* first, const char* name, const char* v) except -1:
    return _tag(b, first, name, v, <Py_ssize_t>strlen(v))


cdef bytes _header(HeaderMap h, bytes name):
    cdef int i = h.find_from(PyBytes_AS_STRING(name), <int>PyBytes_GET_SIZE(name), 0)
    return h.value_at(i) if i >= 0 else None


cdef class ZipkinSpanWriter:
    """Per tracer: what every span shares (the local endpoint, node tags, custom tags)."""
    cdef bytes endpoint         # ,"localEndpoint":{...}
    cdef bytes node_id
    cdef bytes zone
    cdef Py_ssize_t max_path
    cdef tuple custom           # ((tag json-escaped, header or None, literal), ...)
    cdef WriteBuf buf           # the span being written (reused)
    cdef readonly bint usable   # False: custom tags this writer would order differently

    def __init__(self, str local_ip, str node_id, str zone, int max_path, list tags):
        cdef WriteBuf b = WriteBuf()
        self.buf = WriteBuf()
        # a value beyond latin-1 would need \\u escapes of code points: the Python path
        self.usable = all(_latin1(x) is not None for x in (local_ip, node_id, zone)) and all(
            _latin1(x) is not None for tag in tags for x in (tag[0], tag[1] or "", tag[2]))
        if not self.usable:
            self.custom = ()
            return
        _lit(b, ',"localEndpoint":{"ipv4":"')
        ip = local_ip.encode("latin-1")
        _esc(b, PyBytes_AS_STRING(ip), PyBytes_GET_SIZE(ip))
        _lit(b, '","port":0}')
        self.endpoint = b.take()
        self.node_id = node_id.encode("latin-1")
        self.zone = zone.encode("latin-1")
        self.max_path = max(max_path, 0)
        custom = []
        names = set()
        for tag, header, literal in tags:
            if tag in BUILTIN_TAGS or tag in names:
                self.usable = False     # a tag set twice: the Python path's dict semantics
            names.add(tag)
            custom.append((_escaped(tag.encode("latin-1")),
                           header.encode("latin-1") if header is not None else None,
                           literal.encode("latin-1") if literal else None))
        self.custom = tuple(custom)

    cpdef bytes server_span(self, HttpStream s, TraceCtx t, int status, bint client):
        """The span's JSON object, or None when the Python path must write it."""
        cdef HeaderMap h = s.head
        cdef bytes rid = s.request_id
        cdef WriteBuf b = self.buf
        cdef bint first = True
        cdef long long end = wall_us()
        cdef bytes authority, path, v, op
        cdef Route route = s.route
        cdef object cluster
        cdef Py_ssize_t n, an, pn
        cdef tuple c
        if not self.usable or s.grpc or t.child_id is not None or h is None:
            return None
        if not rid:
            rid = _header(h, b"x-request-id")
            if not rid:
                return None     # the Python path gives it an id (Tracer._request_id)
        authority = h.authority() or b""
        path = h.path() or b""
        b.len = 0       # (a span that raised half-way left its bytes)
        _lit(b, '{"traceId":')
        _str(b, t.trace_id)
        _lit(b, ',"id":')
        _str(b, t.span_id)
        _lit(b, ',"name":')
        if route is not None and route.decorator:
            op = _latin1(route.decorator)
            if op is None:
                return None
            _str(b, op)
        else:
            _str(b, authority)
        if client:
            _lit(b, ',"kind":"CLIENT","timestamp":')
        else:
            _lit(b, ',"kind":"SERVER","timestamp":')
        b.add_uint(<unsigned long long>t.start_us)
        _lit(b, ',"duration":')
        b.add_uint(<unsigned long long>(end - t.start_us) if end > t.start_us else 0)
        _rawb(b, self.endpoint)
        _lit(b, ',"annotations":[{"timestamp":')
        b.add_uint(<unsigned long long>end)
        if client:
            _lit(b, ',"value":"cr"}],"tags":{')
        else:
            _lit(b, ',"value":"ss"}],"tags":{')
        _tagb(b, &first, "node_id", self.node_id)
        _tagb(b, &first, "zone", self.zone)
        _tagb(b, &first, "guid:x-request-id", rid)
        an = PyBytes_GET_SIZE(authority)
        pn = PyBytes_GET_SIZE(path)
        n = 7 + an + pn
        if n > self.max_path:
            n = self.max_path
        if n > 0:
            if not first:
                _lit(b, ",")
            first = False
            _lit(b, '"http.url":"')
            _esc(b, "http://", 7 if n > 7 else n)
            if n > 7:
                _esc(b, PyBytes_AS_STRING(authority), an if n - 7 > an else n - 7)
            if n > 7 + an:
                _esc(b, PyBytes_AS_STRING(path), n - 7 - an)
            _lit(b, '"')
        _tagb(b, &first, "http.method", h.method())
        v = _header(h, b"x-envoy-downstream-service-cluster")
        _tagb(b, &first, "downstream_cluster", v if v else b"-")
        v = _header(h, b"user-agent")
        _tagb(b, &first, "user_agent", v if v else b"-")
        if s.http_version == 20:
            _tagl(b, &first, "http.protocol", "HTTP/2")
        elif s.http_version == 11:
            _tagl(b, &first, "http.protocol", "HTTP/1.1")
        else:
            _tagl(b, &first, "http.protocol", "HTTP/1.0")
        _tagb(b, &first, "peer.address", s.remote_ip)
        _tagb(b, &first, "guid:x-client-trace-id", _header(h, b"x-client-trace-id"))
        _tagi(b, &first, "request_size", <long long>s.bytes_rx)
        _tagi(b, &first, "response_size", <long long>s.bytes_tx)
        _tagl(b, &first, "component", "proxy")
        if s.cluster is not None:
            cluster = s.cluster.name
        elif route is not None and route.cluster:
            cluster = route.cluster     # a filter answered before the router
        else:
            cluster = None
        if cluster is not None:
            v = _latin1(cluster)
            if v is None:
                return None
            _tagb(b, &first, "upstream_cluster", v)
            _tagb(b, &first, "upstream_cluster.name", v)
        _tagi(b, &first, "http.status_code", status)
        if s.resp_flags:
            _tagb(b, &first, "response_flags", _latin1(s.resp_flags))
        if status >= 500 or status == 0:
            _tagl(b, &first, "error", "true")
        for c in self.custom:
            v = _header(h, <bytes>c[1]) if c[1] is not None else None
            if v is None:
                v = <bytes>c[2]
            if v:
                if not first:
                    _lit(b, ",")
                first = False
                _lit(b, '"')
                _rawb(b, <bytes>c[0])
                _lit(b, '":"')
                _esc(b, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v))
                _lit(b, '"')
        _lit(b, "}")
        if t.parent_id:
            _lit(b, ',"parentId":')
            _str(b, t.parent_id)
        if t.shared:
            _lit(b, ',"shared":true')
        _lit(b, "}")
        return b.take()


cdef bytes _latin1(str s):
    try:
        return s.encode("latin-1")
    except UnicodeEncodeError:
        return None


cdef bytes _escaped(bytes s):
    cdef WriteBuf b = WriteBuf()
    _esc(b, PyBytes_AS_STRING(s), PyBytes_GET_SIZE(s))
    return b.take()
