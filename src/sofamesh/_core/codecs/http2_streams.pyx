# HTTP/2 stream state machine and field validation; see http2_streams.pxd for the contract.
#
#                          +--------+
#                  send H  |        |  recv H
#                ,---------|  idle  |---------.
#               /          +--------+          \
#              v                                v
#   +----------+   recv ES   +--------+   send ES   +----------+
#   |  half    |<------------|  open  |------------>|  half    |
#   |  closed  |             +--------+             |  closed  |
#   | (remote) |                  |                 | (local)  |
#   +----------+                  | send/recv R     +----------+
#        | send ES / send R /     v                     | recv ES / send R /
#        | recv R            +--------+                 | recv R
#        `------------------>| closed |<----------------'
#                            +--------+
#   (H: HEADERS, ES: END_STREAM, R: RST_STREAM; the reserved states are never entered:
#    sofamesh refuses server push)

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memcmp

cdef unsigned char NEXT[ST_COUNT][IN_COUNT]
cdef unsigned char ACTION[ST_COUNT][IN_COUNT]

# (state, input) -> (next state, action). Anything missing: a frame received is a
# connection error PROTOCOL_ERROR; a local send is a usage error.
TRANSITIONS = {
    (ST_IDLE, IN_SEND_HEADERS): (ST_OPEN, ACT_OK),
    (ST_IDLE, IN_RECV_HEADERS): (ST_OPEN, ACT_OK),

    (ST_OPEN, IN_SEND_HEADERS): (ST_OPEN, ACT_OK),
    (ST_OPEN, IN_SEND_DATA): (ST_OPEN, ACT_OK),
    (ST_OPEN, IN_SEND_END_STREAM): (ST_HALF_CLOSED_LOCAL, ACT_OK),
    (ST_OPEN, IN_SEND_RST): (ST_CLOSED, ACT_OK),
    (ST_OPEN, IN_RECV_HEADERS): (ST_OPEN, ACT_OK),
    (ST_OPEN, IN_RECV_DATA): (ST_OPEN, ACT_OK),
    (ST_OPEN, IN_RECV_END_STREAM): (ST_HALF_CLOSED_REMOTE, ACT_OK),
    (ST_OPEN, IN_RECV_RST): (ST_CLOSED, ACT_OK),
    (ST_OPEN, IN_RECV_WINDOW_UPDATE): (ST_OPEN, ACT_OK),

    (ST_HALF_CLOSED_LOCAL, IN_SEND_RST): (ST_CLOSED, ACT_OK),
    (ST_HALF_CLOSED_LOCAL, IN_RECV_HEADERS): (ST_HALF_CLOSED_LOCAL, ACT_OK),
    (ST_HALF_CLOSED_LOCAL, IN_RECV_DATA): (ST_HALF_CLOSED_LOCAL, ACT_OK),
    (ST_HALF_CLOSED_LOCAL, IN_RECV_END_STREAM): (ST_CLOSED, ACT_OK),
    (ST_HALF_CLOSED_LOCAL, IN_RECV_RST): (ST_CLOSED, ACT_OK),
    (ST_HALF_CLOSED_LOCAL, IN_RECV_WINDOW_UPDATE): (ST_HALF_CLOSED_LOCAL, ACT_OK),

    (ST_HALF_CLOSED_REMOTE, IN_SEND_HEADERS): (ST_HALF_CLOSED_REMOTE, ACT_OK),
    (ST_HALF_CLOSED_REMOTE, IN_SEND_DATA): (ST_HALF_CLOSED_REMOTE, ACT_OK),
    (ST_HALF_CLOSED_REMOTE, IN_SEND_END_STREAM): (ST_CLOSED, ACT_OK),
    (ST_HALF_CLOSED_REMOTE, IN_SEND_RST): (ST_CLOSED, ACT_OK),
    (ST_HALF_CLOSED_REMOTE, IN_RECV_HEADERS): (ST_HALF_CLOSED_REMOTE, ACT_STREAM_CLOSED),
    (ST_HALF_CLOSED_REMOTE, IN_RECV_DATA): (ST_HALF_CLOSED_REMOTE, ACT_STREAM_CLOSED),
    (ST_HALF_CLOSED_REMOTE, IN_RECV_END_STREAM): (ST_HALF_CLOSED_REMOTE, ACT_STREAM_CLOSED),
    (ST_HALF_CLOSED_REMOTE, IN_RECV_RST): (ST_CLOSED, ACT_OK),
    (ST_HALF_CLOSED_REMOTE, IN_RECV_WINDOW_UPDATE): (ST_HALF_CLOSED_REMOTE, ACT_OK),

    # closed: frames the peer sent before it saw our END_STREAM or RST_STREAM
    (ST_CLOSED, IN_SEND_RST): (ST_CLOSED, ACT_IGNORE),
    (ST_CLOSED, IN_RECV_HEADERS): (ST_CLOSED, ACT_STREAM_CLOSED),
    (ST_CLOSED, IN_RECV_DATA): (ST_CLOSED, ACT_STREAM_CLOSED),
    (ST_CLOSED, IN_RECV_END_STREAM): (ST_CLOSED, ACT_STREAM_CLOSED),
    (ST_CLOSED, IN_RECV_RST): (ST_CLOSED, ACT_IGNORE),
    (ST_CLOSED, IN_RECV_WINDOW_UPDATE): (ST_CLOSED, ACT_IGNORE),
}


