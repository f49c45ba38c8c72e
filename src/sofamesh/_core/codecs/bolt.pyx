# SOFA Bolt v1/v2 codec (sans-IO): bytes in, BoltFrames out; BoltFrames out, bytes in.
#
# Bolt v1 (proto 0x01), request 22-byte header, response 20:
#
#   0      1      2      4      5          9      10           14        16        18       22
#   +------+------+------+------+----------+------+------------+---------+---------+--------+
#   |proto | type |cmdcode| ver2 |request id|codec | timeout i32|class len|hdr len  |content |
#   | 0x01 |0/1/2 | u16  |      |   u32    |      |  (status   |  u16    |  u16    |len u32 |
#   +------+------+------+------+----------+------+  u16 in a  +---------+---------+--------+
#   | class name | header map: ([i32 klen][key][i32 vlen][value])* | content              |
#   +------------+---------------------------------------------------+----------------------+
#   response: status u16 at 10, class len at 12, header len at 14, content len at 16.
#
# Bolt v2 (proto 0x02), request 24-byte header, response 22:
#
#   proto=0x02 | ver1 | type | cmdcode u16 | ver2 | request id u32 | codec | switch |
#   timeout i32 (status u16) | class len u16 | header len u16 | content len u32 |
#   class | header map | content | [crc32 u32: zlib CRC-32 of bytes 0..end of content,
#                                    present when ver1 == 2 and switch bit 0 is set]
#
# type: 0 response, 1 request, 2 oneway. cmdcode: 0 heartbeat, 1 request, 2 response.

from libc.string cimport memcmp, memcpy
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.unicode cimport PyUnicode_DecodeUTF8
from zlib import crc32 as _crc32

from sofamesh._core.codecs.rpcframe cimport (
    FrameDecoder, RpcFrame, make_error, RK_SERVICE, RK_METHOD, RK_VERSION, RK_GROUP,
    RK_SERVICE_ID,
)
from sofamesh._core.codecs.hessian cimport sofa_request_method

STATUS_NAMES = {
    STATUS_SUCCESS: "success", STATUS_ERROR: "error", STATUS_SERVER_EXCEPTION: "server exception",
    STATUS_UNKNOWN: "unknown", STATUS_SERVER_THREADPOOL_BUSY: "server threadpool busy",
    STATUS_ERROR_COMM: "error communication", STATUS_NO_PROCESSOR: "no processor",
    STATUS_TIMEOUT: "timeout", STATUS_CLIENT_SEND_ERROR: "client send error",
    STATUS_CODEC_EXCEPTION: "codec exception", STATUS_CONNECTION_CLOSED: "connection closed",
    STATUS_SERVER_SERIAL_EXCEPTION: "server serial exception",
    STATUS_SERVER_DESERIAL_EXCEPTION: "server deserial exception",
}

SOFA_REQUEST_CLASS = b"com.alipay.sofa.rpc.core.request.SofaRequest"
SOFA_RESPONSE_CLASS = b"com.alipay.sofa.rpc.core.response.SofaResponse"
SERVER_EXCEPTION_CLASS = b"com.alipay.remoting.rpc.exception.RpcServerException"


cdef inline unsigned int _u32(const unsigned char* p) noexcept:
    return ((<unsigned int>p[0] << 24) | (<unsigned int>p[1] << 16)
            | (<unsigned int>p[2] << 8) | p[3])


cdef inline unsigned int _u16(const unsigned char* p) noexcept:
    return (<unsigned int>p[0] << 8) | p[1]


cdef inline void _put32(unsigned char* p, unsigned int v) noexcept:
    p[0] = (v >> 24) & 0xff
    p[1] = (v >> 16) & 0xff
    p[2] = (v >> 8) & 0xff
    p[3] = v & 0xff


cdef inline void _put16(unsigned char* p, unsigned int v) noexcept:
    p[0] = (v >> 8) & 0xff
    p[1] = v & 0xff


