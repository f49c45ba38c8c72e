# Protocol-neutral HTTP header maps; see headers.pxd for the contract.

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

cdef extern from "string.h" nogil:
    int strncasecmp(const char* a, const char* b, size_t n)


cdef bint router_control_name(const char* p, int n) noexcept:
    if n <= 8 or strncasecmp(p, "x-envoy-", 8) != 0:
        return False
    return (n == 30 and strncasecmp(p + 8, "expected-rq-timeout-ms", 22) == 0) or \
        (n == 16 and strncasecmp(p + 8, "retry-on", 8) == 0) or \
        (n == 21 and strncasecmp(p + 8, "retry-grpc-on", 13) == 0) or \
        (n == 19 and strncasecmp(p + 8, "max-retries", 11) == 0) or \
        (n >= 19 and strncasecmp(p + 8, "upstream-rq", 11) == 0) or \
        (n >= 17 and strncasecmp(p + 8, "retriable", 9) == 0) or \
        (n >= 13 and strncasecmp(p + 8, "hedge", 5) == 0) or \
        (n == 30 and strncasecmp(p + 8, "upstream-alt-stat-name", 22) == 0)


cdef class HeaderMap:
    """Interface: every method is overridden by a concrete map (HeaderList, http1.Head)."""

    cdef int count(self) noexcept:
        return 0

    cdef bint live(self, int i) noexcept:
        return False

    cdef int find_from(self, const char* name, int n, int start) noexcept:
        return -1

    cdef bytes name_at(self, int i):
        raise NotImplementedError

    cdef const char* name_ptr(self, int i, int* n) noexcept:
        n[0] = 0
        return NULL

    cdef bytes value_at(self, int i):
        raise NotImplementedError

    cdef int remove_at(self, int i) except -1:
        raise NotImplementedError

    cdef bytes method(self):
        return b""

    cdef bytes path(self):
        return b""

    cdef const char* path_ptr(self, int* n) noexcept:
        n[0] = 0
        return ""

    cdef bytes authority(self):
        return b""

    cdef int get_status(self) noexcept:
        return 0

    cdef bytes get_all(self, bytes name):
        cdef int n = <int>PyBytes_GET_SIZE(name)
        cdef const char* p = PyBytes_AS_STRING(name)
        cdef int i = self.find_from(p, n, 0)
        cdef bytes v
        if i < 0:
            return None
        v = self.value_at(i)
        i = self.find_from(p, n, i + 1)
        while i >= 0:
            v = v + b"," + self.value_at(i)
            i = self.find_from(p, n, i + 1)
        return v

    cdef int remove(self, bytes name) except -1:
        cdef int n = <int>PyBytes_GET_SIZE(name)
        cdef const char* p = PyBytes_AS_STRING(name)
        cdef int i = self.find_from(p, n, 0)
        while i >= 0:
            self.remove_at(i)
            i = self.find_from(p, n, i + 1)
        return 0

    cdef int add(self, bytes name, bytes value) except -1:
        raise NotImplementedError

    cdef int add_flat(self, tuple flat) except -1:
        cdef Py_ssize_t i
        for i in range(0, len(flat), 2):
            self.add(<bytes>flat[i], <bytes>flat[i + 1])
        return 0

    cdef int set_path(self, bytes path) except -1:
        raise NotImplementedError

    cdef int set_authority(self, bytes authority) except -1:
        raise NotImplementedError

    cdef int remove_router_controls(self) except -1:
        cdef int i
        cdef bytes k
        for i in range(self.count()):
            if self.live(i):
                k = self.name_at(i)
                if router_control_name(PyBytes_AS_STRING(k), <int>PyBytes_GET_SIZE(k)):
                    self.remove_at(i)
        return 0

    cdef HeaderList copy(self):
        cdef HeaderList h = HeaderList(method=self.method() or None, path=self.path() or None,
                                       authority=self.authority() or None,
                                       status=self.get_status())
        cdef int i
        for i in range(self.count()):
            if self.live(i):
                h.add(self.name_at(i), self.value_at(i))
        return h

    # Python API (filters written in Python, tests) -------------------------------------
    def __len__(self):
        cdef int i, k = 0
        for i in range(self.count()):
            if self.live(i):
                k += 1
        return k

    def items(self):
        """[(lower-case name, value)] of the live entries, in order."""
        cdef int i
        return [(self.name_at(i), self.value_at(i)) for i in range(self.count())
                if self.live(i)]

    def get_value(self, name):
        if isinstance(name, str):
            name = name.encode("latin-1")
        return self.get_all((<bytes>name).lower())

    def remove_name(self, name):
        if isinstance(name, str):
            name = name.encode("latin-1")
        self.remove((<bytes>name).lower())

    @property
    def method_value(self):
        return self.method()

    @property
    def path_value(self):
        return self.path()

    @property
    def authority_value(self):
        return self.authority()

    @property
    def status_value(self):
        return self.get_status()


