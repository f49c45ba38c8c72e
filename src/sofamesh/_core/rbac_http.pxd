# envoy.filters.http.rbac on the HTTP stream API (http_stream.pxd): the filter-level
# policies, or a route's RBACPerRoute, checked at decode_headers by the rbac.pxd engine.

from sofamesh._core.headers cimport HeaderMap
from sofamesh._core.http_stream cimport HttpFilter, HttpStream
from sofamesh._core.rbac cimport RbacPolicies, RbacRequest, RbacStats, rbac_ip


cdef class HttpRbacRequest(RbacRequest):
    cdef HttpStream s                   # the stream being checked (None between checks)
    cdef HeaderMap h                    # its request headers
    # the last peer address parsed: a keep-alive connection's requests share its bytes
    cdef bytes last_ip
    cdef rbac_ip last_addr


cdef class RbacFilter(HttpFilter):
    cdef readonly RbacPolicies policies     # the filter's own (per-route config replaces it)
    cdef RbacStats st
    cdef HttpRbacRequest req                # reused: checks never overlap (one thread)
    cdef str shadow_prefix                  # shadow_rules_stat_prefix (metadata field names)