cdef inline Py_ssize_t _hdr_size(int proto, int type_) noexcept:
    if proto == 1:
        return 20 if type_ == BOLT_TYPE_RESPONSE else 22
    return 22 if type_ == BOLT_TYPE_RESPONSE else 24


cdef object _parse_header_map(const unsigned char* p, Py_ssize_t n):
    """[(key, value)] from a header map; None when malformed."""
    cdef list out = []
    cdef Py_ssize_t pos = 0
    cdef int kl, vl
    while pos < n:
        if n - pos < 4:
            return None
        kl = <int>_u32(p + pos)
        pos += 4
        if kl == -1:
            key = None
        elif kl < 0 or kl > n - pos:
            return None
        else:
            key = PyUnicode_DecodeUTF8(<const char*>p + pos, kl, "replace")
            pos += kl
        if n - pos < 4:
            return None
        vl = <int>_u32(p + pos)
        pos += 4
        if vl == -1:
            val = None
        elif vl < 0 or vl > n - pos:
            return None
        else:
            val = PyUnicode_DecodeUTF8(<const char*>p + pos, vl, "replace")
            pos += vl
        out.append((key, val))
    return out


cdef bint _check_header_map(const unsigned char* p, Py_ssize_t n) noexcept:
    """The header map's lengths add up (no allocation; strings are decoded on use)."""
    cdef Py_ssize_t pos = 0
    cdef int ln
    while pos < n:
        for _ in range(2):
            if n - pos < 4:
                return False
            ln = <int>_u32(p + pos)
            pos += 4
            if ln == -1:
                continue
            if ln < 0 or ln > n - pos:
                return False
            pos += ln
    return True


cdef object _find_header(const unsigned char* p, Py_ssize_t n, bytes key):
    """The value of the first `key` entry of a (checked) header map, or None."""
    cdef Py_ssize_t pos = 0, klen = len(key)
    cdef int kl, vl
    cdef const char* k = key
    while n - pos >= 8:
        kl = <int>_u32(p + pos)
        pos += 4
        if kl > 0:
            pos += kl
        vl = <int>_u32(p + pos)
        pos += 4
        if kl == klen and memcmp(p + pos - 4 - kl, k, klen) == 0:
            if vl < 0:
                return None
            return PyUnicode_DecodeUTF8(<const char*>p + pos, vl, "replace")
        if vl > 0:
            pos += vl
    return None


cpdef bytes encode_header_map(object headers):
    """The wire form of [(key, value)] (or a dict); None keys/values are written as -1."""
    cdef list parts = []
    items = headers.items() if isinstance(headers, dict) else headers
    for k, v in items:
        for s in (k, v):
            if s is None:
                parts.append(b"\xff\xff\xff\xff")
            else:
                b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
                parts.append(len(b).to_bytes(4, "big"))
                parts.append(b)
    return b"".join(parts)


