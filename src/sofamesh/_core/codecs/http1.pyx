# HTTP/1.1 head parser and body framing (RFC 9112); see http1.pxd for the contract.
#
#   request-line = method SP request-target SP "HTTP/1." DIGIT CRLF
#   status-line  = "HTTP/1." DIGIT SP 3DIGIT SP reason-phrase CRLF
#   header-field = token ":" OWS field-value OWS CRLF        (no obs-fold)
#   chunked-body = *( hex-size [ ";" ext ] CRLF data CRLF ) "0" [ ";" ext ] CRLF *trailer CRLF

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE, PyList_New, PyList_SET_ITEM
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF

cdef extern from "Python.h":
    void Py_SET_SIZE(object o, Py_ssize_t n)

DEF ADDED_ROOM = 16
from libc.string cimport memchr, memcmp

from sofamesh._core.codecs.http1_body cimport FR_NONE, FR_LENGTH, FR_CHUNKED, FR_EOF
from sofamesh._core.headers cimport HeaderMap, bytes_len, bytes_ptr, router_control_name

cdef extern from "string.h" nogil:
    void* memmem(const void* h, size_t hl, const void* n, size_t nl)
    int strncasecmp(const char* a, const char* b, size_t n)

# RFC 9110 tchar
cdef unsigned char TCHAR[256]


cdef void _init_tables() noexcept:
    cdef int c
    for c in range(256):
        TCHAR[c] = 0
    for c in range(ord('0'), ord('9') + 1):
        TCHAR[c] = 1
    for c in range(ord('a'), ord('z') + 1):
        TCHAR[c] = 1
    for c in range(ord('A'), ord('Z') + 1):
        TCHAR[c] = 1
    for c in b"!#$%&'*+-.^_`|~":
        TCHAR[c] = 1


_init_tables()


cdef inline bint _ieq(const char* p, int n, const char* lit, int ln) noexcept:
    return n == ln and strncasecmp(p, lit, n) == 0


cdef int _classify(const char* p, int n) noexcept:
    if n == 4:
        if strncasecmp(p, "host", 4) == 0:
            return HK_HOST
        if strncasecmp(p, "date", 4) == 0:
            return HK_DATE
    elif n == 2:
        if strncasecmp(p, "te", 2) == 0:
            return HK_TE
    elif n == 6:
        if strncasecmp(p, "expect", 6) == 0:
            return HK_EXPECT
        if strncasecmp(p, "server", 6) == 0:
            return HK_SERVER
    elif n == 7:
        if strncasecmp(p, "upgrade", 7) == 0:
            return HK_UPGRADE
    elif n == 10:
        if strncasecmp(p, "connection", 10) == 0:
            return HK_CONNECTION
        if strncasecmp(p, "keep-alive", 10) == 0:
            return HK_KEEP_ALIVE
        if strncasecmp(p, "user-agent", 10) == 0:
            return HK_USER_AGENT
    elif n == 12:
        if strncasecmp(p, "x-request-id", 12) == 0:
            return HK_X_REQUEST_ID
    elif n == 14:
        if strncasecmp(p, "content-length", 14) == 0:
            return HK_CONTENT_LENGTH
    elif n == 15:
        if strncasecmp(p, "x-forwarded-for", 15) == 0:
            return HK_XFF
    elif n == 16:
        if strncasecmp(p, "proxy-connection", 16) == 0:
            return HK_PROXY_CONNECTION
    elif n == 17:
        if strncasecmp(p, "transfer-encoding", 17) == 0:
            return HK_TRANSFER_ENCODING
        if strncasecmp(p, "x-forwarded-proto", 17) == 0:
            return HK_X_FORWARDED_PROTO
    if n > 8 and router_control_name(p, n):
        if n == 30 and strncasecmp(p, "x-envoy-expected-rq-timeout-ms", 30) == 0:
            return HK_EXPECTED_TIMEOUT
        return HK_ENVOY_CONTROL
    return HK_OTHER


