# HTTP/1.1 proxy connections on uvloop; see http_proxy.pxd for the contract.
#
# Request path:  data_received -> parse_request (C) -> RouteTable.route (C) -> filters ->
#                render the upstream head into a WriteBuf -> pooled UpstreamConn.write.
# Response path: UpstreamConn.data_received -> parse_response -> render the downstream head
#                -> body bytes passed through as they came (framing tracked by BodyReader).
# No coroutine, future or task per request: only new upstream connections use a task.

import asyncio
import email.utils

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from libc.time cimport time, time_t

from sofamesh._core.buffer cimport WriteBuf
from sofamesh._core.codecs.http1 cimport (
    Head, BodyReader, parse_request, parse_response, h1_hdr,
    H1_E_TOO_LARGE, H1_E_TOO_MANY, H1_E_NOT_IMPL, H1_E_BAD_TARGET, H1_E_OBS_FOLD,
    unfold_head,
    FR_NONE, FR_LENGTH, FR_CHUNKED, FR_EOF,
    HK_OTHER, HK_HOST, HK_TRANSFER_ENCODING, HK_CONNECTION,
    HK_KEEP_ALIVE, HK_PROXY_CONNECTION, HK_UPGRADE, HK_EXPECT, HK_TE, HK_XFF,
    HK_X_FORWARDED_PROTO, HK_X_REQUEST_ID, HK_SERVER, HK_DATE, HK_EXPECTED_TIMEOUT,
    HK_ENVOY_CONTROL,
)
from sofamesh._core.router cimport (
    Route, RouteTable, rng_next, RA_DIRECT, RA_REDIRECT,
    RETRY_5XX, RETRY_GATEWAY, RETRY_CONNECT_FAILURE, RETRY_RESET, RETRY_RETRIABLE_4XX,
    RETRY_STATUS_CODES,
)
from sofamesh._core.stats cimport Store
from sofamesh._core.upstream cimport Cluster, Host, LB_RING_HASH
from sofamesh._core.upstream import hash64

cdef extern from "time.h" nogil:
    ctypedef int clockid_t
    cdef struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(clockid_t clk, timespec* ts)
    clockid_t CLOCK_MONOTONIC


cdef inline double mono() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


# downstream states
cdef enum:
    DS_HEAD = 0         # waiting for a request head
    DS_BODY = 1         # request body streaming upstream
    DS_WAIT = 2         # request complete, response in progress
    DS_DRAIN = 3        # discarding a request body after a local reply
    DS_TUNNEL = 4       # upgraded: raw bytes both ways
    DS_CLOSED = 5

# upstream states
cdef enum:
    US_CONNECTING = 0
    US_IDLE = 1
    US_HEAD = 2
    US_BODY = 3
    US_TUNNEL = 4
    US_CLOSED = 5

# failure kinds
cdef enum:
    F_NO_HEALTHY = 0
    F_OVERFLOW = 1
    F_CONNECT_FAIL = 2
    F_CONNECT_TIMEOUT = 3
    F_RESET = 4
    F_PROTOCOL = 5
    F_TIMEOUT = 6

# server_header_transformation (Envoy's enum values)
cdef enum:
    SERVER_OVERWRITE = 0
    SERVER_APPEND_IF_ABSENT = 1
    SERVER_PASS_THROUGH = 2

# pause reasons (bits)
cdef enum:
    P_UPSTREAM_FULL = 1     # upstream write buffer above high water
    P_PIPELINE = 2          # too many pipelined bytes buffered
    P_QUEUE = 4             # body queued while the upstream connects

# Envoy writes reason phrases from its own table (any other code: "Unknown").
REASONS = {
    100: b"Continue", 101: b"Switching Protocols", 102: b"Processing", 103: b"Early Hints",
    200: b"OK", 201: b"Created", 202: b"Accepted", 203: b"Non-Authoritative Information",
    204: b"No Content", 205: b"Reset Content", 206: b"Partial Content",
    207: b"Multi-Status", 208: b"Already Reported", 226: b"IM Used",
    300: b"Multiple Choices", 301: b"Moved Permanently", 302: b"Found", 303: b"See Other",
    304: b"Not Modified", 305: b"Use Proxy", 307: b"Temporary Redirect",
    308: b"Permanent Redirect", 400: b"Bad Request", 401: b"Unauthorized",
    402: b"Payment Required", 403: b"Forbidden", 404: b"Not Found",
    405: b"Method Not Allowed", 406: b"Not Acceptable",
    407: b"Proxy Authentication Required", 408: b"Request Timeout", 409: b"Conflict",
    410: b"Gone", 411: b"Length Required", 412: b"Precondition Failed",
    413: b"Payload Too Large", 414: b"URI Too Long", 415: b"Unsupported Media Type",
    416: b"Range Not Satisfiable", 417: b"Expectation Failed", 421: b"Misdirected Request",
    422: b"Unprocessable Entity", 423: b"Locked", 424: b"Failed Dependency",
    426: b"Upgrade Required", 428: b"Precondition Required", 429: b"Too Many Requests",
    431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
    501: b"Not Implemented", 502: b"Bad Gateway", 503: b"Service Unavailable",
    504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
    506: b"Variant Also Negotiates", 507: b"Insufficient Storage", 508: b"Loop Detected",
    510: b"Not Extended", 511: b"Network Authentication Required",
}

cdef bytes RESET_BEFORE = b"upstream connect error or disconnect/reset before headers. "

cdef time_t _date_t = 0
cdef bytes _date_line = b""


cdef bytes date_line():
    global _date_t, _date_line
    cdef time_t t = time(NULL)
    if t != _date_t:
        _date_t = t
        _date_line = b"date: " + email.utils.formatdate(t, usegmt=True).encode() + b"\r\n"
    return _date_line


cdef const char* HEX = "0123456789abcdef"


cdef bytes uuid4():
    cdef unsigned long long a = rng_next(), b = rng_next()
    cdef unsigned char raw[16]
    cdef char out[36]
    cdef int i, j = 0
    for i in range(8):
        raw[i] = <unsigned char>(a >> (8 * i))
        raw[8 + i] = <unsigned char>(b >> (8 * i))
    raw[6] = (raw[6] & 0x0f) | 0x40
    raw[8] = (raw[8] & 0x3f) | 0x80
    for i in range(16):
        if i == 4 or i == 6 or i == 8 or i == 10:
            out[j] = 45
            j += 1
        out[j] = HEX[raw[i] >> 4]
        out[j + 1] = HEX[raw[i] & 15]
        j += 2
    return PyBytes_FromStringAndSize(out, 36)