cdef class HeaderList(HeaderMap):
    def __init__(self, items=(), *, method=None, path=None, authority=None, scheme=None,
                 int status=0):
        self.pairs = []
        self.first = 0
        self.dead = None
        self.method_ = method
        self.path_ = path
        self.authority_ = authority
        self.scheme = scheme
        self.status = status
        for k, v in items:
            self.append(k, v)

    @staticmethod
    def adopt(list pairs, int first=0):
        """A map over a decoded header list (not copied); entries before `first` are the
        pseudo-headers, read into method/path/authority/scheme/status."""
        cdef HeaderList h = HeaderList()
        cdef int i
        h.pairs = pairs
        h.first = first
        for i in range(first):
            k, v = pairs[i]
            if k == b":method":
                h.method_ = v
            elif k == b":path":
                h.path_ = v
            elif k == b":authority":
                h.authority_ = v
            elif k == b":scheme":
                h.scheme = v
            elif k == b":status":
                h.status = int(v)
        return h

    def append(self, name, value):
        if isinstance(name, str):
            name = name.encode("latin-1")
        if isinstance(value, str):
            value = value.encode("latin-1")
        self.add((<bytes>name).lower(), value)

    cdef int add(self, bytes name, bytes value) except -1:
        if self.first and self.dead is None:
            # adopted HPACK list: appending must not change the decoder's list
            self.pairs = list(self.pairs)
        self.pairs.append((name, value))
        if self.dead is not None:
            self.dead.append(False)
        return 0

    cdef int count(self) noexcept:
        return <int>len(self.pairs)

    cdef bint live(self, int i) noexcept:
        return i >= self.first and (self.dead is None or not self.dead[i])

    cdef int find_from(self, const char* name, int n, int start) noexcept:
        cdef int i
        cdef bytes k
        if start < self.first:
            start = self.first
        for i in range(start, <int>len(self.pairs)):
            k = <bytes>(<tuple>self.pairs[i])[0]
            if PyBytes_GET_SIZE(k) == n and strncasecmp(PyBytes_AS_STRING(k), name, n) == 0 \
                    and (self.dead is None or not self.dead[i]):
                return i
        return -1

    cdef bytes name_at(self, int i):
        return (<tuple>self.pairs[i])[0]

    cdef const char* name_ptr(self, int i, int* n) noexcept:
        cdef bytes k
        if i < self.first or (self.dead is not None and self.dead[i]):
            n[0] = 0
            return NULL
        k = <bytes>(<tuple>self.pairs[i])[0]
        n[0] = <int>PyBytes_GET_SIZE(k)
        return PyBytes_AS_STRING(k)

    cdef bytes value_at(self, int i):
        return (<tuple>self.pairs[i])[1]

    cdef int remove_at(self, int i) except -1:
        if self.dead is None:
            self.dead = [False] * len(self.pairs)
        self.dead[i] = True
        return 0

    cdef int set_path(self, bytes path) except -1:
        self.path_ = path
        return 0

    cdef int set_authority(self, bytes authority) except -1:
        self.authority_ = authority
        return 0

    cdef bytes method(self):
        return self.method_ or b""

    cdef bytes path(self):
        return self.path_ or b""

    cdef const char* path_ptr(self, int* n) noexcept:
        if self.path_ is None:
            n[0] = 0
            return ""
        n[0] = <int>PyBytes_GET_SIZE(self.path_)
        return PyBytes_AS_STRING(self.path_)

    cdef bytes authority(self):
        return self.authority_ or b""

    cdef int get_status(self) noexcept:
        return self.status

    def __repr__(self):
        return f"HeaderList({self.items()!r})"