cdef list _pairs(bytes name, bytes value):
    """[name, value] with room for 8 entries: the connection manager, the router and a
    tracer add about that many (PERF(benchmarks/instr_per_request.py): no list regrowth,
    ~70 instructions a request)."""
    cdef list out = PyList_New(ADDED_ROOM)
    Py_INCREF(name)
    PyList_SET_ITEM(out, 0, name)
    Py_INCREF(value)
    PyList_SET_ITEM(out, 1, value)
    Py_SET_SIZE(out, 2)     # the other slots stay allocated (NULL), as a list's spare room
    return out


cdef class Head:
    def __cinit__(self):
        self.reset()

    cdef void reset(self) noexcept:
        self.nhdr = 0
        self.length = 0
        self.line_len = 0
        self.method_len = 0
        self.path_off = 0
        self.path_len = 0
        self.minor = 1
        self.status = 0
        self.reason_off = 0
        self.reason_len = 0
        self.content_length = -1
        self.chunked = False
        self.te_other = False
        self.conn_close = False
        self.conn_keep_alive = False
        self.conn_upgrade = False
        self.expect_continue = False
        self.is_head_method = False
        self.host_idx = -1
        self.upgrade_idx = -1
        self.xff_idx = -1
        self.xrid_idx = -1
        self.xfp_idx = -1
        self.abs_host_len = 0
        self.ntok = 0
        self.host2_idx = -1
        self.added = None
        self.path_set = None
        self.authority_set = None

    cdef int find(self, const char* name, int n) noexcept:
        cdef int i
        for i in range(self.nhdr):
            if self.hdrs[i].name_len == n and \
                    strncasecmp(self.base + self.hdrs[i].name_off, name, n) == 0:
                return i
        return -1

    cdef bytes value_at(self, int i):
        if i >= self.nhdr:
            return <bytes>self.added[2 * (i - self.nhdr) + 1]
        return PyBytes_FromStringAndSize(self.base + self.hdrs[i].value_off,
                                         self.hdrs[i].value_len)

    cdef bytes name_at(self, int i):
        if i >= self.nhdr:
            return <bytes>self.added[2 * (i - self.nhdr)]
        return PyBytes_FromStringAndSize(self.base + self.hdrs[i].name_off,
                                         self.hdrs[i].name_len).lower()

    cdef const char* name_ptr(self, int i, int* n) noexcept:
        cdef object o
        if i >= self.nhdr:
            o = self.added[2 * (i - self.nhdr)]
            if o is None:
                n[0] = 0
                return NULL
            n[0] = <int>PyBytes_GET_SIZE(<bytes>o)
            return PyBytes_AS_STRING(<bytes>o)
        if self.hdrs[i].skip:
            n[0] = 0
            return NULL
        n[0] = self.hdrs[i].name_len
        return self.base + self.hdrs[i].name_off

    cdef bytes method(self):
        return PyBytes_FromStringAndSize(self.base, self.method_len)

    cdef bytes path(self):
        if self.path_set is not None:
            return self.path_set
        return PyBytes_FromStringAndSize(self.base + self.path_off, self.path_len)

    cdef bytes host(self):
        if self.abs_host_len:
            return PyBytes_FromStringAndSize(self.base + self.abs_host_off, self.abs_host_len)
        if self.host_idx < 0:
            return b""
        if self.host2_idx >= 0:
            return self.value_at(self.host_idx) + b"," + self.value_at(self.host2_idx)
        return self.value_at(self.host_idx)

    cdef const char* authority_ptr(self, Py_ssize_t* n) noexcept:
        # the same choices as authority() and host(), without making bytes
        if self.authority_set is not None:
            n[0] = PyBytes_GET_SIZE(self.authority_set)
            return PyBytes_AS_STRING(self.authority_set)
        if self.abs_host_len:
            n[0] = self.abs_host_len
            return self.base + self.abs_host_off
        if self.host_idx < 0:
            n[0] = 0
            return ""
        if self.host2_idx >= 0 or self.host_idx >= self.nhdr:
            return NULL
        n[0] = self.hdrs[self.host_idx].value_len
        return self.base + self.hdrs[self.host_idx].value_off

    # HeaderMap ---------------------------------------------------------------------------
    cdef int count(self) noexcept:
        if self.added is None:
            return self.nhdr
        return self.nhdr + <int>(len(self.added) >> 1)

    cdef bint live(self, int i) noexcept:
        if i >= self.nhdr:
            return self.added[2 * (i - self.nhdr)] is not None
        return self.hdrs[i].skip == 0

    cdef int find_from(self, const char* name, int n, int start) noexcept:
        cdef int i, k
        for i in range(start, self.nhdr):
            if self.hdrs[i].skip == 0 and self.hdrs[i].name_len == n and \
                    strncasecmp(self.base + self.hdrs[i].name_off, name, n) == 0:
                return i
        cdef list added = self.added
        cdef Py_ssize_t m
        cdef PyObject* p
        if added is not None:
            # PERF(benchmarks/instr_per_request.py): borrowed pointers, no reference counting
            # per entry (called several times a request)
            m = PyList_GET_SIZE(added)
            k = start - self.nhdr if start > self.nhdr else 0
            while 2 * k < m:
                p = PyList_GET_ITEM(added, 2 * k)
                if p != <PyObject*>None and bytes_len(p) == n and \
                        strncasecmp(bytes_ptr(p), name, n) == 0:
                    return self.nhdr + k
                k += 1
        return -1

    cdef int remove_at(self, int i) except -1:
        if i >= self.nhdr:
            self.added[2 * (i - self.nhdr)] = None
        else:
            self.hdrs[i].skip = 1
        return 0

    cdef int add(self, bytes name, bytes value) except -1:
        if self.added is None:
            self.added = _pairs(name, value)
        else:
            self.added.append(name)
            self.added.append(value)
        return 0

    cdef int add_flat(self, tuple flat) except -1:
        if self.added is None:
            self.added = list(flat)
        else:
            self.added.extend(flat)
        return 0

    cdef int set_path(self, bytes path) except -1:
        self.path_set = path
        return 0

    cdef int set_authority(self, bytes authority) except -1:
        self.authority_set = authority
        return 0

    cdef int remove_router_controls(self) except -1:
        cdef int i, k
        for i in range(self.nhdr):
            k = self.hdrs[i].kind
            if k == HK_EXPECTED_TIMEOUT or k == HK_ENVOY_CONTROL:
                self.hdrs[i].skip = 1
        if self.added is not None:
            HeaderMap.remove_router_controls(self)
        return 0

    cdef int drop_connection_headers(self, bint request, bint keep_upgrade) except -1:
        cdef int i, k
        for i in range(self.nhdr):
            k = self.hdrs[i].kind
            if k == HK_KEEP_ALIVE or k == HK_PROXY_CONNECTION or k == HK_TRANSFER_ENCODING or \
                    (request and (k == HK_TE or k == HK_EXPECT)) or \
                    (not keep_upgrade and (k == HK_UPGRADE or k == HK_CONNECTION)) or \
                    (self.ntok and self.nominated(i)):
                self.hdrs[i].skip = 1
        return 0

    cdef const char* path_ptr(self, int* n) noexcept:
        if self.path_set is not None:
            n[0] = <int>PyBytes_GET_SIZE(self.path_set)
            return PyBytes_AS_STRING(self.path_set)
        n[0] = self.path_len
        return self.base + self.path_off

    cdef bytes authority(self):
        if self.authority_set is not None:
            return self.authority_set
        return self.host()

    cdef int get_status(self) noexcept:
        return self.status

    cdef bint nominated(self, int i) noexcept:
        """Header i is named in Connection: (hop-by-hop, RFC 9110 7.6.1)."""
        cdef int t
        for t in range(self.ntok):
            if self.tok_len[t] == self.hdrs[i].name_len and strncasecmp(
                    self.base + self.tok_off[t], self.base + self.hdrs[i].name_off,
                    self.tok_len[t]) == 0:
                return True
        return False

    cdef int framing(self) noexcept:
        if self.chunked:
            return FR_CHUNKED
        if self.content_length > 0:
            return FR_LENGTH
        return FR_NONE

    # Python API (tests, filters, tools) ---------------------------------------------
    @property
    def head_length(self):
        return self.length

    @property
    def head_start(self):
        """Where the head starts in the bytes it was parsed from (after any empty lines)."""
        return self.start

    @property
    def method_bytes(self):
        return self.method()

    @property
    def target(self):
        return self.path()

    @property
    def version_minor(self):
        return self.minor

    @property
    def status_code(self):
        return self.status

    @property
    def reason(self):
        return PyBytes_FromStringAndSize(self.base + self.reason_off, self.reason_len)

    @property
    def headers(self):
        """list[tuple[bytes, bytes]]: (lower-case name, value) in order."""
        return [(self.name_at(i), self.value_at(i)) for i in range(self.nhdr)]

    @property
    def body_length(self):
        return self.content_length

    @property
    def is_chunked(self):
        return self.chunked

    @property
    def keep_alive(self):
        if self.conn_close:
            return False
        if self.minor == 0:
            return self.conn_keep_alive
        return True

    @property
    def upgrade(self):
        return self.conn_upgrade and self.upgrade_idx >= 0

    @property
    def expects_continue(self):
        return self.expect_continue

    def get(self, name):
        if isinstance(name, str):
            name = name.encode("latin-1")
        cdef bytes b = name
        cdef int i = self.find(b, len(b))
        return None if i < 0 else self.value_at(i)


