# Protocol-neutral HTTP header maps: what filters, the route table and the router see.
#
# Contract: a HeaderMap is one header block (request, response or trailers) with its
# pseudo-headers (:method, :path, :authority, :status) kept apart from the entries.
# Codecs fill it and encode it; nothing above a codec knows how it is stored. HTTP/1
# (`codecs.http1.Head`) is a view of offsets into the received bytes (no Python object
# per header); `HeaderList` owns name/value bytes (HTTP/2's decoded blocks, trailers,
# locally built replies). Entries are indexed 0..count()-1; a removed entry stays in
# place but is no longer `live` (indices stay valid while a filter walks the map).
# Names are compared case-insensitively; `name_at` returns them lower-case.
#
# Mutations (filters, the connection manager and the router change headers before a codec
# encodes them): `add` appends an entry (indexed after the existing ones), `remove_at` /
# `remove` mark entries dead, `set_path` / `set_authority` replace the pseudo-headers.
# An HTTP/1 Head keeps them as an overlay on its offsets, so an unmodified head can still
# be encoded by copying its bytes.

from cpython.object cimport PyObject

cdef extern from "Python.h":
    # a bytes entry's length and data through a borrowed pointer (PyList_GET_ITEM of an
    # `added` list), without the reference counting a typed variable costs
    Py_ssize_t bytes_len "PyBytes_GET_SIZE"(PyObject* o)
    char* bytes_ptr "PyBytes_AS_STRING"(PyObject* o)

# Request headers Envoy's router consumes and never forwards (retry overrides, the
# expected timeout, ...): x-envoy-retry-on, x-envoy-max-retries, x-envoy-upstream-rq-*, ...
cdef bint router_control_name(const char* p, int n) noexcept

cdef class HeaderList

cdef class HeaderMap:
    cdef int count(self) noexcept
    cdef bint live(self, int i) noexcept
    # next live entry at or after `start` named `name` (n bytes); -1: none
    cdef int find_from(self, const char* name, int n, int start) noexcept
    cdef bytes name_at(self, int i)
    # entry i's name as a view (n bytes, any case; valid until the map changes), NULL when
    # the entry is removed: one pass over the names with no allocation (http_tracing)
    cdef const char* name_ptr(self, int i, int* n) noexcept
    cdef bytes value_at(self, int i)
    cdef int remove_at(self, int i) except -1
    cdef bytes method(self)
    cdef bytes path(self)
    # :path as a view: pointer into memory the map keeps alive, length in *n
    cdef const char* path_ptr(self, int* n) noexcept
    cdef bytes authority(self)
    cdef int get_status(self) noexcept
    # every live value named `name` (lower-case) joined by ","; None when absent
    cdef bytes get_all(self, bytes name)
    cdef int remove(self, bytes name) except -1
    cdef int add(self, bytes name, bytes value) except -1    # name lower-case
    cdef int add_flat(self, tuple flat) except -1   # (name, value, name, value, ...)
    cdef int set_path(self, bytes path) except -1
    cdef int set_authority(self, bytes authority) except -1
    # removes the router-control headers (router_control_name) and x-envoy-expected-rq-timeout-ms
    cdef int remove_router_controls(self) except -1
    # a HeaderList with this map's live entries and pseudo-headers (mirrors, tests)
    cdef HeaderList copy(self)


cdef class HeaderList(HeaderMap):
    # list[tuple[bytes, bytes]] (lower-case names), as an HPACK decoder yields them: an
    # HTTP/2 header block is adopted without a copy, its pseudo-headers (the first
    # `first` entries) skipped
    cdef public list pairs
    cdef public int first
    cdef list dead                  # list[bool] | None: removed entries
    cdef public bytes method_       # :method (requests), None otherwise
    cdef public bytes path_         # :path
    cdef public bytes authority_    # :authority
    cdef public bytes scheme        # :scheme
    cdef public int status          # :status (responses), 0 otherwise
