# Shared framing for the length-prefixed RPC codecs: see rpcframe.pxd for the contract.
#
# Input handling: a read that holds whole frames is sliced in place (frames are
# memoryviews into the bytes object the transport handed us: zero copy). A partial tail
# is kept; when the header says a big frame is coming, reads are collected in a list and
# joined once when enough has arrived, so a frame split over many reads costs one copy.

cdef class RpcFrame:
    cdef object rpc_key(self, int key):
        return None

    cdef object rpc_header(self, str name):
        return None


cdef class ProtocolError:
    def __init__(self, str reason, bint fatal=False, long long request_id=-1, frame=None):
        self.reason = reason
        self.fatal = fatal
        self.request_id = request_id
        self.frame = frame

    def __repr__(self):
        return (f"ProtocolError({self.reason!r}, fatal={self.fatal}, "
                f"request_id={self.request_id})")


cdef ProtocolError make_error(str reason, bint fatal, long long request_id, object frame):
    cdef ProtocolError e = ProtocolError.__new__(ProtocolError)
    e.reason = reason
    e.fatal = fatal
    e.request_id = request_id
    e.frame = frame
    return e


cdef class FrameDecoder:
    def __init__(self, Py_ssize_t max_frame=16 * 1024 * 1024):
        self._buf = b""
        self._parts = None
        self._parts_len = 0
        self.need = 0
        self.max_frame = max_frame
        self.protocol_errors = 0
        self.frames = 0
        self.failed = False
        self.fail_reason = None

    @property
    def buffered(self):
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf) + self._parts_len

    cdef Py_ssize_t frame_length(self, const unsigned char* p, Py_ssize_t n) except -2:
        return -1

    cdef object parse(self, bytes buf, object mv, Py_ssize_t start, Py_ssize_t n):
        return None

    cpdef list feed(self, object data):
        """Frames (and ProtocolErrors) completed by this input, in order. After a fatal
        ProtocolError the decoder is failed and returns nothing more."""
        cdef bytes buf
        cdef list out = []
        cdef Py_ssize_t pos = 0, total, flen
        cdef const unsigned char* p
        if self.failed:
            return out
        if type(data) is not bytes:
            data = bytes(data)
        if not data:
            return out
        if self._parts is not None:
            self._parts.append(data)
            self._parts_len += len(<bytes>data)
            if self._parts_len < self.need:
                return out
            buf = b"".join(self._parts)
            self._parts = None
            self._parts_len = 0
        elif self._buf:
            buf = self._buf + data
        else:
            buf = <bytes>data
        total = len(buf)
        p = <const unsigned char*><char*>buf
        mv = None
        while pos < total:
            self.need = 0
            try:
                flen = self.frame_length(p + pos, total - pos)
            except Exception as exc:  # a bug in a codec must not reach the event loop
                flen = -1
                self.fail_reason = f"decoder error: {exc!r}"
            if flen < 0:
                self.failed = True
                self.protocol_errors += 1
                out.append(make_error(self.fail_reason or "framing error", True, -1, None))
                self._buf = b""
                return out
            if flen == 0:
                break
            if flen > total - pos:
                self.need = flen
                break
            if mv is None:
                mv = memoryview(buf)
            try:
                frame = self.parse(buf, mv, pos, flen)
            except Exception as exc:
                frame = make_error(f"decoder error: {exc!r}", False, -1, None)
            if isinstance(frame, ProtocolError):
                self.protocol_errors += 1
            else:
                self.frames += 1
            out.append(frame)
            pos += flen
        if pos == 0:
            self._buf = buf
        elif pos < total:
            self._buf = buf[pos:]
        else:
            self._buf = b""
        if self.need > len(self._buf) + 65536:
            # a big frame is on its way: collect reads, join once
            self._parts = [self._buf]
            self._parts_len = len(self._buf)
            self._buf = b""
        return out