cdef int _parse_connection(Head h, const char* base, int off, int n) noexcept:
    # comma-separated tokens, case-insensitive; other tokens name hop-by-hop headers
    cdef const char* v = base + off
    cdef int i = 0, s, e
    while i < n:
        while i < n and (v[i] == 32 or v[i] == 9 or v[i] == 44):
            i += 1
        s = i
        while i < n and v[i] != 44:
            i += 1
        e = i
        while e > s and (v[e - 1] == 32 or v[e - 1] == 9):
            e -= 1
        if e == s:
            continue
        if _ieq(v + s, e - s, "close", 5):
            h.conn_close = True
        elif _ieq(v + s, e - s, "keep-alive", 10):
            h.conn_keep_alive = True
        elif _ieq(v + s, e - s, "upgrade", 7):
            h.conn_upgrade = True
        elif h.ntok < H1_MAX_TOKENS:
            h.tok_off[h.ntok] = off + s
            h.tok_len[h.ntok] = e - s
            h.ntok += 1
    return 0


cdef int _parse_te(Head h, const char* v, int n) noexcept:
    # Only "chunked" as the final coding frames the body; anything else is "other".
    cdef int i = n
    while i > 0 and (v[i - 1] == 32 or v[i - 1] == 9):
        i -= 1
    if i >= 7 and strncasecmp(v + i - 7, "chunked", 7) == 0 and \
            (i == 7 or v[i - 8] == 44 or v[i - 8] == 32 or v[i - 8] == 9):
        if i == 7:
            h.chunked = True
        else:
            # "gzip, chunked": a coding before chunked; the proxy cannot decode it
            h.chunked = True
            h.te_other = True
    else:
        h.te_other = True
    return 0


