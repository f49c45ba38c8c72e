# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Protobuf wire encoding of gRPC access log batches, without building protobuf objects.

`encode_http_logs(batch, identifier)` turns the tuples `GrpcAccessLog.log` buffers into the
bytes of one `envoy.service.accesslog.v3.StreamAccessLogsMessage` (`identifier` = 1, the
serialized Identifier of the stream's first message or b""; `http_logs` = 2, each tuple one
`envoy.data.accesslog.v3.HTTPAccessLogEntry`). Building the same message with the protobuf
runtime cost about 10 us per entry, most of a proxied request's CPU; this costs well under
one. Field numbers are those of the generated descriptors (tests/unit/test_als_wire.py parses
the output with them and compares every field).

Entry tuple: (start_time_s, duration_ms, status, method, path, authority, cluster,
upstream_host "ip:port" or "-", downstream_remote_ip, request_body_bytes, response_body_bytes).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memmove

# HTTPRequestProperties.request_method (envoy.config.core.v3.RequestMethod)
cdef dict _METHODS = {
    b"GET": 1, b"HEAD": 2, b"POST": 3, b"PUT": 4, b"DELETE": 5, b"CONNECT": 6, b"OPTIONS": 7,
    b"TRACE": 8, b"PATCH": 9,
}  # fmt: skip

DEF MAX_DEPTH = 8


cdef class PbWriter:
    """An append-only protobuf writer; nested messages are opened with begin() and closed with
    end(), which writes the length in front of the content (moving it by the varint's size)."""

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

    cdef inline int reserve(self, Py_ssize_t n) except -1:
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

    cdef inline int varint(self, uint64_t v) except -1:
        self.reserve(10)
        while v >= 0x80:
            self.buf[self.pos] = <char>((v & 0x7F) | 0x80)
            self.pos += 1
            v >>= 7
        self.buf[self.pos] = <char>v
        self.pos += 1
        return 0

    cdef inline int tag(self, int field, int wire) except -1:
        return self.varint(<uint64_t>((field << 3) | wire))

    cdef int uint(self, int field, uint64_t v) except -1:
        if v:
            self.tag(field, 0)
            self.varint(v)
        return 0

    cdef int raw(self, int field, const char* data, Py_ssize_t n) except -1:
        if n <= 0:
            return 0
        self.tag(field, 2)
        self.varint(<uint64_t>n)
        self.reserve(n)
        memcpy(self.buf + self.pos, data, n)
        self.pos += n
        return 0

    cdef int bytes_(self, int field, bytes b) except -1:
        return self.raw(field, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))

    cdef int latin1(self, int field, bytes b) except -1:
        """A string field from wire bytes read as Latin-1 (a protobuf string must be UTF-8):
        ASCII as it is, anything else re-encoded."""
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(b)
        cdef Py_ssize_t i, n = PyBytes_GET_SIZE(b)
        for i in range(n):
            if p[i] >= 0x80:
                return self.bytes_(field, b.decode("latin-1").encode("utf-8"))
        return self.bytes_(field, b)

    cdef int text(self, int field, str s) except -1:
        if s:
            self.bytes_(field, s.encode("utf-8"))
        return 0

    cdef int begin(self, int field) except -1:
        if self.depth == MAX_DEPTH:
            raise ValueError("protobuf nesting too deep")
        self.tag(field, 2)
        self.starts[self.depth] = self.pos
        self.depth += 1
        return 0

    cdef int end(self) except -1:
        cdef Py_ssize_t start, n, k
        cdef uint64_t v
        self.depth -= 1
        start = self.starts[self.depth]
        n = self.pos - start
        k = 1
        v = <uint64_t>n
        while v >= 0x80:
            v >>= 7
            k += 1
        self.reserve(k)
        memmove(self.buf + start + k, self.buf + start, n)
        self.pos = start
        self.varint(<uint64_t>n)
        self.pos = start + k + n
        return 0

    cdef int seconds_nanos(self, int field, int64_t ns) except -1:
        """A google.protobuf.Timestamp or Duration of `ns` nanoseconds (ns >= 0)."""
        if ns < 0:
            ns = 0
        self.begin(field)
        self.uint(1, <uint64_t>(ns // 1000000000))
        self.uint(2, <uint64_t>(ns % 1000000000))
        return self.end()

    cdef int socket_address(self, int field, str host, uint64_t port) except -1:
        """An envoy.config.core.v3.Address with its socket_address."""
        self.begin(field)
        self.begin(1)
        self.text(2, host)
        self.uint(3, port)
        self.end()
        return self.end()

    cdef bytes take(self):
        cdef bytes out = PyBytes_FromStringAndSize(self.buf, self.pos)
        self.pos = 0
        return out


cdef int _http_entry(PbWriter w, tuple e) except -1:
    cdef double start = e[0]
    cdef double ms = e[1]
    cdef object status = e[2]
    cdef object method = e[3]
    cdef bytes path = e[4]
    cdef bytes authority = e[5]
    cdef str cluster = e[6]
    cdef object up = e[7]
    cdef object rip = e[8]
    cdef int64_t dur_ns = <int64_t>(ms * 1e6)
    cdef str host, port
    w.begin(1)  # StreamAccessLogsMessage.HTTPAccessLogEntries.log_entry
    w.begin(1)  # common_properties: AccessLogCommon
    if rip:
        w.socket_address(2, (<bytes>rip).decode("latin-1"), 0)  # downstream_remote_address
    w.seconds_nanos(5, <int64_t>(start * 1e9))  # start_time
    w.seconds_nanos(12, dur_ns)  # time_to_last_downstream_tx_byte
    if up and up != "-":
        host, _, port = (<str>up).rpartition(":")
        if port.isdigit():
            w.socket_address(13, host, int(port))  # upstream_remote_address
    w.text(15, cluster)  # upstream_cluster
    w.seconds_nanos(23, dur_ns)  # duration
    w.end()
    w.uint(2, 2)  # protocol_version: HTTP11
    w.begin(3)  # request: HTTPRequestProperties
    w.uint(1, _METHODS.get(method or b"", 0))  # request_method
    w.raw(2, "http", 4)  # scheme
    w.latin1(3, authority)
    w.latin1(5, path)
    w.uint(12, <uint64_t>e[9])  # request_body_bytes
    w.end()
    w.begin(4)  # response: HTTPResponseProperties
    if status:
        w.begin(1)  # response_code: UInt32Value
        w.uint(1, <uint64_t>status)
        w.end()
    w.uint(3, <uint64_t>e[10])  # response_body_bytes
    w.end()
    w.end()
    return 0


def encode_http_logs(list batch, bytes identifier=b""):
    """The serialized StreamAccessLogsMessage for `batch` (see the module doc)."""
    cdef PbWriter w = PbWriter(256 + 160 * len(batch))
    cdef object e
    if identifier:
        w.bytes_(1, identifier)
    w.begin(2)  # http_logs
    for e in batch:
        _http_entry(w, <tuple>e)
    w.end()
    return w.take()
