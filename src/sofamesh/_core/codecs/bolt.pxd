# SOFA Bolt v1/v2 codec. See bolt.pyx for the frame diagrams.
from sofamesh._core.codecs.rpcframe cimport FrameDecoder, RpcFrame

cpdef enum BoltType:
    BOLT_TYPE_RESPONSE = 0
    BOLT_TYPE_REQUEST = 1
    BOLT_TYPE_ONEWAY = 2
    BOLT_CMD_HEARTBEAT = 0
    BOLT_CMD_REQUEST = 1
    BOLT_CMD_RESPONSE = 2

cpdef enum BoltStatus:
    STATUS_SUCCESS = 0
    STATUS_ERROR = 1
    STATUS_SERVER_EXCEPTION = 2
    STATUS_UNKNOWN = 3
    STATUS_SERVER_THREADPOOL_BUSY = 4
    STATUS_ERROR_COMM = 5
    STATUS_NO_PROCESSOR = 6
    STATUS_TIMEOUT = 7
    STATUS_CLIENT_SEND_ERROR = 8
    STATUS_CODEC_EXCEPTION = 9
    STATUS_CONNECTION_CLOSED = 0x10
    STATUS_SERVER_SERIAL_EXCEPTION = 0x11
    STATUS_SERVER_DESERIAL_EXCEPTION = 0x12

cdef class BoltFrame(RpcFrame):
    cdef public int proto               # 1 or 2
    cdef public int ver1                # v2 only (1 in v1 frames)
    cdef public int type                # BOLT_TYPE_*
    cdef public int cmdcode             # BOLT_CMD_*
    cdef public int ver2
    cdef public unsigned int request_id
    cdef public int codec               # 1 hessian2, 11 protobuf
    cdef public int switch              # v2 only; bit 0: CRC-32 appended
    cdef public int timeout             # requests, ms (-1 none)
    cdef public int status              # responses, STATUS_*
    # class_name / header_raw / content / raw are properties: a decoded frame keeps only
    # offsets into the read it came from and slices (zero copy) on first use.
    cdef bytes _class_name              # None until used (decoded frames)
    cdef object _header_raw             # memoryview | bytes | None
    cdef object _content                # memoryview | bytes | None
    cdef object _raw                    # memoryview | None
    cdef object _mv                     # memoryview of _base (decoded frames) | None
    cdef Py_ssize_t _coff, _clen        # class name in _base
    cdef Py_ssize_t _boff, _blen        # content in _base
    cdef Py_ssize_t _roff, _rlen        # the whole frame in _base
    cdef public unsigned int crc        # the CRC-32 as received (v2 with switch bit 0)
    cdef list _headers                  # list[tuple[str|None, str|None]] | None (lazy)
    cdef bytes _base                    # the bytes the header map lives in
    cdef Py_ssize_t _hoff               # its offset there
    cdef Py_ssize_t _hlen               # its length (structure checked by the decoder)
    cdef object _method                 # str | None, cached
    cdef list _svc                      # service() split on ":" ([] if none), cached
    cpdef list headers(self)
    cpdef object header(self, str name)
    cpdef object service(self)
    cpdef object method(self)
    cpdef bytes encode(self)

cdef class BoltDecoder(FrameDecoder):
    cdef public bint verify_crc

cpdef bytes encode_header_map(object headers)
cpdef bytes rewrite_request_id(BoltFrame f, unsigned int new_id)
cpdef bytes heartbeat_ack(BoltFrame req)
cpdef bytes heartbeat(unsigned int request_id, int proto=*, int codec=*)
cpdef bytes error_response(BoltFrame req, int status)
