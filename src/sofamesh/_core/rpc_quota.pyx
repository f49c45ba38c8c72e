# Quotas for RPC calls by service and method; see rpc_quota.pxd.
#
#   call -> RpcQuota.admit(r) -> each stage (a configured quota filter), in order:
#             the first rule whose match holds (None: any call) decides
#               local bucket: TokenBucket.consume (one slot shared by all workers)
#               RLQS bucket:  RlqsFilter.admit (the server's assignment; usage reported)
#             no rule holds: the stage lets the call pass, uncounted
#   refused -> the proxy answers with the protocol's own error reply (rpc_proxy, WHY_QUOTA)

from libc.stdint cimport int64_t

from sofamesh._core.ratelimit cimport TokenBucket
from sofamesh._core.rbac cimport RbacRequest, RbacRule
from sofamesh._core.rlqs cimport RlqsFilter
from sofamesh._core.stats cimport Store

cdef extern from "time.h" nogil:
    ctypedef int clockid_t
    cdef struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(clockid_t clk, timespec* ts)
    clockid_t CLOCK_MONOTONIC


cdef inline int64_t _mono_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef class RpcQuotaRule:
    def __init__(self, RbacRule match=None, TokenBucket bucket=None, RlqsFilter rlqs=None):
        if (bucket is None) == (rlqs is None):
            raise ValueError("a quota rule needs a token bucket or an RLQS bucket")
        self.match = match
        self.bucket = bucket
        self.rlqs = rlqs


cdef class RpcQuotaStage:
    def __init__(self, rules, Store store, str stat_prefix, str kind):
        """Stats `<stat_prefix>.<kind>.{ok,rate_limited}` (kind: rpc_local_rate_limit or
        rpc_rate_limit_quota): calls a rule counted, admitted or refused."""
        self.rules = tuple(rules)
        self.c_ok = store.counter(f"{stat_prefix}.{kind}.ok")
        self.c_limited = store.counter(f"{stat_prefix}.{kind}.rate_limited")


cdef class RpcQuota:
    def __init__(self, stages):
        self.stages = tuple(stages)

    cdef int admit(self, RbacRequest r) except -1:
        cdef RpcQuotaStage st
        cdef RpcQuotaRule q
        cdef int ok
        r.begin()
        for st in self.stages:
            for q in st.rules:
                if q.match is not None and not q.match.matches(r):
                    continue
                if q.bucket is not None:
                    ok = q.bucket.consume(_mono_ns())
                else:
                    ok = q.rlqs.admit()
                if not ok:
                    st.c_limited.inc()
                    return 0
                st.c_ok.inc()
                break
        return 1
