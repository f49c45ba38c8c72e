# HTTP/1.1 body framing, sans-IO: content-length, chunked (with its trailer section) or
# until close.
#
# Contract: `BodyReader.feed` walks body bytes and says how many belong to the current
# message and when it ends; in chunked mode, when `chunks` is a list, the decoded payload
# (chunk framing removed) is appended to it. `parse_trailers` turns a chunked trailer
# section into the protocol-neutral map.

from sofamesh._core.headers cimport HeaderList

cdef enum:
    FR_NONE = 0
    FR_LENGTH = 1
    FR_CHUNKED = 2
    FR_EOF = 3


cdef class BodyReader:
    cdef int mode                   # FR_*
    cdef long long remaining        # LENGTH: bytes left; CHUNKED: bytes left in this chunk
    cdef int cstate
    cdef int trailer_bytes
    cdef int size_digits
    cdef bint done
    cdef unsigned long long seen    # body bytes seen (framing included for chunked)
    cdef public list chunks         # list[bytes] | None: decoded payload, when collecting
    cdef Py_ssize_t fwd             # of the last feed, the bytes before a trailer section
    cdef bint trailers_dropped      # chunked: a trailer section began (bytes fwd.. of a feed)

    cdef void start(self, int mode, long long length) noexcept
    # bytes of p that belong to this body; -1 malformed. When `chunks` is a list, the
    # decoded payload (chunk framing removed) is appended to it as bytes.
    cdef Py_ssize_t feed(self, const char* p, Py_ssize_t n) except -2


# Chunked trailers <-> the protocol-neutral map. `parse_trailers` takes the trailer section
# as received (field lines then the blank line); malformed lines are dropped.
# `encode_trailers` renders the section that ends a chunked body after its last chunk.
cdef HeaderList parse_trailers(bytes raw)
cdef bytes encode_trailers(HeaderList t)