cdef class BoltFrame(RpcFrame):
    def __init__(self, int proto=1, int type=BOLT_TYPE_REQUEST, int cmdcode=BOLT_CMD_REQUEST,
                 unsigned int request_id=0, int codec=1, int timeout=-1, int status=0,
                 class_name=b"", headers=None, content=b"", int ver1=1, int ver2=1,
                 int switch=0):
        self.proto = proto
        self.ver1 = ver1
        self.type = type
        self.cmdcode = cmdcode
        self.ver2 = ver2
        self.request_id = request_id
        self.codec = codec
        self.switch = switch
        self.timeout = timeout
        self.status = status
        self._class_name = (class_name.encode() if isinstance(class_name, str)
                            else bytes(class_name))
        self._headers = list(headers.items()) if isinstance(headers, dict) \
            else list(headers or [])
        self._header_raw = encode_header_map(self._headers)
        self._base = self._header_raw
        self._hoff = 0
        self._hlen = len(self._header_raw)
        self._content = content
        self._raw = None
        self._mv = None
        self.crc = 0

    @property
    def class_name(self):
        if self._class_name is None:
            self._class_name = self._base[self._coff:self._coff + self._clen]
        return self._class_name

    @class_name.setter
    def class_name(self, v):
        self._class_name = v.encode() if isinstance(v, str) else bytes(v)

    @property
    def header_raw(self):
        if self._header_raw is None:
            self._header_raw = self._mv[self._hoff:self._hoff + self._hlen]
        return self._header_raw

    @property
    def content(self):
        if self._content is None:
            self._content = self._mv[self._boff:self._boff + self._blen]
        return self._content

    @content.setter
    def content(self, v):
        self._content = v

    @property
    def raw(self):
        if self._raw is None and self._mv is not None:
            self._raw = self._mv[self._roff:self._roff + self._rlen]
        return self._raw

    @property
    def is_request(self):
        return self.type != BOLT_TYPE_RESPONSE

    @property
    def is_oneway(self):
        return self.type == BOLT_TYPE_ONEWAY

    @property
    def is_heartbeat(self):
        return self.cmdcode == BOLT_CMD_HEARTBEAT

    @property
    def has_crc(self):
        return self.proto == 2 and self.ver1 == 2 and (self.switch & 1)

    cpdef list headers(self):
        """[(key, value)] in wire order (decoded on first use; bad UTF-8 is replaced)."""
        if self._headers is None and self._base is None:
            self._headers = []
        if self._headers is None:
            parsed = _parse_header_map(<const unsigned char*><char*>self._base + self._hoff,
                                       self._hlen) if self._hlen else []
            self._headers = parsed if parsed is not None else []
        return self._headers

    cpdef object header(self, str name):
        """One header's value; read from the wire bytes without decoding the others."""
        if self._headers is None and self._base is not None:
            # PERF: rpc_bench (bolt): routing reads one or two headers of ~16 per request
            return _find_header(<const unsigned char*><char*>self._base + self._hoff,
                                self._hlen, name.encode())
        for k, v in self._headers:
            if k == name:
                return v
        return None

    cpdef object service(self):
        """The routing service name: `service`, else `sofa_head_target_service`."""
        v = self.header("service")
        if v is None:
            v = self.header("sofa_head_target_service")
        return v

    cpdef object method(self):
        """The method: `sofa_head_method_name`, else from the SofaRequest hessian content."""
        if self._method is not None:
            return self._method
        v = self.header("sofa_head_method_name")
        if v is None and self.codec == 1:
            if self._mv is not None:
                if self._blen:
                    v = sofa_request_method(self._base, self._boff, self._boff + self._blen)
            elif len(self.content):
                v = sofa_request_method(self.content)
        self._method = v
        return v

    cdef object rpc_key(self, int key):
        # the service header names the interface, version and group: interface[:version[:group]]
        cdef list svc = self._svc
        if key == RK_METHOD:
            return self.method()
        if key == RK_SERVICE_ID:
            return self.service()
        if svc is None:
            s = self.service()
            svc = self._svc = [] if s is None else s.split(":")
        if key == RK_SERVICE:
            return svc[0] if svc else None
        if key == RK_VERSION:
            return svc[1] if len(svc) > 1 else None
        if key == RK_GROUP:
            return svc[2] if len(svc) > 2 else None
        return None

    cdef object rpc_header(self, str name):
        return self.header(name)

    cpdef bytes encode(self):
        """The frame's wire bytes from its fields (CRC written when the switch says so)."""
        cdef Py_ssize_t hs = _hdr_size(self.proto, self.type)
        cdef bytes cls = self.class_name
        content = self.content
        cdef bytes hdr_map = bytes(self.header_raw) if self._headers is None \
            else encode_header_map(self._headers)
        cdef Py_ssize_t cl = len(cls), hl = len(hdr_map), bl = len(content)
        cdef bint crc = self.proto == 2 and self.ver1 == 2 and (self.switch & 1)
        cdef Py_ssize_t total = hs + cl + hl + bl + (4 if crc else 0)
        cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
        cdef unsigned char* p = <unsigned char*>PyBytes_AS_STRING(out)
        cdef Py_ssize_t o
        cdef const unsigned char[::1] cv
        p[0] = self.proto
        if self.proto == 1:
            o = 1
        else:
            p[1] = self.ver1
            o = 2
        p[o] = self.type
        _put16(p + o + 1, self.cmdcode)
        p[o + 3] = self.ver2
        _put32(p + o + 4, self.request_id)
        p[o + 8] = self.codec
        o += 9
        if self.proto != 1:
            p[o] = self.switch
            o += 1
        if self.type == BOLT_TYPE_RESPONSE:
            _put16(p + o, self.status)
            o += 2
        else:
            _put32(p + o, <unsigned int>self.timeout)
            o += 4
        _put16(p + o, cl)
        _put16(p + o + 2, hl)
        _put32(p + o + 4, bl)
        o += 8
        memcpy(p + o, PyBytes_AS_STRING(cls), cl)
        o += cl
        memcpy(p + o, PyBytes_AS_STRING(hdr_map), hl)
        o += hl
        if bl:
            cv = content
            memcpy(p + o, &cv[0], bl)
        o += bl
        if crc:
            _put32(p + o, <unsigned int>_crc32(memoryview(out)[:o]))
        return out

    def __repr__(self):
        kind = "heartbeat" if self.cmdcode == 0 else ("response" if self.type == 0 else "request")
        return (f"BoltFrame(v{self.proto}, {kind}, id={self.request_id}, codec={self.codec}, "
                f"status={self.status}, class={self.class_name!r}, content={len(self.content)}B)")