def _build():
    cdef int s, i
    for s in range(ST_COUNT):
        for i in range(IN_COUNT):
            nxt, act = TRANSITIONS.get(
                (s, i), (s, ACT_USAGE if i <= IN_SEND_RST else ACT_PROTOCOL))
            NEXT[s][i] = nxt
            ACTION[s][i] = act


_build()


def transition_for(int state, int event):
    """(next state, action) of the table, for tests."""
    return NEXT[state][event], ACTION[state][event]


cdef int transition(Stream s, int event) noexcept:
    cdef int act = ACTION[s.state][event]
    if act == ACT_OK:
        s.state = NEXT[s.state][event]
    return act


cdef int transition_closed(int event) noexcept:
    return ACTION[ST_CLOSED][event]


cdef class Stream:
    def __repr__(self):
        return "Stream(%d, state=%d)" % (self.stream_id, self.state)


cdef Stream new_stream(unsigned int stream_id, bint remote, long long send_window,
                       long long recv_window):
    cdef Stream s = Stream.__new__(Stream)
    s.stream_id = stream_id
    s.state = ST_IDLE
    s.remote_initiated = remote
    s.send_window = send_window
    s.recv_window = recv_window
    s.content_length = -1
    s.pending = None
    return s


# -- fields (RFC 9113 8.2, 8.3) ----------------------------------------------------------

# RFC 9110 tchar, lower case only (RFC 9113 8.2.1: no upper case in field names)
cdef unsigned char NAME_OK[256]
# RFC 9113 8.2.1: no NUL, CR or LF in a value
cdef unsigned char VALUE_BAD[256]


def _build_chars():
    cdef int c
    for c in range(256):
        NAME_OK[c] = 0
        VALUE_BAD[c] = 0
    for c in b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz":
        NAME_OK[c] = 1
    VALUE_BAD[0] = VALUE_BAD[10] = VALUE_BAD[13] = 1


_build_chars()

cdef enum:
    PH_METHOD = 1
    PH_SCHEME = 2
    PH_PATH = 4
    PH_AUTHORITY = 8
    PH_PROTOCOL = 16
    PH_STATUS = 32


cdef inline bint _eq(const char* p, Py_ssize_t n, const char* lit, Py_ssize_t ln) noexcept:
    return n == ln and memcmp(p, lit, n) == 0


cdef str _check_field(bytes name, bytes value):
    """None, or why a regular field is malformed."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(name)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(name), i
    if n == 0:
        return "empty field name"
    for i in range(n):
        if not NAME_OK[p[i]]:
            return "invalid character in field name"
    p = <const unsigned char*>PyBytes_AS_STRING(value)
    n = PyBytes_GET_SIZE(value)
    for i in range(n):
        if VALUE_BAD[p[i]]:
            return "invalid character in field value"
    # whitespace around a value is taken as Envoy 1.40 takes it (RFC 9113 8.2.1 calls the
    # message malformed): conformance 8.2/8
    # connection-specific fields (RFC 9113 8.2.2)
    p = <const unsigned char*>PyBytes_AS_STRING(name)
    n = PyBytes_GET_SIZE(name)
    if n == 2 and p[0] == b't' and p[1] == b'e':
        if value != b"trailers":
            return "te other than trailers"
    elif (_eq(<const char*>p, n, "connection", 10) or _eq(<const char*>p, n, "keep-alive", 10)
          or _eq(<const char*>p, n, "proxy-connection", 16)
          or _eq(<const char*>p, n, "transfer-encoding", 17)
          or _eq(<const char*>p, n, "upgrade", 7)):
        return "connection-specific field"
    return None


cdef long long _content_length(bytes value) noexcept:
    """-2 when not a non-negative decimal."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(value)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value), i
    cdef long long v = 0
    if n == 0 or n > 18:
        return -2
    for i in range(n):
        if p[i] < 48 or p[i] > 57:
            return -2
        v = v * 10 + (p[i] - 48)
    return v