cdef int _parse_headers(Head h, const char* base, int pos, int end, int max_headers) noexcept:
    # base[pos:end] holds header lines, each ending in LF (CRLF or a bare LF, as Envoy
    # accepts); end is where the blank line starts.
    cdef const char* p
    cdef const char* colon
    cdef const char* lf
    cdef int line_end, name_len, vs, ve, i, k
    cdef long long cl
    cdef unsigned char c
    while pos < end:
        p = base + pos
        lf = <const char*>memchr(p, 10, end - pos)
        if lf == NULL:
            return H1_E_BAD
        line_end = <int>(lf - base)
        if line_end > pos and base[line_end - 1] == 13:
            line_end -= 1
        if p[0] == 32 or p[0] == 9:
            # obs-fold: Envoy accepts it and joins the lines with a space
            return H1_E_OBS_FOLD if h.nhdr > 0 and h.status == 0 else H1_E_BAD
        colon = <const char*>memchr(p, 58, line_end - pos)
        if colon == NULL:
            return H1_E_BAD
        name_len = <int>(colon - p)
        if name_len == 0:
            return H1_E_BAD
        for i in range(name_len):
            if not TCHAR[<unsigned char>p[i]]:
                return H1_E_BAD
        vs = pos + name_len + 1
        while vs < line_end and (base[vs] == 32 or base[vs] == 9):
            vs += 1
        ve = line_end
        while ve > vs and (base[ve - 1] == 32 or base[ve - 1] == 9):
            ve -= 1
        for i in range(vs, ve):
            c = <unsigned char>base[i]
            if (c < 32 and c != 9) or c == 127:
                return H1_E_BAD
        if h.nhdr >= max_headers or h.nhdr >= H1_MAX_HEADERS:
            return H1_E_TOO_MANY
        k = _classify(p, name_len)
        i = h.nhdr
        h.hdrs[i].name_off = pos
        h.hdrs[i].name_len = name_len
        h.hdrs[i].value_off = vs
        h.hdrs[i].value_len = ve - vs
        h.hdrs[i].kind = k
        h.hdrs[i].skip = 0
        h.nhdr += 1
        if k == HK_CONTENT_LENGTH:
            if ve == vs:
                return H1_E_BAD
            cl = 0
            for i in range(vs, ve):
                c = <unsigned char>base[i]
                if c < 48 or c > 57:
                    return H1_E_BAD
                cl = cl * 10 + (c - 48)
                if cl > 0x7fffffffffffffLL:
                    return H1_E_BAD
            if h.content_length >= 0:
                # Envoy 1.40 refuses any repeated content-length, even with the same value
                # (RFC 9110 8.6 would allow it): 400 for a request, 502 for a response.
                return H1_E_BAD
            h.content_length = cl
        elif k == HK_TRANSFER_ENCODING:
            _parse_te(h, base + vs, ve - vs)
        elif k == HK_CONNECTION:
            _parse_connection(h, base, vs, ve - vs)
        elif k == HK_HOST:
            if h.host_idx >= 0:
                # Envoy joins repeated Host headers into one :authority ("a,b")
                if h.host2_idx >= 0:
                    return H1_E_BAD
                h.host2_idx = h.nhdr - 1
            else:
                h.host_idx = h.nhdr - 1
        elif k == HK_UPGRADE:
            h.upgrade_idx = h.nhdr - 1
        elif k == HK_EXPECT:
            if _ieq(base + vs, ve - vs, "100-continue", 12):
                h.expect_continue = True
        elif k == HK_XFF:
            if h.xff_idx < 0:
                h.xff_idx = h.nhdr - 1
        elif k == HK_X_REQUEST_ID:
            h.xrid_idx = h.nhdr - 1
        elif k == HK_X_FORWARDED_PROTO:
            h.xfp_idx = h.nhdr - 1
        elif k == HK_TE:
            if _ieq(base + vs, ve - vs, "trailers", 8):
                h.hdrs[h.nhdr - 1].kind = HK_TE_TRAILERS
        pos = <int>(lf - base) + 1
    return 0


