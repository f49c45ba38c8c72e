# Growable C write buffer; see buffer.pxd for the contract.

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdlib cimport malloc, realloc, free


cdef class WriteBuf:
    def __cinit__(self, Py_ssize_t initial=1024):
        self.cap = initial if initial > 64 else 64
        self.data = <char*>malloc(self.cap)
        if self.data == NULL:
            raise MemoryError()
        self.len = 0

    def __dealloc__(self):
        if self.data != NULL:
            free(self.data)
            self.data = NULL

    cdef int grow(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t need = self.len + extra
        cdef Py_ssize_t cap = self.cap * 2
        while cap < need:
            cap *= 2
        cdef char* p = <char*>realloc(self.data, cap)
        if p == NULL:
            raise MemoryError()
        self.data = p
        self.cap = cap
        return 0

    cdef int add_uint(self, unsigned long long v) except -1:
        cdef char tmp[24]
        cdef int i = 24
        if v == 0:
            return self.add("0", 1)
        while v:
            i -= 1
            tmp[i] = <char>(48 + v % 10)
            v //= 10
        return self.add(tmp + i, 24 - i)

    cdef int add_hex(self, unsigned long long v) except -1:
        cdef char tmp[24]
        cdef int i = 24
        cdef const char* digits = "0123456789abcdef"
        if v == 0:
            return self.add("0", 1)
        while v:
            i -= 1
            tmp[i] = digits[v & 15]
            v >>= 4
        return self.add(tmp + i, 24 - i)

    cdef bytes take(self):
        cdef bytes out = PyBytes_FromStringAndSize(self.data, self.len)
        self.len = 0
        # A buffer grown for one huge head does not stay huge for the connection's life.
        if self.cap > 65536:
            free(self.data)
            self.cap = 1024
            self.data = <char*>malloc(self.cap)
            if self.data == NULL:
                raise MemoryError()
        return out

    # Python API (tests)
    def write(self, bytes b):
        self.add_bytes(b)

    def getvalue(self):
        return self.take()
