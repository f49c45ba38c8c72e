# HeaderMap <-> HTTP/2 header lists; see http2_map.pxd for the contract.

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from sofamesh._core.http_common cimport int_bytes

from sofamesh._core.headers cimport HeaderMap, HeaderList

cdef extern from "string.h" nogil:
    int memcmp(const void* a, const void* b, size_t n)


cdef bint connection_specific(bytes name, bytes value) noexcept:
    """RFC 9113 8.2.2: fields that must not appear in HTTP/2 (te but `te: trailers`),
    and host, which travels as :authority."""
    cdef const char* p = PyBytes_AS_STRING(name)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(name)
    if n == 2:
        return memcmp(p, "te", 2) == 0 and value != b"trailers"
    if n == 4:
        return memcmp(p, "host", 4) == 0
    if n == 7:
        return memcmp(p, "upgrade", 7) == 0
    if n == 10:
        return memcmp(p, "connection", 10) == 0 or memcmp(p, "keep-alive", 10) == 0
    if n == 16:
        return memcmp(p, "proxy-connection", 16) == 0
    if n == 17:
        return memcmp(p, "transfer-encoding", 17) == 0
    return False


cdef int _entries(list out, HeaderMap h) except -1:
    cdef int i
    cdef bytes k, v
    for i in range(h.count()):
        if h.live(i):
            k = h.name_at(i)
            v = h.value_at(i)
            if not connection_specific(k, v):
                out.append((k, v))
    return 0


cdef list request_list(HeaderMap h, bytes scheme):
    cdef bytes method = h.method()
    cdef list out
    if PyBytes_GET_SIZE(method) == 7 and method == b"CONNECT":
        # RFC 9113 8.5: a CONNECT request has no :scheme nor :path
        out = [(b":method", method), (b":authority", h.authority())]
    else:
        out = [(b":method", method), (b":scheme", scheme),
               (b":authority", h.authority()), (b":path", h.path())]
    _entries(out, h)
    return out


cdef list upgrade_request_list(HeaderMap h, bytes scheme, bytes protocol):
    """An HTTP/1.1 upgrade as the extended CONNECT it stands for over HTTP/2 (RFC 8441):
    `:method CONNECT` and `:protocol`, its upgrade and connection headers dropped."""
    cdef list out = [(b":method", b"CONNECT"), (b":protocol", protocol), (b":scheme", scheme),
                     (b":authority", h.authority()), (b":path", h.path())]
    _entries(out, h)
    return out


cdef list response_list(HeaderMap h):
    cdef list out = [(b":status", int_bytes(h.get_status()))]
    _entries(out, h)
    return out


cdef list trailer_list(HeaderMap h):
    cdef list out = []
    _entries(out, h)
    return out


cdef HeaderList adopt(list pairs):
    """A decoded block as a HeaderList: pseudo-headers (first) counted, cookie crumbs
    joined with "; " for HTTP/1 peers (RFC 9113 8.2.3), a request's host header read as
    its authority when :authority is absent."""
    cdef int first = 0, ncookie = 0, i
    cdef Py_ssize_t n = len(pairs)
    cdef HeaderList h
    cdef bytes k
    while first < n and (<bytes>(<tuple>pairs[first])[0]).startswith(b":"):
        first += 1
    for i in range(first, n):
        k = (<tuple>pairs[i])[0]
        if PyBytes_GET_SIZE(k) == 6 and k == b"cookie":
            ncookie += 1
    if ncookie > 1:
        crumbs = [v for k, v in pairs[first:] if k == b"cookie"]
        pairs = [p for p in pairs if p[0] != b"cookie"]
        pairs.append((b"cookie", b"; ".join(crumbs)))
    h = HeaderList.adopt(pairs, first)
    if h.method_ is not None and h.authority_ is None:
        i = h.find_from("host", 4, 0)
        if i >= 0:
            h.authority_ = h.value_at(i)
    return h
