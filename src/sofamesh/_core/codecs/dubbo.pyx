# Dubbo2 codec (sans-IO): bytes in, DubboFrames out; DubboFrames out, bytes in.
#
#   0      2      3      4                      12             16
#   +------+------+------+----------------------+--------------+---------------------+
#   |magic |flags |status|  request id (i64)    | body len i32 | body (hessian2)     |
#   |0xdabb|      |      |                      |              |                     |
#   +------+------+------+----------------------+--------------+---------------------+
#   flags: 0x80 request, 0x40 two-way, 0x20 event; low 5 bits: serialization (2 hessian2)
#   status (responses): 20 OK, 25 serialization error, 30/31 client/server timeout, 35
#   channel inactive, 40 bad request, 50 bad response, 60 service not found, 70 service
#   error, 80 server error, 90 client error, 100 server thread pool exhausted.
#
# Request body (hessian2 values, one Hessian2Output: class definitions span the body):
#   dubbo version | service path | service version (or N) | method | parameter descriptor
#   ("Ljava/lang/String;I") | one value per parameter | attachments map (H ... Z)
# Response body (status 20): int flag (0 exception, 1 value, 2 null; 3/4/5 the same with
#   attachments) | value or exception | [attachments]. Status != 20: one error string.
# Event body: N (heartbeat), or a string ("R" read-only, "W" writable).

from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING

from sofamesh._core.codecs.rpcframe cimport (
    FrameDecoder, RpcFrame, RK_SERVICE, RK_METHOD, RK_VERSION, RK_GROUP, RK_SERVICE_ID,
)
from sofamesh._core.codecs.hessian cimport H2Cursor, h2_encode_str
from sofamesh._core.codecs.hessian import h2_encode_map

STATUS_NAMES = {
    DUBBO_OK: "OK", DUBBO_SERIALIZATION_ERROR: "SERIALIZATION_ERROR",
    DUBBO_CLIENT_TIMEOUT: "CLIENT_TIMEOUT", DUBBO_SERVER_TIMEOUT: "SERVER_TIMEOUT",
    DUBBO_CHANNEL_INACTIVE: "CHANNEL_INACTIVE", DUBBO_BAD_REQUEST: "BAD_REQUEST",
    DUBBO_BAD_RESPONSE: "BAD_RESPONSE", DUBBO_SERVICE_NOT_FOUND: "SERVICE_NOT_FOUND",
    DUBBO_SERVICE_ERROR: "SERVICE_ERROR", DUBBO_SERVER_ERROR: "SERVER_ERROR",
    DUBBO_CLIENT_ERROR: "CLIENT_ERROR",
    DUBBO_SERVER_THREADPOOL_EXHAUSTED: "SERVER_THREADPOOL_EXHAUSTED_ERROR",
}

HESSIAN2 = 2


cdef inline void _put64(unsigned char* p, unsigned long long v) noexcept:
    cdef int i
    for i in range(8):
        p[7 - i] = v & 0xff
        v >>= 8


cdef inline unsigned long long _u64(const unsigned char* p) noexcept:
    cdef unsigned long long v = 0
    cdef int i
    for i in range(8):
        v = (v << 8) | p[i]
    return v


cdef Py_ssize_t count_params(str desc):
    """Parameters in a JVM descriptor ("Ljava/lang/String;[IJ" -> 3), or -1 if malformed."""
    cdef Py_ssize_t i = 0, n = len(desc), count = 0
    cdef Py_UCS4 c
    while i < n:
        c = desc[i]
        while c == u'[':
            i += 1
            if i >= n:
                return -1
            c = desc[i]
        if c == u'L':
            j = desc.find(";", i)
            if j < 0:
                return -1
            i = j + 1
        elif c in u'ZBCDFIJSV':
            i += 1
        else:
            return -1
        count += 1
    return count


def param_count(str desc):
    return count_params(desc)