cdef int _find_end(const char* p, Py_ssize_t n) noexcept:
    """Length of the head (through its blank line, CRLF or bare LF), or -1."""
    cdef const char* q
    cdef Py_ssize_t pos = 0
    while pos < n:
        q = <const char*>memchr(p + pos, 10, n - pos)
        if q == NULL:
            return -1
        pos = q - p + 1
        if pos < n and p[pos] == 10:
            return <int>(pos + 1)
        if pos + 1 < n and p[pos] == 13 and p[pos + 1] == 10:
            return <int>(pos + 2)
        if pos + 1 >= n:
            return -1
    return -1


cdef inline int _blank_at(const char* base, int hl) noexcept:
    """Where the blank line that ends a head of length hl starts."""
    return hl - 2 if base[hl - 2] == 13 else hl - 1


cdef inline int _line_end(const char* base, int hl) noexcept:
    """Length of the first line without its CRLF/LF."""
    cdef const char* q = <const char*>memchr(base, 10, hl)
    cdef int le = <int>(q - base)
    if le > 0 and base[le - 1] == 13:
        le -= 1
    return le


cdef inline int _line_so_far(const char* base, Py_ssize_t avail) noexcept:
    """A head still incomplete: H1_E_BAD when its first bytes cannot begin a request line
    (method token SP target SP "HTTP/1."), else H1_NEED_MORE. As Envoy's parser stops at
    the first bad byte, garbage is refused at once instead of holding the connection open
    until a blank line that never comes (found by tests/fuzz/proxy_campaign.py)."""
    cdef Py_ssize_t i = 0, j
    cdef unsigned char c
    cdef const char* version = b"HTTP/1."
    while i < avail and TCHAR[<unsigned char>base[i]]:
        i += 1
    if i == avail:
        return H1_NEED_MORE
    if i == 0:
        # only the CR of an empty line before the request (RFC 9112 2.2) may wait
        return H1_NEED_MORE if avail == 1 and base[0] == 13 else H1_E_BAD
    if base[i] != 32:
        return H1_E_BAD
    i += 1
    j = i
    while i < avail:
        c = <unsigned char>base[i]
        if c <= 32 or c == 127:
            break
        i += 1
    if i == avail:
        return H1_NEED_MORE
    if i == j or base[i] != 32:
        return H1_E_BAD
    i += 1
    j = 0
    while i < avail and j < 7:
        if base[i] != version[j]:
            return H1_E_BAD
        i += 1
        j += 1
    return H1_NEED_MORE


