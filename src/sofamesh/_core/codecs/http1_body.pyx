# HTTP/1.1 message bodies (RFC 9112 6-7), sans-IO; see http1_body.pxd for the contract.
#
#   chunked-body = *( hex-size [ ";" ext ] CRLF data CRLF ) "0" [ ";" ext ] CRLF *trailer CRLF

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE

from sofamesh._core.headers cimport HeaderList

cdef unsigned char TCHAR[256]       # RFC 9110 tchar
cdef unsigned char HEXVAL[256]


cdef void _init_tables() noexcept:
    cdef int c
    for c in range(256):
        TCHAR[c] = 0
        HEXVAL[c] = 255
    for c in range(ord('0'), ord('9') + 1):
        TCHAR[c] = 1
        HEXVAL[c] = c - ord('0')
    for c in range(ord('a'), ord('z') + 1):
        TCHAR[c] = 1
    for c in range(ord('A'), ord('Z') + 1):
        TCHAR[c] = 1
    for c in range(6):
        HEXVAL[ord('a') + c] = 10 + c
        HEXVAL[ord('A') + c] = 10 + c
    for c in b"!#$%&'*+-.^_`|~":
        TCHAR[c] = 1


_init_tables()


cdef enum:
    CS_SIZE = 0
    CS_SIZE_MORE = 1
    CS_EXT = 2
    CS_SIZE_LF = 3
    CS_DATA = 4
    CS_DATA_CR = 5
    CS_DATA_LF = 6
    CS_TRAILER_START = 7
    CS_TRAILER_LINE = 8
    CS_TRAILER_LF = 9
    CS_END_LF = 10

DEF MAX_TRAILER = 65536


cdef class BodyReader:
    def __cinit__(self):
        self.start(FR_NONE, 0)

    cdef void start(self, int mode, long long length) noexcept:
        self.mode = mode
        self.remaining = length if mode == FR_LENGTH else 0
        self.cstate = CS_SIZE
        self.trailer_bytes = 0
        self.size_digits = 0
        self.seen = 0
        self.fwd = 0
        self.trailers_dropped = False
        self.done = mode == FR_NONE or (mode == FR_LENGTH and length <= 0)

    cdef Py_ssize_t feed(self, const char* p, Py_ssize_t n) except -2:
        cdef Py_ssize_t i = 0, take
        cdef unsigned char c, v
        self.fwd = 0
        if self.done:
            return 0
        if self.mode == FR_LENGTH:
            take = n if n < self.remaining else <Py_ssize_t>self.remaining
            self.fwd = take
            self.remaining -= take
            self.seen += take
            if self.chunks is not None and take:
                self.chunks.append(PyBytes_FromStringAndSize(p, take))
            if self.remaining == 0:
                self.done = True
            return take
        if self.mode == FR_EOF:
            self.fwd = n
            self.seen += n
            if self.chunks is not None and n:
                self.chunks.append(PyBytes_FromStringAndSize(p, n))
            return n
        self.fwd = 0 if self.trailers_dropped else -1
        while i < n:
            c = <unsigned char>p[i]
            if self.cstate == CS_DATA:
                take = n - i
                if take > self.remaining:
                    take = <Py_ssize_t>self.remaining
                if self.chunks is not None and take:
                    self.chunks.append(PyBytes_FromStringAndSize(p + i, take))
                self.remaining -= take
                i += take
                if self.remaining == 0:
                    self.cstate = CS_DATA_CR
                continue
            if self.cstate == CS_SIZE or self.cstate == CS_SIZE_MORE:
                v = HEXVAL[c]
                if v != 255:
                    if self.size_digits >= 15:
                        return -1
                    self.remaining = self.remaining * 16 + v
                    self.size_digits += 1
                    self.cstate = CS_SIZE_MORE
                elif self.cstate == CS_SIZE:
                    return -1
                elif c == 13:
                    self.cstate = CS_SIZE_LF
                elif c == 59 or c == 32 or c == 9:
                    self.cstate = CS_EXT
                else:
                    return -1
            elif self.cstate == CS_EXT:
                if c == 13:
                    self.cstate = CS_SIZE_LF
                elif c == 10 or (c < 32 and c != 9):
                    return -1
                else:
                    self.trailer_bytes += 1
                    if self.trailer_bytes > MAX_TRAILER:
                        return -1
            elif self.cstate == CS_SIZE_LF:
                if c != 10:
                    return -1
                self.size_digits = 0
                if self.remaining == 0:
                    self.cstate = CS_TRAILER_START
                else:
                    self.cstate = CS_DATA
            elif self.cstate == CS_DATA_CR:
                if c != 13:
                    return -1
                self.cstate = CS_DATA_LF
            elif self.cstate == CS_DATA_LF:
                if c != 10:
                    return -1
                self.cstate = CS_SIZE
                self.remaining = 0
            elif self.cstate == CS_TRAILER_START:
                if c == 13:
                    self.cstate = CS_END_LF
                else:
                    if not self.trailers_dropped:
                        self.trailers_dropped = True
                        self.fwd = i
                    self.cstate = CS_TRAILER_LINE
            elif self.cstate == CS_TRAILER_LINE:
                self.trailer_bytes += 1
                if self.trailer_bytes > MAX_TRAILER:
                    return -1
                if c == 13:
                    self.cstate = CS_TRAILER_LF
            elif self.cstate == CS_TRAILER_LF:
                if c != 10:
                    return -1
                self.cstate = CS_TRAILER_START
            elif self.cstate == CS_END_LF:
                if c != 10:
                    return -1
                i += 1
                self.seen += i
                self.done = True
                if self.fwd < 0:
                    self.fwd = i
                return i
            i += 1
        self.seen += i
        if self.fwd < 0:
            self.fwd = i
        return i

    # Python API (tests)
    def begin(self, int mode, long long length=0):
        self.start(mode, length)

    def feed_bytes(self, bytes data):
        """Bytes of `data` that belong to the body; -1 when the framing is malformed."""
        return self.feed(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))

    def collect(self, bint on=True):
        """Start (or stop) collecting the decoded payload in `chunks`."""
        self.chunks = [] if on else None

    @property
    def complete(self):
        return self.done

    @property
    def forward_length(self):
        """Of the last feed, how many leading bytes to pass on (trailers are dropped)."""
        return self.fwd

    @property
    def dropped_trailers(self):
        return self.trailers_dropped


# Trailers ---------------------------------------------------------------------------

cdef HeaderList parse_trailers(bytes raw):
    cdef HeaderList t = HeaderList()
    cdef bytes line, name
    for line in raw.split(b"\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name or not all(TCHAR[c] for c in name):
            continue
        t.add(name.lower(), value.strip(b" \t"))
    return t


cdef bytes encode_trailers(HeaderList t):
    cdef list out = []
    cdef int i
    for i in range(t.count()):
        if t.live(i):
            out.append(t.name_at(i) + b": " + t.value_at(i) + b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def trailers_from_bytes(bytes raw):
    """Python API (tests): the HeaderList parsed from a trailer section."""
    return parse_trailers(raw)


def trailers_to_bytes(HeaderList t):
    return encode_trailers(t)
