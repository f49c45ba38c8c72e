# HTTP/2 frame layout (RFC 9113 4.1) and the outbound buffer; see http2_frames.pxd.
#
#   +-----------------------------------------------+
#   |                 Length (24)                   |
#   +---------------+---------------+---------------+
#   |   Type (8)    |   Flags (8)   |
#   +-+-------------+---------------+-------------------------------+
#   |R|                 Stream Identifier (31)                      |
#   +=+=============================================================+
#   |                   Frame Payload (0...)                      ...
#   +---------------------------------------------------------------+

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


cdef class FrameBuffer:
    def __cinit__(self):
        self.data = NULL
        self.length = 0
        self.cap = 0
        self.frames = 0
        self.control_frames = 0

    def __dealloc__(self):
        free(self.data)

    cdef int reserve(self, Py_ssize_t n) except -1:
        cdef Py_ssize_t cap
        cdef unsigned char* p
        if self.length + n > self.cap:
            cap = max(self.cap * 2, self.length + n, 4096)
            p = <unsigned char*>realloc(self.data, cap)
            if p == NULL:
                raise MemoryError()
            self.data = p
            self.cap = cap
        return 0

    cdef int header(self, unsigned int length, unsigned char ftype, unsigned char flags,
                    unsigned int stream_id) except -1:
        cdef unsigned char* p
        self.reserve(FRAME_HEADER_LEN + length)
        p = self.data + self.length
        p[0] = (length >> 16) & 0xff
        p[1] = (length >> 8) & 0xff
        p[2] = length & 0xff
        p[3] = ftype
        p[4] = flags
        p[5] = (stream_id >> 24) & 0x7f
        p[6] = (stream_id >> 16) & 0xff
        p[7] = (stream_id >> 8) & 0xff
        p[8] = stream_id & 0xff
        self.length += FRAME_HEADER_LEN
        self.frames += 1
        return 0

    cdef void put(self, const unsigned char* p, Py_ssize_t n) noexcept:
        memcpy(self.data + self.length, p, n)
        self.length += n

    cdef void put_u32(self, unsigned int v) noexcept:
        cdef unsigned char* p = self.data + self.length
        p[0] = (v >> 24) & 0xff
        p[1] = (v >> 16) & 0xff
        p[2] = (v >> 8) & 0xff
        p[3] = v & 0xff
        self.length += 4

    cdef void put_u16(self, unsigned int v) noexcept:
        cdef unsigned char* p = self.data + self.length
        p[0] = (v >> 8) & 0xff
        p[1] = v & 0xff
        self.length += 2

    cdef bytes take(self):
        cdef bytes out = PyBytes_FromStringAndSize(<const char*>self.data, self.length)
        self.length = 0
        self.frames = 0
        self.control_frames = 0
        if self.cap > 1 << 20:
            # a large burst (a big body) does not pin its buffer
            free(self.data)
            self.data = NULL
            self.cap = 0
        return out

    def __len__(self):
        return self.length