cdef int parse_request(Head h, bytes data, Py_ssize_t start, int max_bytes,
                       int max_headers) except -100:
    cdef Py_ssize_t avail = PyBytes_GET_SIZE(data) - start
    cdef const char* base = PyBytes_AS_STRING(data) + start
    cdef int hl, i, sp1, sp2, r, le, t
    cdef bint frag = False
    # Tolerate empty lines before a request (RFC 9112 2.2).
    cdef int skip = 0
    while skip < avail:
        if base[skip] == 10:
            skip += 1
        elif base[skip] == 13 and skip + 1 < avail and base[skip + 1] == 10:
            skip += 2
        else:
            break
    if skip:
        r = parse_request(h, data, start + skip, max_bytes, max_headers)
        return r + skip if r > 0 else r
    hl = _find_end(base, avail if avail < max_bytes + 4 else max_bytes + 4)
    if hl < 0:
        return H1_E_TOO_LARGE if avail > max_bytes else _line_so_far(base, avail)
    if hl > max_bytes:
        return H1_E_TOO_LARGE
    h.reset()
    h.raw = data
    h.start = start
    h.base = base
    h.length = hl
    le = _line_end(base, hl)
    h.line_len = le
    sp1 = 0
    while sp1 < le and TCHAR[<unsigned char>base[sp1]]:
        sp1 += 1
    if sp1 == 0 or sp1 >= le or base[sp1] != 32:
        return H1_E_BAD
    h.method_len = sp1
    sp2 = sp1 + 1
    while sp2 < le and base[sp2] != 32:
        if <unsigned char>base[sp2] <= 32 or <unsigned char>base[sp2] == 127:
            return H1_E_BAD
        if base[sp2] == 35:     # '#': a fragment is not part of a request-target
            frag = True
        sp2 += 1
    if sp2 == sp1 + 1 or sp2 + 9 != le or memcmp(base + sp2 + 1, b"HTTP/1.", 7) != 0:
        return H1_E_BAD
    if base[le - 1] == 49:
        h.minor = 1
    elif base[le - 1] == 48:
        h.minor = 0
    else:
        return H1_E_BAD
    if frag:
        return H1_E_BAD_TARGET
    h.path_off = sp1 + 1
    h.path_len = sp2 - sp1 - 1
    # absolute-form (RFC 9112 3.2.2): route on its path, its authority is the host
    if h.path_len > 7 and base[h.path_off] != 47 and \
            (strncasecmp(base + h.path_off, "http://", 7) == 0 or
             (h.path_len > 8 and strncasecmp(base + h.path_off, "https://", 8) == 0)):
        t = h.path_off + (7 if base[h.path_off + 4] == 58 else 8)
        i = t
        while i < sp2 and base[i] != 47 and base[i] != 63:
            i += 1
        if i == t or i == sp2 or base[i] != 47:
            return H1_E_BAD
        h.abs_host_off = t
        h.abs_host_len = i - t
        h.path_len = sp2 - i
        h.path_off = i
    h.is_head_method = sp1 == 4 and memcmp(base, b"HEAD", 4) == 0
    r = _parse_headers(h, base, le + (2 if base[le] == 13 else 1), _blank_at(base, hl),
                       max_headers)
    if r < 0:
        return r
    if h.chunked or h.te_other:
        if h.content_length >= 0:
            return H1_E_BAD       # both framings: request smuggling
        if h.te_other:
            return H1_E_NOT_IMPL
    return h.length