cdef bint _needs_normalizing(Head h, bint merge) noexcept:
    """The path has dot segments, percent escapes (or, with merge, '//')."""
    cdef const char* p = h.base + h.path_off
    cdef int i, n = h.path_len
    for i in range(n):
        if p[i] == 63:
            return False
        if p[i] == 37:
            return True
        if p[i] == 46 and i > 0 and p[i - 1] == 47:
            return True
        if merge and p[i] == 47 and i > 0 and p[i - 1] == 47:
            return True
    return False


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _canonical_path(bytes path, bint normalize, bint merge):
    """Envoy's normalize_path (RFC 3986: unreserved %XX decoded, dot segments removed)
    and merge_slashes, on the path without its query. Rare path (config-enabled)."""
    if normalize:
        out = bytearray()
        i = 0
        while i < len(path):
            c = path[i]
            if c == 37 and i + 2 < len(path) + 0 and i + 2 <= len(path) - 1:
                try:
                    v = int(path[i + 1:i + 3], 16)
                except ValueError:
                    v = -1
                if v >= 0 and v in _UNRESERVED:
                    out.append(v)
                    i += 3
                    continue
                if v >= 0:
                    out += b"%" + path[i + 1:i + 3].upper()
                    i += 3
                    continue
            out.append(c)
            i += 1
        path = bytes(out)
    if merge:
        while b"//" in path:
            path = path.replace(b"//", b"/")
    if normalize:
        segs = []
        parts = path.split(b"/")
        for j, seg in enumerate(parts[1:]):
            last = j == len(parts) - 2
            if seg == b".":
                if last:
                    segs.append(b"")
            elif seg == b"..":
                if segs:
                    segs.pop()
                if last:
                    segs.append(b"")
            else:
                segs.append(seg)
        path = b"/" + b"/".join(segs)
    return path


def normalize_request_path(bytes data, Py_ssize_t off, int path_off, int path_len,
                           bint normalize, bint merge):
    """data with the request-target's path canonicalised, or None if unchanged."""
    target = data[off + path_off:off + path_off + path_len]
    q = target.find(b"?")
    path, query = (target, b"") if q < 0 else (target[:q], target[q:])
    new = _canonical_path(path, normalize, merge)
    if new == path:
        return None
    return data[off:off + path_off] + new + query + data[off + path_off + path_len:]


cdef bytes _fmt_address(host, port):
    host = host.decode() if isinstance(host, bytes) else str(host)
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}".encode()


cdef bytes _fmt_op(DownstreamConn s, str op, str arg):
    """One Envoy header command operator (see sofamesh.proxy.routes.FORMAT_OPERATORS)."""
    if op == "DOWNSTREAM_REMOTE_ADDRESS" or op == "DOWNSTREAM_DIRECT_REMOTE_ADDRESS":
        return _fmt_address(s.remote_ip, s.remote_port)
    if op == "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" or \
            op == "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT":
        return s.remote_ip
    if op == "DOWNSTREAM_LOCAL_ADDRESS" or op == "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT":
        local = s.transport.get_extra_info("sockname") if s.transport is not None else None
        if not local:
            return b""
        if op == "DOWNSTREAM_LOCAL_ADDRESS":
            return _fmt_address(local[0], local[1])
        return local[0].encode()
    if op == "PROTOCOL":
        return b"HTTP/1.1" if s.head.minor else b"HTTP/1.0"
    if op == "UPSTREAM_CLUSTER":
        return s.cluster.name.encode() if s.cluster is not None else b""
    if op == "UPSTREAM_HOST" or op == "UPSTREAM_REMOTE_ADDRESS":
        if s.host is None or s.t_upstream == 0:
            return b""      # request headers are formatted before a host is chosen
        return _fmt_address(s.host.address, s.host.port)
    if op == "REQ":
        name, _, limit = arg.partition(":")
        for alt in name.split("?"):
            alt = alt.strip().lower()
            if alt == ":authority":
                v = s.head.host()
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


cdef int _add_formatted(DownstreamConn s, tuple dyn, WriteBuf wb) except -1:
    """Header values with %OPERATORS%, evaluated for this request; Envoy leaves a header
    out when its value comes out empty."""
    cdef list out
    for name, parts in dyn:
        out = []
        for p in parts:
            out.append(p if isinstance(p, bytes) else _fmt_op(s, p[0], p[1]))
        v = b"".join(out)
        if v:
            wb.add_bytes(name)
            wb.add(": ", 2)
            wb.add_bytes(v)
            wb.add("\r\n", 2)
    return 0


cdef bytes _strip_port(bytes host):
    cdef Py_ssize_t i
    if host.endswith(b"]"):
        return host
    i = host.rfind(b":")
    return host[:i] if i > 0 else host


cdef inline bint _no_cl_method(Head h) noexcept:
    cdef const char* m = h.base
    cdef int n = h.method_len
    if n == 3:
        return m[0] == 71 and m[1] == 69 and m[2] == 84          # GET
    if n == 4:
        return m[0] == 72 and m[1] == 69 and m[2] == 65 and m[3] == 68     # HEAD
    if n == 5:
        return m[0] == 84 and m[1] == 82 and m[2] == 65 and m[3] == 67 and \
            m[4] == 69                                             # TRACE
    if n == 6:
        return m[0] == 68 and m[1] == 69 and m[2] == 76 and m[3] == 69 and \
            m[4] == 84 and m[5] == 69                              # DELETE
    if n == 7:
        return m[0] == 67 and m[1] == 79 and m[2] == 78            # CONNECT
    return False


cdef class HttpFilter:
    def __init__(self, str name="", bint wants_data=False, bint wants_encode=False):
        self.name = name
        self.wants_data = wants_data
        self.wants_encode = wants_encode

    cpdef int decode_headers(self, DownstreamConn s, bint end_stream) except -1:
        return FILTER_CONTINUE

    cpdef int decode_data(self, DownstreamConn s, bytes data, bint end_stream) except -1:
        return FILTER_CONTINUE

    cpdef int encode_headers(self, DownstreamConn s, int status, bint end_stream) except -1:
        return FILTER_CONTINUE

    cpdef int encode_data(self, DownstreamConn s, bytes data, bint end_stream) except -1:
        return FILTER_CONTINUE


