# The per-request half of envoy.filters.http.rate_limit_quota (see rlqs.pyx): one RLQS
# bucket's current action and its usage counts. `admit()` is the protocol-neutral decision
# (HTTP: RlqsFilter.decode_headers; Dubbo and Bolt: rpc_quota), so one bucket can be fed by
# HTTP and RPC calls alike.

from libc.stdint cimport uint64_t

from sofamesh._core.http_stream cimport HttpFilter, HttpStream
from sofamesh._core.ratelimit cimport TokenBucket
from sofamesh._core.rbac cimport RbacRule
from sofamesh._core.rbac_http cimport HttpRbacRequest


cdef class RlqsAction:
    cdef readonly int kind
    cdef readonly TokenBucket bucket   # ACTION_TOKENS only


cdef class RlqsFilter(HttpFilter):
    cdef RlqsAction action
    cdef uint64_t allowed
    cdef uint64_t denied
    cdef bint started
    cdef object on_first               # () -> None: the first request starts reporting
    cdef readonly int status
    cdef readonly bytes body
    cdef readonly tuple headers        # tuple[(bytes, bytes)], added to a denial
    cdef readonly RbacRule match       # the requests of the bucket; None: every request
    cdef HttpRbacRequest req           # reused to evaluate `match` (one thread)
    cdef object __weakref__            # its RLQS client holds it weakly (ends with its config)
    # the bucket's decision for one request, counted for the next report: 1 admit, 0 deny
    cdef int admit(self) except -1
    cdef int _selects(self, HttpStream s) except -1
