# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Protobuf wire encoding of gRPC access log batches, without building protobuf objects.

`HttpLogBuffer.log(stream, duration_ms)`, once per request, encodes the stream's
`envoy.data.accesslog.v3.HTTPAccessLogEntry` straight into a byte buffer, and
`wrap_http_logs(entries, identifier)` makes a batch of them one
`envoy.service.accesslog.v3.StreamAccessLogsMessage` (`identifier` = 1, the serialized
Identifier of the stream's first message or b""; `http_logs` = 2). `encode_http_logs` does
the same from entry tuples. Building the message with the protobuf runtime cost about 10 us
per entry, most of a proxied request's CPU; this costs a fraction of one. Field numbers are
those of the generated descriptors (tests/unit/test_als_wire.py parses the output with them
and compares every field).

Entry tuple: (start_time_s, duration_ms, status, method, path, authority, cluster,
upstream_host "ip:port" or "-", downstream_remote_ip, request_body_bytes, response_body_bytes).
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memmove

from sofamesh._core.codecs.http1 cimport Head
from sofamesh._core.http_stream cimport HttpStream, StreamLog
from sofamesh._core.upstream cimport Cluster, Host


cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL


cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec* tp)
    int CLOCK_REALTIME

cdef enum:
    MAX_DEPTH = 8