cdef class HcmConfig:
    def __init__(self, loop, Store store, str stat_prefix, RouteTable routes, dict clusters,
                 filters=(), *, bint use_remote_address=False, bint generate_request_id=True,
                 bint accept_http_10=False, int max_head_bytes=60 * 1024,
                 int max_headers=100, int buffer_limit=1024 * 1024, upgrades=(),
                 bytes server_name=b"envoy", access_log=None, str listener_stat_name="",
                 double idle_timeout=3600.0, int server_mode=0, bint rid_in_response=False,
                 via=b"", bint skip_xff_append=False, bytes local_ip=b"127.0.0.1",
                 bint preserve_external_request_id=False, bint normalize_path=False,
                 bint merge_slashes=False, bint strip_any_host_port=False,
                 double request_timeout=0.0, double stream_idle_timeout=0.0,
                 tuple reply_map=None):
        cdef HttpFilter f
        self.loop = loop
        self.stat_prefix = stat_prefix
        self.routes = routes
        self.clusters = clusters
        self.filters = tuple(filters)
        self.any_encode = any(f.wants_encode for f in self.filters)
        self.any_data = any(f.wants_data for f in self.filters)
        self.use_remote_address = use_remote_address
        self.generate_request_id = generate_request_id
        self.accept_http_10 = accept_http_10
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
        self.buffer_limit = buffer_limit
        self.upgrades = frozenset(u.lower() for u in upgrades)
        self.server_line = b"server: " + server_name + b"\r\n"
        self.access_log = access_log
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.stream_idle_timeout = stream_idle_timeout
        self.reply_map = reply_map
        self.server_mode = server_mode
        self.rid_in_response = rid_in_response
        self.via_line = b"via: " + via + b"\r\n" if via else b""
        self.skip_xff_append = skip_xff_append
        self.local_ip = local_ip
        self.preserve_external_request_id = preserve_external_request_id
        self.normalize_path = normalize_path
        self.merge_slashes = merge_slashes
        self.strip_any_host_port = strip_any_host_port
        self.draining = False
        self.conns = set()
        self.listener_name = listener_stat_name
        p = f"http.{stat_prefix}."
        c = (<object>store).counter
        self.rq_total = c(p + "downstream_rq_total")
        self.rq_http1_total = c(p + "downstream_rq_http1_total")
        self.rq_1xx = c(p + "downstream_rq_1xx")
        self.rq_2xx = c(p + "downstream_rq_2xx")
        self.rq_3xx = c(p + "downstream_rq_3xx")
        self.rq_4xx = c(p + "downstream_rq_4xx")
        self.rq_5xx = c(p + "downstream_rq_5xx")
        self.rq_completed = c(p + "downstream_rq_completed")
        self.rq_rx_reset = c(p + "downstream_rq_rx_reset")
        self.rq_tx_reset = c(p + "downstream_rq_tx_reset")
        self.rq_timeout = c(p + "downstream_rq_timeout")
        self.rq_ws_on_non_ws_route = c(p + "downstream_rq_ws_on_non_ws_route")
        self.rq_response_before_rq_complete = c(p + "downstream_rq_response_before_rq_complete")
        self.rq_header_overflow = c(p + "downstream_rq_header_overflow")
        self.rq_overload_close = c(p + "downstream_rq_overload_close")
        self.cx_total = c(p + "downstream_cx_total")
        self.cx_http1_total = c(p + "downstream_cx_http1_total")
        self.cx_destroy = c(p + "downstream_cx_destroy")
        self.cx_destroy_remote = c(p + "downstream_cx_destroy_remote")
        self.cx_destroy_local = c(p + "downstream_cx_destroy_local")
        self.cx_protocol_error = c(p + "downstream_cx_protocol_error")
        self.cx_rx_bytes_total = c(p + "downstream_cx_rx_bytes_total")
        self.cx_tx_bytes_total = c(p + "downstream_cx_tx_bytes_total")
        self.cx_upgrades_total = c(p + "downstream_cx_upgrades_total")
        self.cx_drain_close = c(p + "downstream_cx_drain_close")
        self.cx_idle_timeout = c(p + "downstream_cx_idle_timeout")
        self.rq_idle_timeout = c(p + "downstream_rq_idle_timeout")
        self.no_route = c(p + "no_route")
        self.no_cluster = c(p + "no_cluster")
        self.rq_direct_response = c(p + "rq_direct_response")
        self.rq_redirect = c(p + "rq_redirect")
        self.cx_active = store.gauge(p + "downstream_cx_active")
        self.cx_http1_active = store.gauge(p + "downstream_cx_http1_active")
        self.rq_active = store.gauge(p + "downstream_rq_active")
        self.cx_upgrades_active = store.gauge(p + "downstream_cx_upgrades_active")
        self.rq_time = store.histogram(p + "downstream_rq_time")
        lp = f"listener.{listener_stat_name}." if listener_stat_name else "listener.unnamed."
        self.listener_cx_total = c(lp + "downstream_cx_total")
        self.listener_cx_active = store.gauge(lp + "downstream_cx_active")

    def protocol_factory(self):
        return DownstreamConn(self)