cdef class DubboFrame(RpcFrame):
    def __init__(self, unsigned long long request_id=0, bint request=True, bint two_way=True,
                 bint event=False, int serialization=HESSIAN2, int status=0, body=b""):
        self.request_id = request_id
        self.flags = serialization & 0x1f
        if request:
            self.flags |= 0x80
        if two_way:
            self.flags |= 0x40
        if event:
            self.flags |= 0x20
        self.status = status
        self._body = body
        self._raw = None
        self._mv = None
        self.parsed = 0

    @property
    def body(self):
        if self._body is None:
            self._body = self._mv[self._boff:self._boff + self._blen]
        return self._body

    @body.setter
    def body(self, v):
        self._body = v
        self._mv = None

    @property
    def raw(self):
        if self._raw is None and self._mv is not None:
            self._raw = self._mv[self._roff:self._roff + 16 + self._blen]
        return self._raw

    @property
    def is_request(self):
        return (self.flags & 0x80) != 0

    @property
    def two_way(self):
        return (self.flags & 0x40) != 0

    @property
    def is_event(self):
        return (self.flags & 0x20) != 0

    @property
    def serialization(self):
        return self.flags & 0x1f

    @property
    def is_heartbeat(self):
        b = self.body
        return (self.flags & 0x20) != 0 and (len(b) == 0 or (len(b) == 1 and b[0] == 0x4e))

    cpdef int parse_invocation(self, tuple wanted=None):
        """Decode a request body's routing fields and attachments (once). Returns 0, or an
        H_ERR_* code with `body_error` set; never raises. With `wanted` (attachment keys as
        UTF-8 bytes), only those attachments are decoded (the others are skipped)."""
        cdef H2Cursor c
        cdef Py_ssize_t nargs
        if self.parsed:
            return self.parse_err
        self.parsed = 1
        self.parse_err = 0
        try:
            if (self.flags & 0x1f) != HESSIAN2:
                self.body_error = f"dubbo: serialization {self.flags & 0x1f} not supported"
                self.parse_err = 100
                return self.parse_err
            if self._mv is not None:
                c = H2Cursor(self._base, self._boff, self._boff + self._blen)
            else:
                c = H2Cursor(self.body)
            self.dubbo_version = c.read_str()
            self.service = c.read_str()
            self.version = c.read_str()
            self.method = c.read_str()
            desc = c.read_str()
            if c.err:
                self.body_error = f"dubbo: bad invocation header (hessian error {c.err} at {c.pos})"
                self.parse_err = c.err
                return self.parse_err
            self.param_types = desc
            nargs = count_params(desc or "")
            if nargs < 0:
                self.body_error = f"dubbo: bad parameter descriptor {desc!r}"
                self.parse_err = 101
                return self.parse_err
            base = c.pos - (self._boff if self._mv is not None else 0)
            self.args_start = base
            for _ in range(nargs):
                if c.skip():
                    break
            if c.err:
                self.body_error = f"dubbo: bad argument (hessian error {c.err} at {c.pos})"
                self.parse_err = c.err
                return self.parse_err
            self.args_end = c.pos - (self._boff if self._mv is not None else 0)
            if c.pos < c.end:
                self.attachments = c.read_map() if wanted is None else c.read_map_keys(wanted)
                if c.err:
                    self.body_error = f"dubbo: bad attachments (hessian error {c.err} at {c.pos})"
                    self.parse_err = c.err
                    return self.parse_err
            else:
                self.attachments = {}
            self.body_end = c.pos - (self._boff if self._mv is not None else 0)
        except Exception as exc:  # belt and braces: untrusted bytes never raise out
            self.body_error = f"dubbo: {exc!r}"
            self.parse_err = 102
        return self.parse_err

    @property
    def group(self):
        if self.attachments is None:
            return None
        return self.attachments.get("group")

    # route keys: filled by parse_invocation(); the group is an attachment
    cdef object rpc_key(self, int key):
        if key == RK_SERVICE or key == RK_SERVICE_ID:
            return self.service
        if key == RK_METHOD:
            return self.method
        if key == RK_VERSION:
            return self.version
        if key == RK_GROUP:
            return None if self.attachments is None else self.attachments.get("group")
        return None

    cdef object rpc_header(self, str name):
        if self.attachments is None:
            return None
        v = self.attachments.get(name)
        if v is not None and not isinstance(v, str):
            v = str(v)
        return v

    cpdef object response_flag(self):
        """The result flag of an OK response (0-5), or None."""
        cdef H2Cursor c
        if self.flags & 0xa0 or self.status != DUBBO_OK or not len(self.body):
            return None
        c = H2Cursor(self.body)
        v = c.read_int()
        return None if c.err else v

    cpdef object error_message(self):
        """The error string of a non-OK response, or None."""
        cdef H2Cursor c
        if self.flags & 0x80 or self.status == DUBBO_OK or not len(self.body):
            return None
        c = H2Cursor(self.body)
        v = c.read_str()
        return None if c.err else v

    cpdef bytes encode(self):
        cdef Py_ssize_t bl = len(self.body)
        cdef bytes out = PyBytes_FromStringAndSize(NULL, 16 + bl)
        cdef unsigned char* p = <unsigned char*>PyBytes_AS_STRING(out)
        cdef const unsigned char[::1] bv
        p[0] = 0xda
        p[1] = 0xbb
        p[2] = self.flags
        p[3] = self.status
        _put64(p + 4, self.request_id)
        p[12] = (bl >> 24) & 0xff
        p[13] = (bl >> 16) & 0xff
        p[14] = (bl >> 8) & 0xff
        p[15] = bl & 0xff
        if bl:
            bv = self.body
            memcpy(p + 16, &bv[0], bl)
        return out

    def __repr__(self):
        kind = "event" if self.flags & 0x20 else ("request" if self.flags & 0x80 else "response")
        return (f"DubboFrame({kind}, id={self.request_id}, flags={self.flags:#04x}, "
                f"status={self.status}, body={len(self.body)}B)")