cdef inline bint _is_content_length(bytes name) noexcept:
    return _eq(PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name), "content-length", 14)


cdef str validate_request(list headers, RequestHeaders ev):
    cdef int seen = 0, bit
    cdef bint regular = False
    cdef bytes name, value
    cdef const char* p
    cdef Py_ssize_t n
    cdef long long cl = -1, v
    cdef str why
    for item in headers:
        name = <bytes>(<tuple>item)[0]
        value = <bytes>(<tuple>item)[1]
        p = PyBytes_AS_STRING(name)
        n = PyBytes_GET_SIZE(name)
        if n and p[0] == b':':
            if regular:
                return "pseudo-header after a regular field"
            if _eq(p, n, ":method", 7):
                bit = PH_METHOD
                ev.method = value
            elif _eq(p, n, ":scheme", 7):
                bit = PH_SCHEME
                ev.scheme = value
            elif _eq(p, n, ":path", 5):
                bit = PH_PATH
                ev.path = value
            elif _eq(p, n, ":authority", 10):
                bit = PH_AUTHORITY
                ev.authority = value
            elif _eq(p, n, ":protocol", 9):
                bit = PH_PROTOCOL
                ev.protocol = value
            else:
                return "unknown or response pseudo-header in a request"
            if seen & bit:
                return "repeated pseudo-header"
            seen |= bit
            continue
        regular = True
        why = _check_field(name, value)
        if why is not None:
            return why
        if _is_content_length(name):
            v = _content_length(value)
            if v < 0 or (cl >= 0 and v != cl):
                return "bad content-length"
            cl = v
    if not (seen & PH_METHOD):
        return "missing :method"
    if ev.method == b"CONNECT" and not (seen & PH_PROTOCOL):
        if (seen & (PH_SCHEME | PH_PATH)) or not (seen & PH_AUTHORITY):
            return "CONNECT needs :authority and no :scheme or :path"
    else:
        if (seen & PH_PROTOCOL) and ev.method != b"CONNECT":
            return ":protocol without CONNECT"
        if (seen & (PH_SCHEME | PH_PATH)) != (PH_SCHEME | PH_PATH):
            return "missing :scheme or :path"
        if PyBytes_GET_SIZE(ev.path) == 0:
            return "empty :path"
        # origin-form, or "*" (OPTIONS): Envoy refuses anything else (conformance 8.3.1/9)
        if PyBytes_AS_STRING(ev.path)[0] != b'/' and not (
                ev.path == b"*" and ev.method == b"OPTIONS"):
            return "invalid :path"
    ev.content_length = cl
    return None


cdef str validate_response(list headers, int* status, long long* content_length):
    cdef bint regular = False, seen = False
    cdef bytes name, value
    cdef const char* p
    cdef Py_ssize_t n
    cdef long long cl = -1, v
    cdef str why
    for item in headers:
        name = <bytes>(<tuple>item)[0]
        value = <bytes>(<tuple>item)[1]
        p = PyBytes_AS_STRING(name)
        n = PyBytes_GET_SIZE(name)
        if n and p[0] == b':':
            if regular:
                return "pseudo-header after a regular field"
            if not _eq(p, n, ":status", 7):
                return "request or unknown pseudo-header in a response"
            if seen:
                return "repeated :status"
            seen = True
            p = PyBytes_AS_STRING(value)
            if (PyBytes_GET_SIZE(value) != 3 or not (b'1' <= p[0] <= b'9')
                    or not (b'0' <= p[1] <= b'9') or not (b'0' <= p[2] <= b'9')):
                return "bad :status"
            status[0] = (p[0] - 48) * 100 + (p[1] - 48) * 10 + (p[2] - 48)
            continue
        regular = True
        why = _check_field(name, value)
        if why is not None:
            return why
        if _is_content_length(name):
            v = _content_length(value)
            if v < 0 or (cl >= 0 and v != cl):
                return "bad content-length"
            cl = v
    if not seen:
        return "missing :status"
    content_length[0] = cl
    return None


cdef str validate_trailers(list headers):
    cdef bytes name
    cdef str why
    for item in headers:
        name = <bytes>(<tuple>item)[0]
        if PyBytes_GET_SIZE(name) and PyBytes_AS_STRING(name)[0] == b':':
            return "pseudo-header in trailers"
        why = _check_field(name, <bytes>(<tuple>item)[1])
        if why is not None:
            return why
    return None