cdef class DownstreamConn:
    def __cinit__(self, HcmConfig cfg):
        self.cfg = cfg
        self.state = DS_HEAD
        self.pending = None
        self.head = Head()
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
        transport.set_write_buffer_limits(high=cfg.buffer_limit)
        peer = transport.get_extra_info("peername")
        if peer:
            self.remote_ip = peer[0].encode()
            self.remote_port = peer[1]
            # Envoy appends its own address to x-forwarded-for for a loopback peer
            self.xff_ip = cfg.local_ip if (self.remote_ip.startswith(b"127.") or
                                           self.remote_ip == b"::1") else self.remote_ip
        cfg.cx_total.inc()
        cfg.cx_http1_total.inc()
        cfg.cx_active.inc()
        cfg.cx_http1_active.inc()
        cfg.listener_cx_total.inc()
        cfg.listener_cx_active.inc()
        cfg.conns.add(self)
        self._arm_idle()

    def data_received(self, bytes data):
        self.cfg.cx_rx_bytes_total.add(PyBytes_GET_SIZE(data))
        if self.state == DS_TUNNEL:
            if self.up is not None and self.up.transport is not None:
                self.up.transport.write(data)
            else:
                self._send_up(data)
            return
        if self.state == DS_CLOSED:
            return
        if self.pending is not None:
            data = self.pending + data
            self.pending = None
        try:
            self._process(data, 0)
        except Exception as exc:       # a bug must not take the process down: count, close
            self._internal_error(exc)

    def eof_received(self):
        # A client FIN closes the connection and resets an in-flight request, as Envoy
        # does for HTTP/1.1 (no half-close support on HTTP streams).
        return False

    def connection_lost(self, exc):
        cdef HcmConfig cfg = self.cfg
        cdef UpstreamConn u
        if self.state == DS_CLOSED and self.transport is None:
            return
        prev = self.state
        self.state = DS_CLOSED
        cfg.cx_active.dec()
        cfg.cx_http1_active.dec()
        cfg.listener_cx_active.dec()
        cfg.cx_destroy.inc()
        if self.close_after or prev == DS_CLOSED:
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
            if self.host is not None:
                try:
                    self.host.waiting.remove(self)
                    self.cluster.pending_active -= 1
                    self.cluster.upstream_rq_pending_active.dec()
                except ValueError:
                    pass
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
        if self.retry_timer is not None:
            self.retry_timer.cancel()
            self.retry_timer = None
            self.cluster.retries_active -= 1
        self.transport = None

    def pause_writing(self):
        # our client reads slower than the upstream sends: stop reading the upstream
        if self.up is not None and self.up.transport is not None:
            self.up.transport.pause_reading()

    def resume_writing(self):
        if self.up is not None and self.up.transport is not None:
            self.up.transport.resume_reading()

    # request path -----------------------------------------------------------------------
    cdef int _process(self, bytes data, Py_ssize_t off) except -1:
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data), k, fw
        cdef int r
        cdef HcmConfig cfg = self.cfg
        while off < n:
            if self.state == DS_HEAD:
                r = parse_request(self.head, data, off, cfg.max_head_bytes, cfg.max_headers)
                if r == 0:
                    self.pending = data[off:] if off else data
                    return 0
                if r == H1_E_OBS_FOLD:
                    data = unfold_head(data, self.head.start, self.head.length)
                    off = 0
                    n = PyBytes_GET_SIZE(data)
                    continue
                if r > 0 and (cfg.normalize_path or cfg.merge_slashes) and \
                        _needs_normalizing(self.head, cfg.merge_slashes):
                    fixed = normalize_request_path(data, self.head.start, self.head.path_off,
                                                   self.head.path_len, cfg.normalize_path,
                                                   cfg.merge_slashes)
                    if fixed is not None:
                        data = fixed
                        off = 0
                        n = PyBytes_GET_SIZE(data)
                        continue
                if r < 0:
                    return self._error_reply(r)
                off += r
                self.more_data = off < n
                self._on_head()
                self.more_data = False
            elif self.state == DS_BODY or self.state == DS_DRAIN:
                k = self.body.feed(PyBytes_AS_STRING(data) + off, n - off)
                if k < 0:
                    cfg.cx_protocol_error.inc()
                    if self.resp_started:
                        return self._reset()
                    self.resp_flags = "DPE"
                    return self._local_reply(400, b"Bad Request", b"", True)
                if self.state == DS_BODY and k > 0:
                    self.bytes_rx += k
                    if cfg.stream_idle_timeout > 0:
                        self.idle_due = mono() + cfg.stream_idle_timeout
                    fw = self.body.fwd
                    if fw > 0:
                        self._send_up(data if (off == 0 and fw == n) else data[off:off + fw])
                    if self.body.done and self.body.trailers_dropped:
                        self._send_up(b"\r\n")
                off += k
                if self.body.chunks is not None and self.state == DS_BODY:
                    self._data_filters(self.body, False)
                    if self.state == DS_CLOSED:
                        return 0
                if self.body.done:
                    if self.state == DS_DRAIN:
                        self.state = DS_HEAD
                    else:
                        self._request_complete()
            elif self.state == DS_WAIT:
                # pipelined request: keep it until this response is done
                self.pending = data[off:] if off else data
                if PyBytes_GET_SIZE(self.pending) > cfg.buffer_limit:
                    self._pause(P_PIPELINE)
                return 0
            elif self.state == DS_TUNNEL:
                self._send_up(data[off:] if off else data)
                return 0
            else:
                return 0
        return 0

    cdef int _data_filters(self, BodyReader body, bint encode) except -1:
        """Hands the decoded payload to filters that asked for data (observe, or reply
        locally to abort); the bytes themselves already went on as they came."""
        cdef HttpFilter f
        cdef list chunks = body.chunks
        cdef Py_ssize_t i, j, nf = len(self.cfg.filters)
        cdef bint end
        if not chunks and not body.done:
            return 0
        body.chunks = []
        if not chunks:
            chunks = [b""]
        for i in range(len(chunks)):
            end = body.done and i == len(chunks) - 1
            for j in range(nf):
                f = self.cfg.filters[nf - 1 - j] if encode else self.cfg.filters[j]
                if not f.wants_data:
                    continue
                if encode:
                    f.encode_data(self, chunks[i], end)
                else:
                    f.decode_data(self, chunks[i], end)
                if self.state == DS_CLOSED or (not encode and self.resp_started and
                                               self.up is None):
                    return 0
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
        cdef Head h = self.head
        cdef int fr
        self.in_request = True
        self.t_start = mono()
        self.resp_started = False
        self.resp_chunk_encode = False
        self.req_done = False
        self.close_after = False
        self.drop_pipelined = False
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
        self.request_id = None
        if self.shadows is not None:
            self._drop_shadows()
        self.try_deadline = 0
        self.t_upstream = 0
        self.service_ms = -1
        self.upstream_host = "-"
        if self.req_add_extra is not None:
            self.req_add_extra = None
            self.resp_add_extra = None
            self.req_remove_extra = None
            self.filter_state = None
        cfg.rq_total.inc()
        cfg.rq_http1_total.inc()
        cfg.rq_active.inc()
        if cfg.access_log is not None:
            self.wall_start = cfg.loop.time()
        if cfg.request_timeout > 0 or cfg.stream_idle_timeout > 0:
            self.rq_due = self.t_start + cfg.request_timeout if cfg.request_timeout > 0 else 0
            self.idle_due = self.t_start + cfg.stream_idle_timeout \
                if cfg.stream_idle_timeout > 0 else 0
            self._arm_stream_timer()
        fr = h.framing()
        self.body.start(fr, h.content_length)
        self.body.chunks = [] if cfg.any_data else None
        self.state = DS_BODY if fr != FR_NONE else DS_WAIT
        if fr == FR_NONE:
            self.req_done = True
        if h.conn_close or (h.minor == 0 and not h.conn_keep_alive) or cfg.draining:
            self.close_after = True
        if h.method_len == 7 and h.base[0] == 67 and h.base[1] == 79 and h.base[2] == 78:
            self.close_after = True     # CONNECT: the connection is never reused (Envoy)
        if h.minor == 0 and not cfg.accept_http_10:
            self.close_after = True
            cfg.cx_protocol_error.inc()
            return self._local_reply(426, b"Upgrade Required", b"", True)
        if h.host_idx < 0 and h.abs_host_len == 0 and h.minor == 1:
            return self._local_reply(400, b"", b"", True)
        if h.conn_upgrade and h.upgrade_idx >= 0:
            self.upgrade = True
        if h.expect_continue and fr != FR_NONE:
            # Envoy answers 100-continue itself and does not forward Expect.
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            cfg.rq_1xx.inc()
        self.route = cfg.routes.route(h)
        if self.upgrade:
            up = h.value_at(h.upgrade_idx).lower()
            if up not in cfg.upgrades and (self.route is None or up not in self.route.upgrades):
                cfg.rq_ws_on_non_ws_route.inc()
                return self._local_reply(403, b"", b"", True)
            cfg.cx_upgrades_total.inc()
            cfg.cx_upgrades_active.inc()
        self.fidx = 0
        return self._decode_continue()

    cdef int _decode_continue(self) except -1:
        cdef HcmConfig cfg = self.cfg
        cdef HttpFilter f
        cdef tuple filters = cfg.filters
        cdef int r
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
            wb.add_bytes(_strip_port(h.host()) if cfg.strip_any_host_port else h.host())
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
        elif h.content_length < 0 and not self.upgrade and not _no_cl_method(h):
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
            _add_formatted(self, route.req_dyn, wb)
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
            shead = _shadow_head(self.up_head, cfg.local_ip, not no_suffix)
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
        cdef UpstreamConn u = self.up
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
            u.transport.write(data)
            self.cluster.upstream_cx_tx_bytes_total.add(n)
        else:
            self.up_queue.append(data)
            self.up_queued += n
            if self.up_queued > self.cfg.buffer_limit:
                self._pause(P_QUEUE)
        return 0

    cdef int _flush_up(self) except -1:
        cdef UpstreamConn u = self.up
        cdef bytes b
        if not self.up_queue:
            return 0
        if len(self.up_queue) == 1:
            b = self.up_queue[0]
        else:
            b = b"".join(self.up_queue)
        self.up_queue = []
        self.up_queued = 0
        u.transport.write(b)
        self.cluster.upstream_cx_tx_bytes_total.add(PyBytes_GET_SIZE(b))
        self._resume(P_QUEUE)
        return 0

    cdef int _assign(self, Host host) except -1:
        cdef Cluster cl = self.cluster
        if host is None:
            host = cl.choose()
        cdef UpstreamConn c
        if host is None:
            cl.upstream_cx_none_healthy.inc()
            return self._fail(F_NO_HEALTHY, None)
        self.host = host
        while host.idle:
            c = host.idle.pop()
            if c.connected and not c.closed:
                return self._attach(c)
        if cl.cx_active < cl.max_connections:
            c = UpstreamConn(cl, host, self.cfg.loop)
            cl.upstream_rq_pending_total.inc()
            return self._attach(c)
        cl.upstream_cx_overflow.inc()
        if cl.pending_active >= cl.max_pending:
            cl.upstream_rq_pending_overflow.inc()
            return self._fail(F_OVERFLOW, None)
        cl.upstream_rq_pending_total.inc()
        cl.pending_active += 1
        cl.upstream_rq_pending_active.inc()
        host.waiting.append(self)
        return 0

    cdef int _attach(self, UpstreamConn c) except -1:
        cdef Host host = c.host
        self.up = c
        self._resume(P_UPSTREAM_FULL)     # a retry: the previous connection's pause is moot
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

    cdef int _fail(self, int kind, UpstreamConn c) except -1:
        cdef Cluster cl = self.cluster
        cdef bytes body, reason
        cdef bytes extra = b""
        cdef int code = 503
        if self.host is not None and c is not None:
            self.host.rq_active -= 1
        if c is not None:
            self.up = None
        if kind == F_CONNECT_FAIL or kind == F_CONNECT_TIMEOUT:
            if self._can_retry(RETRY_CONNECT_FAILURE | RETRY_RESET | RETRY_5XX |
                               RETRY_GATEWAY):
                return self._schedule_retry()
        elif kind == F_RESET or kind == F_PROTOCOL:
            if self._can_retry(RETRY_RESET | RETRY_5XX | RETRY_GATEWAY):
                return self._schedule_retry()
        if self.resp_started:
            return self._reset()
        if self.host is not None:
            self.host.rq_error += 1
        if cl is not None and kind != F_NO_HEALTHY:
            cl.count_status(504 if kind == F_TIMEOUT else 502 if kind == F_PROTOCOL else 503)
        if kind == F_NO_HEALTHY:
            self.resp_flags = "UH"
            return self._local_reply(503, b"no healthy upstream", b"", not self.req_done)
        if kind == F_TIMEOUT:
            self.resp_flags = "UT"
            return self._local_reply(504, b"upstream request timeout", b"", not self.req_done)
        if kind == F_OVERFLOW:
            self.resp_flags = "UO"
            reason = b"overflow"
            extra = b"x-envoy-overloaded: true\r\n"
        elif kind == F_CONNECT_FAIL:
            self.resp_flags = "UF"
            reason = b"remote connection failure"
        elif kind == F_CONNECT_TIMEOUT:
            self.resp_flags = "UF"
            reason = b"connection timeout"
        elif kind == F_PROTOCOL:
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

    cdef int _arm_stream_timer(self) except -1:
        cdef double due = self.rq_due
        if self.idle_due > 0 and (due == 0 or self.idle_due < due):
            due = self.idle_due
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
                self._local_reply(408, b"request timeout", b"", True)
            elif self.idle_due > 0 and now + 0.0005 >= self.idle_due:
                cfg.rq_idle_timeout.inc()
                self.resp_flags = "SI"
                if self.resp_started:
                    self._reset()
                else:
                    self._abandon_upstream()
                    if self.req_done:
                        self._local_reply(504, b"stream timeout", b"", False)
                    else:
                        self._local_reply(408, b"stream timeout", b"", True)
            else:
                self._arm_stream_timer()
        except Exception as exc:
            self._internal_error(exc)

    def _abandon_upstream(self):
        """The stream ends before its upstream answered: no retry, no place in a queue."""
        if self.retry_timer is not None:
            self.retry_timer.cancel()
            self.retry_timer = None
            self.cluster.retries_active -= 1
        if self.host is not None and self.up is None:
            try:
                self.host.waiting.remove(self)
                self.cluster.pending_active -= 1
                self.cluster.upstream_rq_pending_active.dec()
            except ValueError:
                pass

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
                (<UpstreamConn>u).ds = None
                (<UpstreamConn>u).abort()
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
            (<UpstreamConn>u).ds = None
            (<UpstreamConn>u).abort()
        if self.retry_timer is not None:
            self.retry_timer.cancel()
            self.retry_timer = None
            self.cluster.retries_active -= 1
        if self.host is not None:
            try:
                self.host.waiting.remove(self)
                self.cluster.pending_active -= 1
                self.cluster.upstream_rq_pending_active.dec()
            except ValueError:
                pass
        try:
            if self.resp_started:
                self.resp_flags = "UT"
                self._reset()
            else:
                self._fail(F_TIMEOUT, None)
        except Exception as exc:
            self._internal_error(exc)

    # response path ----------------------------------------------------------------------
    cdef bint _on_upstream_head(self, UpstreamConn c, Head rh, int framing) except -1:
        cdef HcmConfig cfg = self.cfg
        cdef Route route = self.route
        cdef WriteBuf wb = self.wb
        cdef int status = rh.status, i, k, rbit = 0
        cdef h1_hdr* hd
        cdef HttpFilter f
        cdef Py_ssize_t j
        cdef bint up_server = False
        if status >= 500:
            rbit = RETRY_5XX
            if status == 502 or status == 503 or status == 504:
                rbit |= RETRY_GATEWAY
        elif status == 409:
            rbit = RETRY_RETRIABLE_4XX
        if route.retry_statuses and status in route.retry_statuses:
            rbit |= RETRY_STATUS_CODES
        if rbit and self._can_retry(rbit):
            self.host.rq_active -= 1
            self.up = None
            c.ds = None
            c.abort()
            self._schedule_retry()
            return False
        if self.attempts > 1 and not rbit:
            self.cluster.upstream_rq_retry_success.inc()
        self.try_deadline = 0
        self.resp_status = status
        self.service_ms = <int>((mono() - self.t_upstream) * 1000)
        if cfg.any_encode:
            for j in range(len(cfg.filters) - 1, -1, -1):
                f = cfg.filters[j]
                if f.wants_encode:
                    f.encode_headers(self, status, framing == FR_NONE)
        if not self.req_done:
            self.close_after = True
            cfg.rq_response_before_rq_complete.inc()
        if cfg.draining and not self.close_after:
            self.close_after = True
            cfg.cx_drain_close.inc()
        if status == 101 and self.upgrade:
            framing = FR_NONE
        elif framing == FR_EOF:
            if self.head.minor == 1:
                self.resp_chunk_encode = True
            else:
                self.close_after = True
        wb.add("HTTP/1.1 " if self.head.minor else "HTTP/1.0 ", 9)
        wb.add(rh.base + 9, 3)
        wb.add(" ", 1)
        wb.add_bytes(REASONS.get(status, b"Unknown"))
        wb.add("\r\n", 2)
        for i in range(rh.nhdr):
            hd = &rh.hdrs[i]
            k = hd.kind
            if k != HK_OTHER:
                if k == HK_KEEP_ALIVE or k == HK_PROXY_CONNECTION or \
                        k == HK_TRANSFER_ENCODING or k == HK_DATE:
                    continue
                if k == HK_SERVER:
                    if cfg.server_mode == SERVER_OVERWRITE:
                        continue
                    up_server = True
                if (k == HK_UPGRADE or k == HK_CONNECTION) and \
                        not (status == 101 and self.upgrade):
                    continue
            if rh.ntok and rh.nominated(i):
                continue
            if route.resp_remove and rh.name_at(i) in route.resp_remove:
                continue
            wb.add(rh.base + hd.name_off, hd.value_off + hd.value_len - hd.name_off)
            wb.add("\r\n", 2)
        if cfg.server_mode == SERVER_OVERWRITE or \
                (cfg.server_mode == SERVER_APPEND_IF_ABSENT and not up_server):
            wb.add_bytes(cfg.server_line)
        wb.add_bytes(date_line())
        if cfg.via_line:
            wb.add_bytes(cfg.via_line)
        if cfg.rid_in_response and self.request_id is not None:
            wb.add("x-request-id: ", 14)
            wb.add_bytes(self.request_id)
            wb.add("\r\n", 2)
        if status != 101 or not self.upgrade:
            wb.add("x-envoy-upstream-service-time: ", 31)
            wb.add_uint(self.service_ms)
            wb.add("\r\n", 2)
        if route.resp_add:
            wb.add_bytes(route.resp_add)
        if route.resp_dyn:
            _add_formatted(self, route.resp_dyn, wb)
        if self.resp_add_extra is not None:
            for line in self.resp_add_extra:
                wb.add_bytes(line)
        if framing == FR_CHUNKED or self.resp_chunk_encode:
            wb.add("transfer-encoding: chunked\r\n", 28)
        if self.close_after and status != 101:
            wb.add("connection: close\r\n", 19)
        wb.add("\r\n", 2)
        self.resp_started = True
        # PERF(benchmarks/http1_e2e.py): the head waits for the first body bytes so a small
        # response leaves in one write(2) instead of two.
        self.out_head = wb.take()
        self.cluster.count_status(status)
        if status == 101 and self.upgrade:
            self._flush_out()
            self.state = DS_TUNNEL
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
        return True

    cdef int _write(self, bytes data) except -1:
        cdef bytes h = self.out_head
        if h is not None:
            self.out_head = None
            if PyBytes_GET_SIZE(data) <= 32768:
                data = h + data
            elif self.transport is not None:
                self.transport.write(h)
                self.cfg.cx_tx_bytes_total.add(PyBytes_GET_SIZE(h))
        if self.transport is not None:
            self.transport.write(data)
            self.cfg.cx_tx_bytes_total.add(PyBytes_GET_SIZE(data))
        return 0

    cdef int _flush_out(self) except -1:
        cdef bytes h = self.out_head
        if h is not None:
            self.out_head = None
            if self.transport is not None:
                self.transport.write(h)
                self.cfg.cx_tx_bytes_total.add(PyBytes_GET_SIZE(h))
        return 0

    cdef int _on_upstream_body(self, bytes data) except -1:
        cdef WriteBuf wb
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        self.bytes_tx += n
        if self.resp_chunk_encode:
            wb = self.wb
            wb.add_hex(n)
            wb.add("\r\n", 2)
            if n <= 32768:
                wb.add_bytes(data)
                wb.add("\r\n", 2)
                self._write(wb.take())
            else:
                self._write(wb.take())
                self._write(data)
                self._write(b"\r\n")
        else:
            self._write(data)
        return 0

    cdef int _on_upstream_complete(self, UpstreamConn c) except -1:
        if self.resp_chunk_encode:
            self._write(b"0\r\n\r\n")
        else:
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
        return self._finish()

    cdef int _end_request_stats(self, int status) except -1:
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
        if cl is not None:
            cl.rq_active -= 1
            cl.upstream_rq_active.dec()
            cl.upstream_rq_completed.inc()
            if self.service_ms >= 0:
                cl.upstream_rq_time.record(self.service_ms)
        if cfg.access_log is not None:
            if self.request_id is None and cfg.generate_request_id and \
                    self.resp_flags != "DPE" and self.head.xrid_idx < 0:
                # Envoy gives every request an id before routing; a local reply's log
                # line carries it too
                self.request_id = uuid4()
            try:
                cfg.access_log.log(self, ms)
            except Exception:
                pass
        return 0

    cdef int _finish(self) except -1:
        """The response is complete: account, then serve the next pipelined request."""
        cdef bytes p
        if self.state == DS_TUNNEL:
            return 0
        self._end_request_stats(self.resp_status)
        if self.close_after or self.cfg.draining:
            if self.drop_pipelined:
                # the pipelined request behind is dropped unanswered; Envoy had begun it
                self.cfg.rq_total.inc()
                self.cfg.rq_http1_total.inc()
            self.state = DS_CLOSED
            if self.transport is not None:
                self.transport.close()
            return 0
        if self.state == DS_WAIT:
            self.state = DS_HEAD
        elif self.state == DS_BODY:
            self.state = DS_DRAIN
        # The upstream connection that was full is gone (pooled, aborted or failed): its
        # resume_writing would go to another stream, so nothing else clears this pause and
        # the next request on this connection would never be read.
        self._resume(P_UPSTREAM_FULL)
        self._arm_idle()
        if self.pending is not None:
            p = self.pending
            self.pending = None
            self._resume(P_PIPELINE)
            if self.state == DS_HEAD or self.state == DS_DRAIN:
                self._process(p, 0)
        return 0

    cdef int _local_reply(self, int code, bytes body, bytes extra, bint close) except -1:
        cdef WriteBuf wb = self.wb
        cdef HcmConfig cfg = self.cfg
        cdef int op, value, new_status
        if self.resp_started:
            return self._reset()
        if cfg.reply_map is not None:
            # local_reply_config: the first mapper matching the status rewrites the reply
            for op, value, new_status, new_body in cfg.reply_map:
                if op < 0 or (op == 0 and code == value) or (op == 1 and code >= value) or \
                        (op == 2 and code <= value) or (op == 3 and code != value):
                    if new_status:
                        code = new_status
                    if new_body is not None:
                        body = new_body
                    break
        if self.up is not None:
            u = self.up
            self.up = None
            (<UpstreamConn>u).ds = None
            (<UpstreamConn>u).abort()
            if self.host is not None:
                self.host.rq_active -= 1
        # Envoy does not keep a connection whose request body it did not read; one with
        # pipelined requests behind a local reply it closes after the reply, without
        # announcing it (observed with Envoy 1.40, tests/integration/differential).
        cdef bint announce = close or cfg.draining or not self.req_done or self.close_after
        if announce or self.more_data or self.pending is not None:
            self.close_after = True
            self.drop_pipelined = not announce
        self.resp_status = code
        self.resp_started = True
        wb.add("HTTP/1.1 " if self.head.minor or code == 426 else "HTTP/1.0 ", 9)
        wb.add_uint(code)
        wb.add(" ", 1)
        wb.add_bytes(REASONS.get(code, b"Unknown"))
        wb.add("\r\n", 2)
        if body:
            wb.add("content-length: ", 16)
            wb.add_uint(PyBytes_GET_SIZE(body))
            wb.add("\r\ncontent-type: text/plain\r\n", 28)
        wb.add_bytes(date_line())
        if cfg.server_mode != SERVER_PASS_THROUGH:
            wb.add_bytes(cfg.server_line)
        if extra:
            wb.add_bytes(extra)
        if self.resp_add_extra is not None:
            for line in self.resp_add_extra:
                wb.add_bytes(line)
        if announce:
            wb.add("connection: close\r\n", 19)
        if not body:
            wb.add("content-length: 0\r\n", 19)
        wb.add("\r\n", 2)
        if body and not self.head.is_head_method:
            wb.add_bytes(body)
        self.bytes_tx = PyBytes_GET_SIZE(body)
        self._write(wb.take())
        if self.state == DS_DRAIN and not self.body.done:
            self._end_request_stats(code)
            return 0
        if self.state == DS_BODY:
            self.state = DS_WAIT
        return self._finish()

    cdef int _error_reply(self, int err) except -1:
        cdef HcmConfig cfg = self.cfg
        # A malformed request still counts as a request, as in Envoy.
        self.in_request = True
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
        self.state = DS_WAIT
        self.pending = None
        if err == H1_E_BAD_TARGET:
            return self._local_reply(400, b"", b"", True)
        cfg.cx_protocol_error.inc()
        if err == H1_E_TOO_LARGE or err == H1_E_TOO_MANY:
            cfg.rq_header_overflow.inc()
            return self._local_reply(431, b"Request Header Fields Too Large", b"", True)
        if err == H1_E_NOT_IMPL:
            return self._local_reply(501, b"Not Implemented", b"", True)
        return self._local_reply(400, b"Bad Request", b"", True)

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
            (<UpstreamConn>u).ds = None
            (<UpstreamConn>u).abort()
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

    # stream API for filters --------------------------------------------------------------
    @property
    def method(self):
        return self.head.method()

    @property
    def path(self):
        return self.head.path()

    @property
    def authority(self):
        return self.head.host()

    @property
    def protocol(self):
        return "HTTP/1.1" if self.head.minor == 1 else "HTTP/1.0"

    @property
    def config(self):
        return self.cfg

    @property
    def downstream_remote_address(self):
        return (self.remote_ip.decode(), self.remote_port)

    def get_request_header(self, name):
        if isinstance(name, str):
            name = name.encode("latin-1")
        cdef bytes b = name
        cdef int i = self.head.find(b, <int>len(b))
        if i < 0 or self.head.hdrs[i].skip:
            return None
        return self.head.value_at(i)

    def request_headers(self):
        cdef Head h = self.head
        return [(h.name_at(i), h.value_at(i)) for i in range(h.nhdr) if not h.hdrs[i].skip]

    def add_request_header(self, name, value):
        if isinstance(name, str):
            name = name.encode("latin-1")
        if isinstance(value, str):
            value = value.encode("latin-1")
        if self.req_add_extra is None:
            self._init_extra()
        self.req_add_extra.append(name + b": " + value + b"\r\n")

    def remove_request_header(self, name):
        if isinstance(name, str):
            name = name.encode("latin-1")
        if self.req_add_extra is None:
            self._init_extra()
        self.req_remove_extra.add(name.lower())

    def add_response_header(self, name, value):
        if isinstance(name, str):
            name = name.encode("latin-1")
        if isinstance(value, str):
            value = value.encode("latin-1")
        if self.req_add_extra is None:
            self._init_extra()
        self.resp_add_extra.append(name + b": " + value + b"\r\n")

    def _init_extra(self):
        self.req_add_extra = []
        self.resp_add_extra = []
        self.req_remove_extra = set()
        self.filter_state = {}

    def route_filter_config(self, str name):
        if self.route is None:
            return None
        return self.route.filter_config.get(name)

    def send_local_reply(self, int code, body=b"", headers=(), str flags=""):
        """Replies without the upstream (a filter denying a request, say)."""
        if isinstance(body, str):
            body = body.encode()
        extra = b"".join((k.encode() if isinstance(k, str) else k) + b": " +
                         (v.encode() if isinstance(v, str) else v) + b"\r\n"
                         for k, v in headers)
        if flags:
            self.resp_flags = flags
        self._local_reply(code, body, extra, False)

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


