# Dubbo2 codec. See dubbo.pyx for the frame diagram.
from sofamesh._core.codecs.rpcframe cimport FrameDecoder, RpcFrame

cpdef enum DubboStatus:
    DUBBO_OK = 20
    DUBBO_SERIALIZATION_ERROR = 25
    DUBBO_CLIENT_TIMEOUT = 30
    DUBBO_SERVER_TIMEOUT = 31
    DUBBO_CHANNEL_INACTIVE = 35
    DUBBO_BAD_REQUEST = 40
    DUBBO_BAD_RESPONSE = 50
    DUBBO_SERVICE_NOT_FOUND = 60
    DUBBO_SERVICE_ERROR = 70
    DUBBO_SERVER_ERROR = 80
    DUBBO_CLIENT_ERROR = 90
    DUBBO_SERVER_THREADPOOL_EXHAUSTED = 100

cdef class DubboFrame(RpcFrame):
    cdef public int flags                       # 0x80 request, 0x40 two-way, 0x20 event | serial.
    cdef public int status
    cdef public unsigned long long request_id   # on the wire an i64; ids are opaque
    # body / raw are properties: a decoded frame keeps offsets into its read and slices
    # (zero copy) on first use.
    cdef object _body                           # memoryview | bytes | None
    cdef object _raw                            # memoryview | None
    cdef bytes _base                            # the read a decoded frame came from
    cdef object _mv                             # memoryview of _base | None
    cdef Py_ssize_t _boff, _blen, _roff
    # request invocation, filled by parse_invocation()
    cdef public int parsed
    cdef public int parse_err
    cdef public str body_error
    cdef public object dubbo_version            # str | None
    cdef public object service                  # str | None
    cdef public object version                  # str | None
    cdef public object method                   # str | None
    cdef public object param_types              # str | None
    cdef public dict attachments                # dict[str, object] | None
    cdef public Py_ssize_t args_start
    cdef public Py_ssize_t args_end
    cdef public Py_ssize_t body_end
    cpdef int parse_invocation(self, tuple wanted=*)
    cpdef object response_flag(self)
    cpdef object error_message(self)
    cpdef bytes encode(self)

cdef class DubboDecoder(FrameDecoder):
    pass

cdef Py_ssize_t count_params(str desc)
cpdef bytes rewrite_request_id(DubboFrame f, unsigned long long new_id)
cpdef bytes heartbeat_response(DubboFrame req)
cpdef bytes heartbeat(unsigned long long request_id)
cpdef bytes error_response(DubboFrame req, int status, str message)
