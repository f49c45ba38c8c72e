# HTTP/2 frame constants (RFC 9113) and the outbound frame buffer the connection writes into.
#
# Contract: `FrameBuffer` is the connection's write buffer: frames are appended with
# `header()` + payload writers; `take()` hands the bytes to the caller and resets the
# frame counts the outbound flood guards read (Envoy's max_outbound_frames and
# max_outbound_control_frames count frames queued and not yet taken).

cdef enum:
    FRAME_HEADER_LEN = 9
    PREFACE_LEN = 24

# frame types
cdef enum:
    FT_DATA = 0x0
    FT_HEADERS = 0x1
    FT_PRIORITY = 0x2
    FT_RST_STREAM = 0x3
    FT_SETTINGS = 0x4
    FT_PUSH_PROMISE = 0x5
    FT_PING = 0x6
    FT_GOAWAY = 0x7
    FT_WINDOW_UPDATE = 0x8
    FT_CONTINUATION = 0x9

# flags
cdef enum:
    FLAG_END_STREAM = 0x1
    FLAG_ACK = 0x1
    FLAG_END_HEADERS = 0x4
    FLAG_PADDED = 0x8
    FLAG_PRIORITY = 0x20

# error codes (RFC 9113 7)
cdef enum:
    ERR_NO_ERROR = 0x0
    ERR_PROTOCOL_ERROR = 0x1
    ERR_INTERNAL_ERROR = 0x2
    ERR_FLOW_CONTROL_ERROR = 0x3
    ERR_SETTINGS_TIMEOUT = 0x4
    ERR_STREAM_CLOSED = 0x5
    ERR_FRAME_SIZE_ERROR = 0x6
    ERR_REFUSED_STREAM = 0x7
    ERR_CANCEL = 0x8
    ERR_COMPRESSION_ERROR = 0x9
    ERR_CONNECT_ERROR = 0xa
    ERR_ENHANCE_YOUR_CALM = 0xb
    ERR_INADEQUATE_SECURITY = 0xc
    ERR_HTTP_1_1_REQUIRED = 0xd

# settings (RFC 9113 6.5.2, RFC 8441, RFC 9218)
cdef enum:
    SETTINGS_HEADER_TABLE_SIZE = 0x1
    SETTINGS_ENABLE_PUSH = 0x2
    SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
    SETTINGS_INITIAL_WINDOW_SIZE = 0x4
    SETTINGS_MAX_FRAME_SIZE = 0x5
    SETTINGS_MAX_HEADER_LIST_SIZE = 0x6
    SETTINGS_ENABLE_CONNECT_PROTOCOL = 0x8
    SETTINGS_NO_RFC7540_PRIORITIES = 0x9

cdef enum:
    DEFAULT_WINDOW = 65535
    MAX_WINDOW = 0x7fffffff
    MAX_STREAM_ID = 0x7fffffff
    DEFAULT_MAX_FRAME = 16384
    MAX_MAX_FRAME = 0xffffff


cdef inline unsigned int rd_u32(const unsigned char* p) noexcept nogil:
    return ((<unsigned int>p[0] << 24) | (<unsigned int>p[1] << 16)
            | (<unsigned int>p[2] << 8) | p[3])


cdef inline unsigned int rd_u24(const unsigned char* p) noexcept nogil:
    return (<unsigned int>p[0] << 16) | (<unsigned int>p[1] << 8) | p[2]


cdef class FrameBuffer:
    cdef unsigned char* data
    cdef Py_ssize_t length
    cdef Py_ssize_t cap
    cdef public Py_ssize_t frames           # frames queued since the last take()
    cdef public Py_ssize_t control_frames   # of those: SETTINGS, PING, RST_STREAM

    cdef int reserve(self, Py_ssize_t n) except -1
    # a frame header; reserves room for the payload too
    cdef int header(self, unsigned int length, unsigned char ftype, unsigned char flags,
                    unsigned int stream_id) except -1
    cdef void put(self, const unsigned char* p, Py_ssize_t n) noexcept
    cdef void put_u32(self, unsigned int v) noexcept
    cdef void put_u16(self, unsigned int v) noexcept
    cdef bytes take(self)