cdef bytes _shadow_host(bytes host):
    """Envoy's shadow authority: `-shadow` after the host name, before any port
    (`a.b:8080` -> `a.b-shadow:8080`)."""
    cdef Py_ssize_t i = host.rfind(b":")
    if i > 0 and host.find(b"]", i) < 0 and host[i + 1:].isdigit():
        return host[:i] + b"-shadow" + host[i:]
    return host + b"-shadow"


cdef bytes _shadow_head(bytes head, bytes local_ip, bint suffix):
    """The mirror's head: the upstream head as rendered for the main request, sent the way
    Envoy's async client sends it (x-envoy-internal: true, this node's address appended to
    x-forwarded-for) with the authority suffixed unless disable_shadow_host_suffix_append."""
    cdef list lines = head[:-4].split(b"\r\n")
    cdef list out = [lines[0]]
    cdef bytes xff = None
    for i in range(1, len(lines)):
        ln = lines[i]
        name, _, val = ln.partition(b":")
        lname = name.strip().lower()
        if lname == b"host":
            if suffix:
                ln = b"host: " + _shadow_host(val.strip())
        elif lname == b"x-forwarded-for":
            xff = val.strip() if xff is None else xff + b"," + val.strip()
            continue
        elif lname == b"x-envoy-internal":
            continue
        out.append(ln)
    out.append(b"x-forwarded-for: " + (xff + b"," if xff else b"") + local_ip)
    out.append(b"x-envoy-internal: true")
    return b"\r\n".join(out) + b"\r\n\r\n"


