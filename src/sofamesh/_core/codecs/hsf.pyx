# HSF v1 framing (sans-IO), as far as the public layout goes (see PROTOCOLS.md): an HSF
# port is proxied as opaque TCP; this codec frames and names requests for stats and tests.
#
# Request (magic 0x0e, type 0), header 35 + 8*argc bytes:
#   0     1     2     3      4        7            15         19       23       27
#   +-----+-----+-----+------+--------+------------+----------+--------+--------+------+
#   |0x0e |ver 1|type0|serial|ext (3) | request id | timeout  |svc len |meth len| argc |
#   |     |     |     |(4 h2)|        |   u64      |   u32    |  u32   |  u32   | u32  |
#   +-----+-----+-----+------+--------+------------+----------+--------+--------+------+
#   | argc x type len u32 | argc x arg len u32 | props len u32 |
#   | service | method | types... | args... | props (hessian2 map)                    |
#
# Response (magic 0x0e, type 1), header 20 bytes:
#   0 magic | 1 version | 2 type 1 | 3 status | 4 serialization | 5-7 ext | 8 request id
#   u64 | 16 body length u32 | body
#
# Heartbeat: magic 0x0c, 18 bytes, request id u64 at offset 6.


from sofamesh._core.codecs.rpcframe cimport FrameDecoder, make_error


cdef inline unsigned int _u32(const unsigned char* p) noexcept:
    return ((<unsigned int>p[0] << 24) | (<unsigned int>p[1] << 16)
            | (<unsigned int>p[2] << 8) | p[3])


cdef inline unsigned long long _u64(const unsigned char* p) noexcept:
    cdef unsigned long long v = 0
    for i in range(8):
        v = (v << 8) | p[i]
    return v


cdef class HsfFrame:
    def __init__(self, int kind=HSF_REQUEST, unsigned long long request_id=0, int version=1,
                 int serialization=4, bytes ext=None, unsigned int timeout=3000,
                 str service="", str method="", types=(), args=(), props=b"", int status=0,
                 body=b"", bytes heartbeat_rest=b"\x00\x00\x00\x00"):
        self.kind = kind
        self.request_id = request_id
        self.version = version
        self.serialization = serialization
        self.ext = ext if ext is not None else (b"\0" * (4 if kind == HSF_HEARTBEAT else 3))
        self.timeout = timeout
        self.service = service
        self.method = method
        self.types = [bytes(t) for t in types]
        self.args = [bytes(a) for a in args]
        self.props = props
        self.status = status
        self.body = body
        self.heartbeat_rest = heartbeat_rest
        self.raw = None

    cpdef bytes encode(self):
        cdef list parts
        if self.kind == HSF_HEARTBEAT:
            return (b"\x0c" + bytes((self.version,)) + self.ext
                    + self.request_id.to_bytes(8, "big") + self.heartbeat_rest)
        if self.kind == HSF_RESPONSE:
            return (b"\x0e" + bytes((self.version, 1, self.status, self.serialization))
                    + self.ext + self.request_id.to_bytes(8, "big")
                    + len(self.body).to_bytes(4, "big") + bytes(self.body))
        svc = self.service.encode()
        meth = self.method.encode()
        parts = [b"\x0e", bytes((self.version, 0, self.serialization)), self.ext,
                 self.request_id.to_bytes(8, "big"), self.timeout.to_bytes(4, "big"),
                 len(svc).to_bytes(4, "big"), len(meth).to_bytes(4, "big"),
                 len(self.types).to_bytes(4, "big")]
        parts += [len(t).to_bytes(4, "big") for t in self.types]
        parts += [len(a).to_bytes(4, "big") for a in self.args]
        parts.append(len(self.props).to_bytes(4, "big"))
        parts += [svc, meth] + [bytes(t) for t in self.types] + [bytes(a) for a in self.args]
        parts.append(bytes(self.props))
        return b"".join(parts)

    def __repr__(self):
        kind = ("request", "response", "heartbeat")[self.kind]
        return f"HsfFrame({kind}, id={self.request_id}, {self.service}/{self.method})"


cdef class HsfDecoder(FrameDecoder):
    cdef Py_ssize_t frame_length(self, const unsigned char* p, Py_ssize_t n) except -2:
        cdef unsigned long long total, argc
        cdef Py_ssize_t hs, i
        if p[0] == 0x0c:
            return 18
        if p[0] != 0x0e:
            self.fail_reason = f"hsf: bad magic 0x{p[0]:02x}"
            return -1
        if n < 3:
            self.need = 20
            return 0
        if p[2] == 1:
            if n < 20:
                self.need = 20
                return 0
            total = 20 + <unsigned long long>_u32(p + 16)
        elif p[2] == 0:
            if n < 35:
                self.need = 35
                return 0
            argc = _u32(p + 27)
            if argc > 255:
                self.fail_reason = f"hsf: {argc} arguments"
                return -1
            hs = 35 + 8 * argc
            if n < hs:
                self.need = hs
                return 0
            total = hs + <unsigned long long>_u32(p + 19) + _u32(p + 23)
            for i in range(2 * argc + 1):
                total += _u32(p + 31 + 4 * i)
        else:
            self.fail_reason = f"hsf: bad type {p[2]}"
            return -1
        if total > <unsigned long long>self.max_frame:
            self.fail_reason = f"hsf: frame of {total} bytes over the {self.max_frame} limit"
            return -1
        return <Py_ssize_t>total

    cdef object parse(self, bytes buf, object mv, Py_ssize_t start, Py_ssize_t n):
        cdef const unsigned char* p = <const unsigned char*><char*>buf + start
        cdef HsfFrame f = HsfFrame.__new__(HsfFrame)
        cdef Py_ssize_t argc, o, i, sl, ml
        f.raw = mv[start:start + n]
        f.version = p[1]
        if p[0] == 0x0c:
            f.kind = HSF_HEARTBEAT
            f.request_id = _u64(p + 6)
            f.ext = buf[start + 2:start + 6]
            f.heartbeat_rest = buf[start + 14:start + 18]
            return f
        f.serialization = p[3] if p[2] == 0 else p[4]
        if p[2] == 1:
            f.kind = HSF_RESPONSE
            f.status = p[3]
            f.ext = buf[start + 5:start + 8]
            f.request_id = _u64(p + 8)
            f.body = mv[start + 20:start + n]
            return f
        f.kind = HSF_REQUEST
        f.ext = buf[start + 4:start + 7]
        f.request_id = _u64(p + 7)
        f.timeout = _u32(p + 15)
        sl = _u32(p + 19)
        ml = _u32(p + 23)
        argc = _u32(p + 27)
        o = 35 + 8 * argc
        try:
            f.service = buf[start + o:start + o + sl].decode("utf-8")
            o += sl
            f.method = buf[start + o:start + o + ml].decode("utf-8")
            o += ml
        except UnicodeDecodeError:
            return make_error("hsf: service or method is not UTF-8", False, f.request_id, f)
        f.types = []
        f.args = []
        for i in range(argc):
            sl = _u32(p + 31 + 4 * i)
            f.types.append(mv[start + o:start + o + sl])
            o += sl
        for i in range(argc):
            sl = _u32(p + 31 + 4 * (argc + i))
            f.args.append(mv[start + o:start + o + sl])
            o += sl
        f.props = mv[start + o:start + n]
        return f


globals().update({_m.name: int(_m) for _m in HsfKind})