@cython.final
cdef class PbWriter:
    """An append-only protobuf writer. The caller reserves room first (`reserve(n)`: at most n
    more bytes will be written), then writes without checks; nested messages are opened with
    begin() and closed with end(), which writes the length in front of the content (moving it
    by the varint's size, reserved by begin)."""

    cdef char* buf
    cdef Py_ssize_t pos
    cdef Py_ssize_t cap
    cdef Py_ssize_t starts[MAX_DEPTH]
    cdef int depth

    def __cinit__(self, Py_ssize_t cap=4096):
        self.buf = <char*>malloc(cap)
        if self.buf == NULL:
            raise MemoryError()
        self.cap = cap
        self.pos = 0
        self.depth = 0

    def __dealloc__(self):
        free(self.buf)

    cdef int reserve(self, Py_ssize_t n) except -1:
        cdef Py_ssize_t want = self.pos + n
        cdef char* grown
        if want <= self.cap:
            return 0
        while self.cap < want:
            self.cap *= 2
        grown = <char*>realloc(self.buf, self.cap)
        if grown == NULL:
            raise MemoryError()
        self.buf = grown
        return 0

    cdef inline void varint(self, uint64_t v) noexcept:
        # through a local pointer: stores through self.buf[self.pos] reload both each byte
        cdef char* start = self.buf + self.pos
        cdef char* p = start
        while v >= 0x80:
            p[0] = <char>((v & 0x7F) | 0x80)
            p += 1
            v >>= 7
        p[0] = <char>v
        self.pos += (p - start) + 1

    cdef inline void tag(self, int field, int wire) noexcept:
        self.varint(<uint64_t>((field << 3) | wire))

    cdef inline void uint(self, int field, uint64_t v) noexcept:
        """A varint field (omitted when 0, as proto3 does). Room: 20 bytes."""
        if v:
            self.tag(field, 0)
            self.varint(v)

    cdef inline void raw(self, int field, const char* data, Py_ssize_t n) noexcept:
        """A length-delimited field (omitted when empty). Room: n + 15 bytes."""
        if n <= 0:
            return
        self.tag(field, 2)
        self.varint(<uint64_t>n)
        memcpy(self.buf + self.pos, data, n)
        self.pos += n

    cdef inline void latin1(self, int field, const char* data, Py_ssize_t n) noexcept:
        """A string field from wire bytes read as Latin-1 (a protobuf string must be UTF-8):
        ASCII as it is, other bytes as their two-byte UTF-8. Room: 2n + 15 bytes."""
        cdef const unsigned char* p = <const unsigned char*>data
        cdef Py_ssize_t i = 0, high = 0
        cdef unsigned char c
        cdef uint64_t word, any_high = 0
        while i + 8 <= n:           # ASCII, the usual case, tested eight bytes at a time
            memcpy(&word, p + i, 8)
            any_high |= word
            i += 8
        while i < n:
            any_high |= p[i]
            i += 1
        if (any_high & <uint64_t>0x8080808080808080ULL) == 0:
            self.raw(field, data, n)
            return
        for i in range(n):
            if p[i] >= 0x80:
                high += 1
        self.tag(field, 2)
        self.varint(<uint64_t>(n + high))
        for i in range(n):
            c = p[i]
            if c < 0x80:
                self.buf[self.pos] = <char>c
                self.pos += 1
            else:
                self.buf[self.pos] = <char>(0xC0 | (c >> 6))
                self.buf[self.pos + 1] = <char>(0x80 | (c & 0x3F))
                self.pos += 2

    cdef inline void begin(self, int field) noexcept:
        """Opens a nested message (at most MAX_DEPTH deep: the writers here nest 3), leaving
        one byte for its length. Room: 15 bytes (its tag and length)."""
        self.tag(field, 2)
        self.starts[self.depth] = self.pos
        self.pos += 1
        self.depth += 1

    cdef inline void end(self) noexcept:
        # PERF(benchmarks/instr_per_request.py --mixer als): most nested messages are under
        # 128 bytes, so their one-byte length fits the byte begin() left and nothing moves
        # (moving every message's content by its length's size cost ~300 instructions an entry)
        cdef Py_ssize_t start, n, k
        cdef uint64_t v
        self.depth -= 1
        start = self.starts[self.depth]
        n = self.pos - start - 1
        if n < 0x80:
            self.buf[start] = <char>n
            return
        k = 1
        v = <uint64_t>n
        while v >= 0x80:
            v >>= 7
            k += 1
        memmove(self.buf + start + k, self.buf + start + 1, n)
        self.pos = start
        self.varint(<uint64_t>n)
        self.pos = start + k + n

    cdef inline void seconds_nanos(self, int field, int64_t ns) noexcept:
        """A google.protobuf.Timestamp or Duration of `ns` nanoseconds (ns >= 0). Room: 40."""
        cdef uint64_t sec, nanos
        cdef char* start
        if ns < 0:
            ns = 0
        sec = <uint64_t>(ns // 1000000000)
        nanos = <uint64_t>(ns % 1000000000)
        self.tag(field, 2)
        start = self.buf + self.pos     # its length (at most 22: one byte), then the fields
        self.pos += 1
        self.uint(1, sec)
        self.uint(2, nanos)
        start[0] = <char>(self.buf + self.pos - start - 1)

    cdef inline void socket_address(self, int field, const char* host, Py_ssize_t n,
                                    uint64_t port) noexcept:
        """An envoy.config.core.v3.Address with its socket_address. Room: n + 60."""
        self.begin(field)
        self.begin(1)
        self.raw(2, host, n)
        self.uint(3, port)
        self.end()
        self.end()

    cdef inline void put(self, bytes b) noexcept:
        """Bytes already encoded, as they are. Room: their length."""
        memcpy(self.buf + self.pos, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
        self.pos += PyBytes_GET_SIZE(b)

    cdef bytes take(self):
        cdef bytes out = PyBytes_FromStringAndSize(self.buf, self.pos)
        self.pos = 0
        return out


cdef int _method_enum(bytes m) noexcept:
    """envoy.config.core.v3.RequestMethod of a request method; 0 (unspecified) if none."""
    if m is None:
        return 0
    return _method_enum_p(PyBytes_AS_STRING(m), PyBytes_GET_SIZE(m))


cdef int _method_enum_p(const char* p, Py_ssize_t n) noexcept:
    if n == 3:
        if memcmp(p, b"GET", 3) == 0:
            return 1
        if memcmp(p, b"PUT", 3) == 0:
            return 4
    elif n == 4:
        if memcmp(p, b"POST", 4) == 0:
            return 3
        if memcmp(p, b"HEAD", 4) == 0:
            return 2
    elif n == 5:
        if memcmp(p, b"PATCH", 5) == 0:
            return 9
        if memcmp(p, b"TRACE", 5) == 0:
            return 8
    elif n == 6:
        if memcmp(p, b"DELETE", 6) == 0:
            return 5
    elif n == 7:
        if memcmp(p, b"OPTIONS", 7) == 0:
            return 7
        if memcmp(p, b"CONNECT", 7) == 0:
            return 6
    return 0


cdef int _http_entry(PbWriter w, int64_t start_ns, int64_t dur_ns, int status, int method,
                     const char* path, Py_ssize_t path_n, const char* auth, Py_ssize_t auth_n,
                     const char* cluster, Py_ssize_t cluster_n,
                     const char* up, Py_ssize_t up_n, int up_port,
                     const char* rip, Py_ssize_t rip_n, int rport, uint64_t rx,
                     uint64_t tx, bytes down_field=None, bytes up_field=None) except -1:
    """One log_entry (HTTPAccessLogEntry) from C values; an absent string has length 0, an
    absent upstream address up_port < 0. down_field / up_field: the downstream / upstream
    address fields already encoded (_address_field), used instead of rip / up."""
    # room for everything below: fixed parts well under 512 bytes, strings at most doubled
    w.reserve(512 + 2 * (path_n + auth_n) + cluster_n + up_n + rip_n
              + (PyBytes_GET_SIZE(down_field) if down_field is not None else 0)
              + (PyBytes_GET_SIZE(up_field) if up_field is not None else 0))
    w.begin(1)  # StreamAccessLogsMessage.HTTPAccessLogEntries.log_entry
    w.begin(1)  # common_properties: AccessLogCommon
    if down_field is not None:
        w.put(down_field)
    elif rip_n > 0:  # downstream_remote_address (an IP address: ASCII)
        w.socket_address(2, rip, rip_n, <uint64_t>rport if rport > 0 else 0)
    w.seconds_nanos(5, start_ns)  # start_time
    w.seconds_nanos(12, dur_ns)  # time_to_last_downstream_tx_byte
    if up_field is not None:
        w.put(up_field)
    elif up_port >= 0:
        w.socket_address(13, up, up_n, <uint64_t>up_port)  # upstream_remote_address
    w.raw(15, cluster, cluster_n)  # upstream_cluster
    w.seconds_nanos(23, dur_ns)  # duration
    w.end()
    w.uint(2, 2)  # protocol_version: HTTP11
    w.begin(3)  # request: HTTPRequestProperties
    w.uint(1, <uint64_t>method)  # request_method
    w.raw(2, "http", 4)  # scheme
    w.latin1(3, auth, auth_n)  # authority
    w.latin1(5, path, path_n)  # path
    w.uint(12, rx)  # request_body_bytes
    w.end()
    w.begin(4)  # response: HTTPResponseProperties
    if status > 0:
        w.begin(1)  # response_code: UInt32Value
        w.uint(1, <uint64_t>status)
        w.end()
    w.uint(3, tx)  # response_body_bytes
    w.end()
    w.end()
    return 0


cdef bytes _address_field(int field, const char* host, Py_ssize_t n, uint64_t port):
    """An Address field (socket_address) encoded alone, to be reused by HttpLogBuffer."""
    cdef PbWriter w = PbWriter(n + 64)
    w.socket_address(field, host, n, port)
    return w.take()


cdef inline const char* _utf8(str s, Py_ssize_t* n) except? NULL:
    """s's UTF-8 bytes, cached inside the str (no copy); length 0 for None or ''."""
    if not s:
        n[0] = 0
        return ""
    return PyUnicode_AsUTF8AndSize(s, n)


cdef inline const char* _bytes(bytes b, Py_ssize_t* n) noexcept:
    if b is None:
        n[0] = 0
        return ""
    n[0] = PyBytes_GET_SIZE(b)
    return PyBytes_AS_STRING(b)


cdef bytes _message(bytes identifier, const char* entries, Py_ssize_t n):
    """StreamAccessLogsMessage bytes: identifier (if any), then http_logs around `entries`
    (already encoded log_entry fields)."""
    cdef Py_ssize_t idn = PyBytes_GET_SIZE(identifier)
    cdef PbWriter w = PbWriter(idn + n + 32)
    w.raw(1, PyBytes_AS_STRING(identifier), idn)
    w.tag(2, 2)
    w.varint(<uint64_t>n)
    memcpy(w.buf + w.pos, entries, n)
    w.pos += n
    return w.take()


def with_identifier(bytes message, bytes identifier=b""):
    """A StreamAccessLogsMessage from HttpLogBuffer.take_message() with the stream's
    Identifier in front (the first message of a stream; b"": the message as it is)."""
    cdef Py_ssize_t idn = PyBytes_GET_SIZE(identifier)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(message)
    cdef PbWriter w
    if idn == 0:
        return message
    w = PbWriter(idn + n + 16)
    w.raw(1, PyBytes_AS_STRING(identifier), idn)
    memcpy(w.buf + w.pos, PyBytes_AS_STRING(message), n)
    w.pos += n
    return w.take()


def wrap_http_logs(bytes entries, bytes identifier=b""):
    """The serialized StreamAccessLogsMessage of entries from HttpLogBuffer.take_entries()."""
    return _message(identifier, PyBytes_AS_STRING(entries), PyBytes_GET_SIZE(entries))


def encode_http_logs(list batch, bytes identifier=b""):
    """The serialized StreamAccessLogsMessage for `batch`, a list of entry tuples (see the
    module doc): the same encoder as HttpLogBuffer.log, for entries made elsewhere."""
    cdef PbWriter w = PbWriter(256 + 160 * len(batch))
    cdef tuple e
    cdef Py_ssize_t pn, an, cn, un, rn
    cdef const char* pp
    cdef const char* ap
    cdef const char* cp
    cdef const char* up
    cdef const char* rp
    cdef int port
    cdef str host, sport
    for e in batch:
        host, port = "", -1
        if e[7] and e[7] != "-":
            host, _, sport = (<str>e[7]).rpartition(":")
            if sport.isdigit():
                port = int(sport)
        pp = _bytes(e[4], &pn)
        ap = _bytes(e[5], &an)
        cp = _utf8(e[6], &cn)
        up = _utf8(host, &un)
        rp = _bytes(e[8], &rn)
        _http_entry(w, <int64_t>(<double>e[0] * 1e9), <int64_t>(<double>e[1] * 1e6),
                    e[2] or 0, _method_enum(e[3]), pp, pn, ap, an, cp, cn, up, un, port,
                    rp, rn, 0, e[9], e[10])
    return _message(identifier, w.buf, w.pos)


cdef enum:
    # room left in front of HttpLogBuffer's entries for the http_logs field's tag and length
    # (a varint of at most 5 bytes), so that take_message() copies the batch once
    _HEAD = 6


cdef class HttpLogBuffer(StreamLog):
    """The per-request half of envoy.access_loggers.http_grpc: `log(stream, duration_ms)`
    encodes the stream's entry straight into a buffer (no tuple, no protobuf object); the
    Python half (proxy/grpc_access_log.py, a subclass) sends what `take()` returns. Calls
    `self.flush()` when `buffer_size` bytes are buffered and `self.arm()` on the first entry
    after a flush (the flush timer)."""

    cdef PbWriter w
    cdef public Py_ssize_t count
    cdef public Py_ssize_t buffer_size
    # PERF(benchmarks/instr_per_request.py --mixer als): the address fields of the last
    # downstream peer and upstream host, encoded once (~110 instructions each an entry):
    # keyed by the very objects they were made from (kept here, so never reused for others)
    cdef bytes down_ip                  # s.remote_ip of down_field
    cdef int down_port
    cdef bytes down_field               # downstream_remote_address, encoded
    cdef str up_address                 # Host.address of up_field
    cdef int up_port
    cdef bytes up_field                 # upstream_remote_address, encoded

    def __cinit__(self, *args, **kwargs):
        self.w = PbWriter(4096)
        self.w.pos = _HEAD
        self.count = 0
        self.buffer_size = 16384

    def log(self, HttpStream s, double duration_ms):
        """The stream's entry (Python callers: access log sets, tests)."""
        self.log_stream(s, duration_ms)

    cdef int log_stream(self, HttpStream s, double duration_ms) except -1:
        cdef timespec ts
        cdef int64_t dur_ns = <int64_t>(duration_ms * 1e6)
        cdef int method = 0, path_n = 0
        cdef const char* path = ""
        cdef bytes authority = None
        cdef Cluster cl = s.cluster
        cdef Host host = s.host
        cdef Py_ssize_t auth_n, cl_n = 0, up_n = 0, rip_n
        cdef const char* auth
        cdef const char* cl_p = ""
        cdef const char* up_p
        cdef const char* rip
        cdef bytes up_field, down_field
        cdef Head h1
        clock_gettime(CLOCK_REALTIME, &ts)
        auth = NULL
        if s.resp_flags != "DPE":  # else the request head did not parse: nothing to read
            path = s.head.path_ptr(&path_n)
            if type(s.head) is Head:
                # PERF(benchmarks/instr_per_request.py --mixer als): views into the HTTP/1
                # head, not two bytes objects made and freed per entry (~200 instructions)
                h1 = <Head>s.head
                method = _method_enum_p(h1.base, h1.method_len)
                auth = h1.authority_ptr(&auth_n)
                if auth == NULL:
                    authority = h1.authority()
            else:
                method = _method_enum(s.head.method())
                authority = s.head.authority()
        if auth == NULL:
            auth = _bytes(authority, &auth_n)
        if cl is not None:
            cl_p = _utf8(cl.name, &cl_n)
        up_field = None
        if host is not None and s.upstream_host != "-":  # a connection was attached
            if host.address is not self.up_address or host.port != self.up_port:
                up_p = _utf8(host.address, &up_n)
                self.up_field = _address_field(13, up_p, up_n, <uint64_t>host.port)
                self.up_address = host.address
                self.up_port = host.port
            up_field = self.up_field
        down_field = None
        if s.remote_ip is not None and PyBytes_GET_SIZE(s.remote_ip) > 0:
            if s.remote_ip is not self.down_ip or s.remote_port != self.down_port:
                rip = _bytes(s.remote_ip, &rip_n)
                self.down_field = _address_field(
                    2, rip, rip_n, <uint64_t>s.remote_port if s.remote_port > 0 else 0)
                self.down_ip = s.remote_ip
                self.down_port = s.remote_port
            down_field = self.down_field
        _http_entry(self.w, <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec - dur_ns, dur_ns,
                    s.resp_status, method, path, path_n, auth, auth_n, cl_p, cl_n,
                    "", 0, -1, "", 0, 0, s.bytes_rx, s.bytes_tx, down_field, up_field)
        self.count += 1
        if self.w.pos - _HEAD >= self.buffer_size:
            self.flush()
        elif self.count == 1:
            self.arm()
        return 0

    def take_entries(self):
        """(the encoded log_entry fields buffered, their number); empties the buffer.
        wrap_http_logs() makes them a message."""
        cdef Py_ssize_t n = self.count
        cdef bytes out = PyBytes_FromStringAndSize(self.w.buf + _HEAD, self.w.pos - _HEAD)
        self.w.pos = _HEAD
        self.count = 0
        return out, n

    def take_message(self):
        """(the entries buffered as one StreamAccessLogsMessage without identifier, their
        number); empties the buffer. with_identifier() adds the identifier a stream's first
        message carries. PERF(benchmarks/instr_per_request.py --mixer als): one copy of the
        batch (take_entries + wrap_http_logs copy it twice)."""
        cdef Py_ssize_t count = self.count
        cdef Py_ssize_t n = self.w.pos - _HEAD
        cdef Py_ssize_t k = 1
        cdef uint64_t v = <uint64_t>n
        cdef bytes out
        while v >= 0x80:
            v >>= 7
            k += 1
        self.w.pos = _HEAD - 1 - k      # http_logs (field 2): tag, length, then the entries
        self.w.tag(2, 2)
        self.w.varint(<uint64_t>n)
        out = PyBytes_FromStringAndSize(self.w.buf + _HEAD - 1 - k, 1 + k + n)
        self.w.pos = _HEAD
        self.count = 0
        return out, count

    @property
    def entry_bytes(self):
        """Bytes of encoded entries buffered."""
        return self.w.pos - _HEAD

    def flush(self):
        raise NotImplementedError

    def arm(self):
        raise NotImplementedError