cdef class ShadowConn:
    """One mirrored request on its own connection to a host of the mirror cluster. The
    response is read and discarded; nothing here can delay or fail the main request. At
    most `limit` bytes wait (for the connect or in the socket's write buffer): a mirror
    that cannot keep up is reset (counted as the cluster's upstream_rq_tx_reset) instead
    of buffering without bound or slowing the client down."""
    cdef Cluster cluster
    cdef Host host
    cdef object loop, transport, task, timer
    cdef list queue
    cdef Py_ssize_t queued
    cdef Py_ssize_t limit
    cdef readonly bint closed
    cdef bint connected, head_req, in_rq, resp_done
    cdef Head rhead
    cdef BodyReader body
    cdef int rstate                 # 0: head, 1: body
    cdef bytes pending
    cdef double t0

    def __cinit__(self, Cluster cluster, loop, bytes head, bint head_req, double timeout,
                  Py_ssize_t limit):
        cdef Host host
        self.cluster = cluster
        self.loop = loop
        self.head_req = head_req
        self.limit = limit if limit > 0 else 1048576
        self.queue = [head]
        self.queued = PyBytes_GET_SIZE(head)
        self.t0 = mono()
        cluster.upstream_rq_total.inc()
        if cluster.rq_active >= cluster.max_requests:
            cluster.upstream_rq_pending_overflow.inc()
            self.closed = True
            return
        host = cluster.choose()
        if host is None:
            cluster.upstream_cx_none_healthy.inc()
            self.closed = True
            return
        if cluster.cx_active >= cluster.max_connections:
            cluster.upstream_cx_overflow.inc()
            cluster.upstream_rq_pending_overflow.inc()
            self.closed = True
            return
        self.host = host
        self.in_rq = True
        cluster.rq_active += 1
        cluster.upstream_rq_active.inc()
        host.rq_active += 1
        host.rq_total += 1
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
                self.loop.create_connection(lambda: self, self.host.address, self.host.port),
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
        if self.in_rq:
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
        if self.host is not None:
            self.host = None
            cl.cx_active -= 1
            host.cx_active -= 1
            cl.upstream_cx_active.dec()
            cl.upstream_cx_destroy.inc()
        return 0

    cdef int send(self, bytes data) except -1:
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


