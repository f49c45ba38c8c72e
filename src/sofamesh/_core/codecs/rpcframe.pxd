# Shared framing for the length-prefixed RPC codecs (bolt, dubbo, hsf): buffering of
# partial input, many frames per read, size limits, and errors as values.
#
# Contract for subclasses:
#   frame_length(p, n) -> total frame length once the header is in (>0), 0 = need more
#       bytes (self.need set to the bytes required, if known), or -1 = framing lost
#       (self.fail_reason set). It must check the size limit before returning a length.
#   parse(buf, mv, start, n) -> a frame object, or a ProtocolError (framing intact: the
#       caller answers it and goes on). Never raises for bad bytes.

# Route keys of a call, read the same way for every protocol (RpcFrame.rpc_key): what the
# RPC route table and RBAC match on.
cdef enum:
    RK_SERVICE = 0      # the interface
    RK_METHOD = 1
    RK_VERSION = 2
    RK_GROUP = 3
    RK_SERVICE_ID = 4   # the service as the protocol names it whole (Bolt: iface:version:group)


cdef class RpcFrame:
    """A decoded call of an RPC protocol as the protocol-neutral parts of the proxy (route
    table, RBAC) read it; each codec's frame class implements these."""
    cdef public object trace            # rpc_tracing.RpcSpan | None: the call's spans (traced)
    cdef object rpc_key(self, int key)          # str | None
    cdef object rpc_header(self, str name)      # str | None: a header (Bolt) / attachment (Dubbo)


cdef class ProtocolError:
    cdef readonly str reason
    cdef readonly bint fatal            # framing lost: the connection must close
    cdef readonly long long request_id  # -1 when unknown
    cdef readonly object frame          # the frame as far as it decoded, or None

cdef class FrameDecoder:
    cdef bytes _buf                     # unconsumed input (a tail of the last read)
    cdef list _parts                    # list[bytes]: input held while a big frame arrives
    cdef Py_ssize_t _parts_len
    cdef public Py_ssize_t need         # bytes needed before a frame can complete
    cdef public Py_ssize_t max_frame    # size limit, checked from the header
    cdef public unsigned long long protocol_errors
    cdef public unsigned long long frames
    cdef readonly bint failed
    cdef str fail_reason
    cdef Py_ssize_t fail_offset

    cpdef list feed(self, object data)
    cdef Py_ssize_t frame_length(self, const unsigned char* p, Py_ssize_t n) except -2
    cdef object parse(self, bytes buf, object mv, Py_ssize_t start, Py_ssize_t n)

cdef ProtocolError make_error(str reason, bint fatal, long long request_id, object frame)