cdef int parse_response(Head h, bytes data, Py_ssize_t start, int max_bytes) except -100:
    cdef Py_ssize_t avail = PyBytes_GET_SIZE(data) - start
    cdef const char* base = PyBytes_AS_STRING(data) + start
    cdef int hl, le, i, r
    hl = _find_end(base, avail if avail < max_bytes + 4 else max_bytes + 4)
    if hl < 0:
        return H1_E_TOO_LARGE if avail > max_bytes else H1_NEED_MORE
    if hl > max_bytes:      # (the blank line is looked for 4 bytes past the limit)
        return H1_E_TOO_LARGE
    h.reset()
    h.raw = data
    h.start = start
    h.base = base
    h.length = hl
    le = _line_end(base, hl)
    h.line_len = le
    if le < 12 or memcmp(base, b"HTTP/1.", 7) != 0 or base[8] != 32:
        return H1_E_BAD
    if base[7] == 49:
        h.minor = 1
    elif base[7] == 48:
        h.minor = 0
    else:
        return H1_E_BAD
    h.status = 0
    for i in range(9, 12):
        if base[i] < 48 or base[i] > 57:
            return H1_E_BAD
        h.status = h.status * 10 + (base[i] - 48)
    if h.status < 100 or (le > 12 and base[12] != 32):
        return H1_E_BAD
    h.reason_off = 13 if le > 12 else 12
    h.reason_len = le - h.reason_off
    r = _parse_headers(h, base, le + (2 if base[le] == 13 else 1), _blank_at(base, hl),
                       H1_MAX_HEADERS)
    if r < 0:
        return r
    if h.chunked and h.content_length >= 0:
        # both framings: a client reading by length would desync (Envoy: 502 protocol error)
        return H1_E_BAD
    return h.length


# Python API: body framing lives in http1_body (re-exported for tests and tools)
from sofamesh._core.codecs.http1_body import (  # noqa: E402
    BodyReader, trailers_from_bytes, trailers_to_bytes,  # no-cython-lint
)

MODE_NONE = FR_NONE
MODE_LENGTH = FR_LENGTH
MODE_CHUNKED = FR_CHUNKED
MODE_EOF = FR_EOF
E_BAD = H1_E_BAD
E_TOO_LARGE = H1_E_TOO_LARGE
E_TOO_MANY = H1_E_TOO_MANY
E_NOT_IMPL = H1_E_NOT_IMPL
E_BAD_TARGET = H1_E_BAD_TARGET
E_OBS_FOLD = H1_E_OBS_FOLD

_FOLD = __import__("re").compile(rb"\r?\n[ \t]+")


cpdef bytes unfold_head(bytes data, Py_ssize_t start, Py_ssize_t head_len):
    """data with its head (data[start:start+head_len]) unfolded: each obs-fold becomes one
    space; the bytes after the head are kept. Rare path (parse_request said H1_E_OBS_FOLD)."""
    return _FOLD.sub(b" ", data[start:start + head_len]) + data[start + head_len:]


def parse_request_head(bytes data, Py_ssize_t start=0, int max_bytes=61440,
                       int max_headers=100):
    """(result, Head): result > 0 head length, 0 need more, < 0 an E_* error."""
    cdef Head h = Head()
    return parse_request(h, data, start, max_bytes, max_headers), h


def parse_response_head(bytes data, Py_ssize_t start=0, int max_bytes=61440):
    cdef Head h = Head()
    return parse_response(h, data, start, max_bytes), h
