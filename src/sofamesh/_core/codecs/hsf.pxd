# HSF v1 framing. See hsf.pyx for the frame diagram.
from sofamesh._core.codecs.rpcframe cimport FrameDecoder

cpdef enum HsfKind:
    HSF_REQUEST = 0
    HSF_RESPONSE = 1
    HSF_HEARTBEAT = 2

cdef class HsfFrame:
    cdef public int kind                        # HSF_*
    cdef public unsigned long long request_id
    cdef public int version
    cdef public int serialization               # 4 hessian2
    cdef public bytes ext                       # request: 3 extension bytes; heartbeat: bytes 2-5
    cdef public unsigned int timeout
    cdef public str service                     # "interface:version"
    cdef public str method
    cdef public list types                      # list[memoryview | bytes]
    cdef public list args                       # list[memoryview | bytes]
    cdef public object props                    # memoryview | bytes: hessian2 map
    cdef public int status                      # responses
    cdef public object body                     # responses: memoryview | bytes
    cdef public bytes heartbeat_rest            # heartbeat bytes 14-17
    cdef public object raw                      # memoryview | None
    cpdef bytes encode(self)

cdef class HsfDecoder(FrameDecoder):
    pass