cdef class UpstreamConn:
    def __cinit__(self, Cluster cluster, Host host, loop):
        self.cluster = cluster
        self.host = host
        self.loop = loop
        self.head = Head()
        self.body = BodyReader()
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
                self.loop.create_connection(lambda: self, self.host.address, self.host.port),
                cl.connect_timeout)
        except asyncio.TimeoutError:
            cl.upstream_cx_connect_timeout.inc()
            self._connect_failed(F_CONNECT_TIMEOUT)
        except OSError:
            self._connect_failed(F_CONNECT_FAIL)
        except asyncio.CancelledError:
            self._connect_failed(-1)
        else:
            cl.upstream_cx_connect_ms.record((mono() - t0) * 1000.0)
        finally:
            self.task = None

    def _connect_failed(self, int kind):
        cdef DownstreamConn d = self.ds
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
                d._fail(kind if kind >= 0 else F_RESET, self)
            except Exception as exc:
                d._internal_error(exc)
        self._serve_waiting_after_failure()

    def _serve_waiting_after_failure(self):
        # Requests queued on the host behind a failed connect would otherwise wait forever.
        cdef Host host = self.host
        cdef DownstreamConn w
        cdef Cluster cl = self.cluster
        while host.waiting and cl.cx_active < cl.max_connections:
            w = host.waiting.popleft()
            cl.pending_active -= 1
            cl.upstream_rq_pending_active.dec()
            if w.state != DS_CLOSED and w.in_request:
                w._attach(UpstreamConn(cl, host, self.loop))

    cdef void _gone(self):
        cdef Cluster cl = self.cluster
        cl.cx_active -= 1
        self.host.cx_active -= 1
        cl.upstream_cx_active.dec()
        cl.upstream_cx_destroy.inc()

    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(high=self.cluster.per_connection_buffer_limit)
        if self.closed:         # timed out or cancelled meanwhile
            transport.abort()
            return
        self.connected = True
        if self.ds is not None:
            self.state = US_HEAD
            self.ds._flush_up()
        else:
            self.state = US_IDLE
            self.release()

    cdef int start(self, DownstreamConn ds, bint head_req, bint upgrade) except -1:
        self.ds = ds
        self.head_req = head_req
        self.upgrade = upgrade
        self.pending = None
        if self.connected:
            self.state = US_HEAD
        return 0

    cdef int release(self) except -1:
        cdef Host host = self.host
        cdef DownstreamConn w
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
            if w.state != DS_CLOSED and w.in_request:
                return w._attach(self)
        if host.removed:
            return self.abort()
        host.idle.append(self)
        return 0

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

    def close(self):
        self.abort()

    def data_received(self, bytes data):
        cdef DownstreamConn d = self.ds
        if d is not None and d.cfg.stream_idle_timeout > 0:
            d.idle_due = mono() + d.cfg.stream_idle_timeout
        self._feed(d, data)
        if d is not None and d.out_head is not None:
            d._flush_out()

    cdef int _feed(self, DownstreamConn d, bytes data) except -1:
        cdef Py_ssize_t off = 0, n, k, fw
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
                        d._fail(F_PROTOCOL, self)
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
                    self.body.start(framing, self.head.content_length)
                    self.body.chunks = [] if d.cfg.any_data else None
                    self.state = US_BODY
                    if not d._on_upstream_head(self, self.head, framing):
                        return 0
                    if st == 101 and self.upgrade:
                        self.state = US_TUNNEL
                        if off < n:
                            d._write(data[off:])
                        return 0
                    if self.body.done:
                        if off < n:
                            self.reusable = False
                        self.state = US_IDLE
                        d._on_upstream_complete(self)
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
                        fw = self.body.fwd
                        if fw > 0:
                            d._on_upstream_body(data if (off == 0 and fw == n)
                                                else data[off:off + fw])
                        if self.body.done and self.body.trailers_dropped:
                            d._on_upstream_body(b"\r\n")
                    off += k
                    if self.body.chunks is not None:
                        d._data_filters(self.body, True)
                        if self.ds is not d:
                            return 0
                    if self.body.done:
                        if off < n:
                            self.reusable = False
                        self.state = US_IDLE
                        d._on_upstream_complete(self)
                        return 0
                else:
                    return 0
        except Exception as exc:
            self.ds = None
            self.abort()
            d._internal_error(exc)
        return 0

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        cdef DownstreamConn d = self.ds
        cdef int st = self.state
        if self.closed:
            return
        self.closed = True
        self.connected = False
        self.state = US_CLOSED
        self._gone()
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
                d._on_upstream_complete(None)
            elif st == US_TUNNEL:
                d.close_after = True
                if d.transport is not None:
                    d.transport.close()
            elif st == US_HEAD or st == US_CONNECTING:
                self.cluster.upstream_cx_destroy_remote.inc()
                d._fail(F_RESET, self)
            else:
                if st == US_BODY:
                    # a length- or chunk-framed body cut short: Envoy's codec counts a
                    # protocol error (differential case upstream-closes-mid-response)
                    self.cluster.upstream_cx_protocol_error.inc()
                self.cluster.upstream_rq_rx_reset.inc()
                d._reset()
        except Exception as exc2:
            d._internal_error(exc2)

    def pause_writing(self):
        # the upstream reads slower than our client sends: stop reading the client
        if self.ds is not None:
            self.ds._pause(P_UPSTREAM_FULL)

    def resume_writing(self):
        if self.ds is not None:
            self.ds._resume(P_UPSTREAM_FULL)


FILTER_CONTINUE_ = FILTER_CONTINUE
FILTER_STOP_ = FILTER_STOP