cdef class BoltDecoder(FrameDecoder):
    """Bolt v1 and v2 frames from a byte stream. Either version may arrive on one
    connection (clients choose per request)."""

    def __init__(self, Py_ssize_t max_frame=16 * 1024 * 1024, bint verify_crc=True):
        FrameDecoder.__init__(self, max_frame)
        self.verify_crc = verify_crc

    cdef Py_ssize_t frame_length(self, const unsigned char* p, Py_ssize_t n) except -2:
        cdef int proto = p[0], type_, o
        cdef Py_ssize_t hs, total
        if proto != 1 and proto != 2:
            self.fail_reason = f"bolt: bad protocol byte 0x{proto:02x}"
            return -1
        o = 1 if proto == 1 else 2
        if n < o + 1:
            self.need = o + 1
            return 0
        type_ = p[o]
        if type_ > 2:
            self.fail_reason = f"bolt: bad type {type_}"
            return -1
        hs = _hdr_size(proto, type_)
        if n < hs:
            self.need = hs
            return 0
        total = hs + <Py_ssize_t>_u16(p + hs - 8) + _u16(p + hs - 6) + <Py_ssize_t>_u32(p + hs - 4)
        if proto == 2 and p[1] == 2 and (p[11] & 1):
            total += 4
        if total > self.max_frame:
            self.fail_reason = f"bolt: frame of {total} bytes over the {self.max_frame} limit"
            return -1
        return total

    cdef object parse(self, bytes buf, object mv, Py_ssize_t start, Py_ssize_t n):
        cdef const unsigned char* p = <const unsigned char*><char*>buf + start
        cdef BoltFrame f = BoltFrame.__new__(BoltFrame)
        cdef Py_ssize_t o, hs, cl, hl, bl, end
        cdef unsigned int want
        f.proto = p[0]
        if f.proto == 1:
            f.ver1 = 1
            o = 1
        else:
            f.ver1 = p[1]
            o = 2
        f.type = p[o]
        f.cmdcode = _u16(p + o + 1)
        f.ver2 = p[o + 3]
        f.request_id = _u32(p + o + 4)
        f.codec = p[o + 8]
        o += 9
        if f.proto != 1:
            f.switch = p[o]
            o += 1
        if f.type == BOLT_TYPE_RESPONSE:
            f.status = _u16(p + o)
            f.timeout = -1
            o += 2
        else:
            f.timeout = <int>_u32(p + o)
            o += 4
        cl = _u16(p + o)
        hl = _u16(p + o + 2)
        bl = _u32(p + o + 4)
        hs = o + 8
        end = hs + cl + hl + bl
        f._base = buf
        f._mv = mv
        f._coff = start + hs
        f._clen = cl
        f._hoff = start + hs + cl
        f._hlen = hl
        f._boff = start + hs + cl + hl
        f._blen = bl
        f._roff = start
        f._rlen = n
        f._headers = None
        f._method = None
        if f.proto == 2 and f.ver1 == 2 and (f.switch & 1):
            f.crc = _u32(p + end)
            if self.verify_crc:
                want = <unsigned int>_crc32(mv[start:start + end])
                if want != f.crc:
                    return make_error(f"bolt: CRC-32 mismatch (frame {f.crc:#010x}, "
                                      f"computed {want:#010x})", False, f.request_id, f)
        if f.cmdcode > 2:
            return make_error(f"bolt: unknown cmdcode {f.cmdcode}", False, f.request_id, f)
        if hl and not _check_header_map(p + hs + cl, hl):
            f._hlen = 0
            f._headers = []
            return make_error("bolt: malformed header map", False, f.request_id, f)
        return f


