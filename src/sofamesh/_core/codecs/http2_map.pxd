# Protocol-neutral header maps (headers.pxd) to and from HTTP/2 header lists
# (list[tuple[bytes, bytes]], pseudo-headers first, lower-case names), as codecs/http2
# takes and yields them.
#
# Contract: the *_list functions encode a map for HTTP/2: pseudo-headers from the map's
# method/scheme/authority/path or status, then its live entries without the
# connection-specific fields HTTP/2 forbids (connection, keep-alive, proxy-connection,
# transfer-encoding, upgrade, te other than "trailers") and without host (:authority
# carries it). `adopt` wraps a decoded list without copying it.

from sofamesh._core.headers cimport HeaderMap, HeaderList

cdef bint connection_specific(bytes name, bytes value) noexcept
cdef list request_list(HeaderMap h, bytes scheme)
cdef list upgrade_request_list(HeaderMap h, bytes scheme, bytes protocol)
cdef list response_list(HeaderMap h)
cdef list trailer_list(HeaderMap h)
cdef HeaderList adopt(list pairs)