cdef class DubboDecoder(FrameDecoder):
    cdef Py_ssize_t frame_length(self, const unsigned char* p, Py_ssize_t n) except -2:
        cdef long long bl
        if p[0] != 0xda:
            self.fail_reason = f"dubbo: bad magic 0x{p[0]:02x}"
            return -1
        if n < 2:
            self.need = 16
            return 0
        if p[1] != 0xbb:
            self.fail_reason = f"dubbo: bad magic 0xda{p[1]:02x}"
            return -1
        if n < 16:
            self.need = 16
            return 0
        bl = <int>((<unsigned int>p[12] << 24) | (p[13] << 16) | (p[14] << 8) | p[15])
        if bl < 0:
            self.fail_reason = f"dubbo: negative body length {bl}"
            return -1
        if bl + 16 > self.max_frame:
            self.fail_reason = f"dubbo: frame of {bl + 16} bytes over the {self.max_frame} limit"
            return -1
        return 16 + bl

    cdef object parse(self, bytes buf, object mv, Py_ssize_t start, Py_ssize_t n):
        cdef const unsigned char* p = <const unsigned char*><char*>buf + start
        cdef DubboFrame f = DubboFrame.__new__(DubboFrame)
        f.flags = p[2]
        f.status = p[3]
        f.request_id = _u64(p + 4)
        f._base = buf
        f._mv = mv
        f._boff = start + 16
        f._blen = n - 16
        f._roff = start
        f.parsed = 0
        return f


cpdef bytes rewrite_request_id(DubboFrame f, unsigned long long new_id):
    cdef bytes out
    if f._mv is not None:  # decoded: copy the frame from the read it arrived in
        out = PyBytes_FromStringAndSize(PyBytes_AS_STRING(f._base) + f._roff, 16 + f._blen)
    else:
        out = f.encode()
    _put64(<unsigned char*>PyBytes_AS_STRING(out) + 4, new_id)
    return out


cpdef bytes heartbeat_response(DubboFrame req):
    """The reply to a heartbeat event: event flag, status 20, same id, body N."""
    cdef DubboFrame r = DubboFrame(req.request_id, request=False, two_way=False, event=True,
                                   serialization=req.flags & 0x1f, status=DUBBO_OK, body=b"N")
    return r.encode()


cpdef bytes heartbeat(unsigned long long request_id):
    return DubboFrame(request_id, request=True, two_way=True, event=True, body=b"N").encode()


cpdef bytes error_response(DubboFrame req, int status, str message):
    """A response to `req` with a non-OK status and an error string body."""
    cdef DubboFrame r = DubboFrame(req.request_id, request=False, two_way=False, event=False,
                                   serialization=req.flags & 0x1f, status=status,
                                   body=h2_encode_str(message))
    return r.encode()


def encode_request(unsigned long long request_id, str dubbo_version, str service, version,
                   str method, str param_types, args_raw=b"", attachments=None,
                   bint two_way=True):
    """A hessian2 request: the routing fields, pre-encoded arguments, an attachments map."""
    body = b"".join((
        h2_encode_str(dubbo_version), h2_encode_str(service),
        b"N" if version is None else h2_encode_str(version), h2_encode_str(method),
        h2_encode_str(param_types), bytes(args_raw),
        h2_encode_map(dict(attachments or {})),
    ))
    return DubboFrame(request_id, request=True, two_way=two_way, body=body).encode()


def encode_response(unsigned long long request_id, value_raw=b"", int flag=1):
    """An OK hessian2 response: the flag (1 value, 2 null, 0 exception) then the value."""
    body = bytes((0x90 + flag,)) + bytes(value_raw)
    return DubboFrame(request_id, request=False, two_way=False, status=DUBBO_OK,
                      body=body).encode()


globals().update({_m.name: int(_m) for _m in DubboStatus})