cpdef bytes rewrite_request_id(BoltFrame f, unsigned int new_id):
    """The frame's wire bytes with another request id (CRC recomputed when present)."""
    cdef Py_ssize_t n, o = 5 if f.proto == 1 else 6
    cdef bytes out
    if f._mv is not None:  # decoded: copy the frame from the read it arrived in
        n = f._rlen
        out = PyBytes_FromStringAndSize(PyBytes_AS_STRING(f._base) + f._roff, n)
    else:
        out = f.encode()
        n = len(out)
    cdef unsigned char* p = <unsigned char*>PyBytes_AS_STRING(out)
    _put32(p + o, new_id)
    if f.proto == 2 and f.ver1 == 2 and (f.switch & 1):
        _put32(p + n - 4, <unsigned int>_crc32(memoryview(out)[:n - 4]))
    return out


cpdef bytes heartbeat_ack(BoltFrame req):
    """The ack for a heartbeat request: type 0, cmdcode 0, status 0, same id and version."""
    cdef BoltFrame r = BoltFrame(proto=req.proto, type=BOLT_TYPE_RESPONSE,
                                 cmdcode=BOLT_CMD_HEARTBEAT,
                                 request_id=req.request_id, codec=req.codec, status=0,
                                 ver1=req.ver1, ver2=req.ver2, switch=req.switch)
    return r.encode()


cpdef bytes heartbeat(unsigned int request_id, int proto=1, int codec=1):
    return BoltFrame(proto=proto, type=BOLT_TYPE_REQUEST, cmdcode=BOLT_CMD_HEARTBEAT,
                     request_id=request_id, codec=codec, timeout=1000).encode()


cpdef bytes error_response(BoltFrame req, int status):
    """A response to `req` with a non-success status, in the request's version, codec and
    CRC switch. No class or content: Bolt clients build the error from the status, as for
    the replies a Bolt server's connection layer sends itself (busy, no processor...)."""
    cdef BoltFrame r = BoltFrame(proto=req.proto, type=BOLT_TYPE_RESPONSE,
                                 cmdcode=BOLT_CMD_RESPONSE,
                                 request_id=req.request_id, codec=req.codec, status=status,
                                 ver1=req.ver1, ver2=req.ver2, switch=req.switch)
    return r.encode()


# Python-level names for the C enums (bolt.STATUS_TIMEOUT, bolt.BOLT_TYPE_ONEWAY, ...)
for _e in (BoltType, BoltStatus):
    globals().update({_m.name: int(_m) for _m in _e})
