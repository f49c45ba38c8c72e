# Growable C write buffer: headers are rendered into it with memcpy, then taken as one bytes.
#
# Contract: one WriteBuf per connection, reused for every message (no per-request allocation
# beyond the final bytes object). `take()` returns the rendered bytes and empties the buffer.

from libc.string cimport memcpy


cdef class WriteBuf:
    cdef char* data
    cdef Py_ssize_t len
    cdef Py_ssize_t cap

    cdef int grow(self, Py_ssize_t extra) except -1

    cdef inline int add(self, const char* p, Py_ssize_t n) except -1:
        if self.len + n > self.cap:
            self.grow(n)
        memcpy(self.data + self.len, p, n)
        self.len += n
        return 0

    cdef inline int add_bytes(self, bytes b) except -1:
        cdef Py_ssize_t n = len(b)
        if self.len + n > self.cap:
            self.grow(n)
        memcpy(self.data + self.len, <const char*>b, n)
        self.len += n
        return 0

    cdef int add_uint(self, unsigned long long v) except -1
    cdef int add_hex(self, unsigned long long v) except -1
    cdef bytes take(self)
