# The stream fields an access log format reads that HttpStream keeps to Cython (its cdef
# attributes): addresses, attempts, timings, the response's headers and trailers. Called by
# the compiled formats of sofamesh.proxy.log_format, once per logged request and operator;
# nothing here runs for a request no format asks about.
#
# The response's headers and trailers: the stream keeps its response head only while an
# encode filter runs (HcmConfig.any_encode). A format that reads RESP(), TRAILER() or the
# upstream's local address adds `ResponseCapture` to the HCM's filters: it marks the
# stream's response as seen, takes the upstream connection's local address while it is
# still attached, and keeps the trailers.

from weakref import WeakKeyDictionary

from sofamesh._core.conn_pool cimport PoolConn
from sofamesh._core.headers cimport HeaderMap
from sofamesh._core.http_stream cimport HttpFilter, HttpStream
from sofamesh._core.router cimport Route, RA_DIRECT, RA_REDIRECT
from sofamesh.proxy.original_dst import local_address as _local_address

# filter_state keys of ResponseCapture
CAPTURED = "sofamesh.access_log.response"
UP_LOCAL = "sofamesh.access_log.upstream_local"
TRAILERS = "sofamesh.access_log.trailers"

# connection ids handed out on a connection's first logged request: Envoy numbers every
# connection it makes; sofamesh's downstream connections carry no id, so a logged one gets
# the next number (unique in this process, not Envoy's value)
_conn_ids = WeakKeyDictionary()
_next_id = [0]


cdef class ResponseCapture(HttpFilter):
    """Keeps what a format reads of the response: see the module comment."""

    def __init__(self):
        HttpFilter.__init__(self, "sofamesh.access_log.capture", False, True)

    cpdef int encode_headers(self, HttpStream s, int status, bint end_stream) except -1:
        cdef PoolConn up = s.up
        fs = s.filter_state
        if fs is None:
            fs = s.filter_state = {}
        fs[CAPTURED] = True
        if up is not None and up.transport is not None:
            fs[UP_LOCAL] = up.transport.get_extra_info("sockname")
        return 0

    cpdef int encode_trailers(self, HttpStream s, object trailers) except -1:
        cdef HeaderMap t = trailers
        fs = s.filter_state
        if fs is None:
            fs = s.filter_state = {}
        fs[TRAILERS] = t
        return 0


def local_address(HttpStream s):
    """(ip, port) the downstream connection reached, or None."""
    return _local_address(s.transport)     # the original destination, when restored


def downstream_transport(HttpStream s):
    """The downstream connection's transport (None once detached)."""
    return s.transport


def remote_port(HttpStream s):
    return s.remote_port


def connection_id(HttpStream s):
    t = s.transport
    if t is None:
        return None
    try:
        n = _conn_ids.get(t)
        if n is None:
            n = _conn_ids[t] = _next_id[0]
            _next_id[0] += 1
    except TypeError:       # a transport without weak references
        return None
    return n


def attempts(HttpStream s):
    """Upstream attempts made for this request (0: none, as a local reply)."""
    return s.attempts


def timings(HttpStream s):
    """(t_start, t_sent, req_done) on the mono clock; t_sent 0: nothing went upstream."""
    return s.t_start, s.t_sent, s.req_done


cdef bytes _first(HeaderMap h, bytes name):
    cdef int i = h.find_from(name, <int>len(name), 0)
    return h.value_at(i) if i >= 0 else None


def request_header(HttpStream s, bytes name):
    """The first value of a request header (lower-case name, or :method / :path /
    :authority / :scheme), or None: what Envoy's REQ() writes."""
    cdef HeaderMap h = s.head
    if h is None or s.resp_flags == "DPE":  # the head did not parse: nothing to read
        return None
    if name[0] == 58:   # ":"
        if name == b":path":
            return h.path()
        if name == b":method":
            return h.method()
        if name == b":authority":
            return h.authority()
        if name == b":scheme":
            return s.cfg.scheme or b"http"
        return None
    return _first(h, name)


def response_header(HttpStream s, bytes name):
    """The first value of a response header, or None (no response seen)."""
    cdef HeaderMap h = s.resp_head
    fs = s.filter_state
    if h is None or fs is None or CAPTURED not in fs:
        return None
    if name == b":status":
        return str(s.resp_status).encode() if s.resp_status else None
    return _first(h, name)


def response_trailer(HttpStream s, bytes name):
    cdef HeaderMap t
    fs = s.filter_state
    if fs is None:
        return None
    t = fs.get(TRAILERS)
    if t is None:
        return None
    return _first(t, name)


def upstream_local(HttpStream s):
    fs = s.filter_state
    if fs is None:
        return None
    return fs.get(UP_LOCAL)


def route_kind(HttpStream s):
    """'direct' (a direct response route), 'redirect', 'route' (a routed request), None (no
    route)."""
    cdef Route r = s.route
    if r is None:
        return None
    if r.action == RA_DIRECT:
        return "direct"
    if r.action == RA_REDIRECT:
        return "redirect"
    return "route"


def requested_server_name(HttpStream s):
    """The TLS SNI the client asked for (recorded by proxy/tls.py's sni_callback on
    listeners with a tls_inspector, as Envoy records it there), or None."""
    if s.transport is None:
        return None
    so = s.transport.get_extra_info("ssl_object")
    if so is None:
        return None
    return getattr(so, "_sofamesh_sni", None) or None
