# The RPC route table (Dubbo, Bolt): route configs by interface / group / version, routes by
# method and headers, a cluster or weighted clusters. Protocol-neutral: a call is read
# through its codec's RpcFrame.rpc_key / rpc_header. Built by
# sofamesh.filters.network.rpc_routes from DubboProxy / BoltProxy configs; swapped whole.

from sofamesh._core.codecs.rpcframe cimport RpcFrame

cdef enum:
    SM_EXACT = 0
    SM_PREFIX = 1
    SM_SUFFIX = 2
    SM_CONTAINS = 3
    SM_REGEX = 4
    SM_ANY = 5


cdef class StrMatch:
    cdef int kind
    cdef str value
    cdef bint ignore_case
    cdef object regex                   # re.Pattern | None
    cdef bint match(self, object s)


cdef class HeaderMatch:
    cdef str name
    cdef StrMatch sm                    # None: present_match
    cdef bint present
    cdef bint invert
    cdef bint match(self, object value)


cdef class RpcRoute:
    cdef StrMatch method                # None: any method
    cdef list headers                   # list[HeaderMatch]
    cdef str cluster                    # "" when weighted
    cdef list weighted                  # list[tuple[str, int]]
    cdef long long total_weight
    cdef str pick_cluster(self)


cdef class RpcRouteConfig:
    cdef str interface                  # "*" any; else the interface or the whole service id
    cdef str group                      # "" any
    cdef str version                    # "" any
    cdef list routes                    # list[RpcRoute]
    cdef bint needs_method


cdef class RpcRouteTable:
    cdef list configs                   # list[RpcRouteConfig]
    # the header / attachment names the routes read (Dubbo decodes only the attachments
    # some table or filter reads)
    cdef readonly tuple header_names    # tuple[bytes, ...]
    cdef RpcRoute match(self, RpcFrame f)
