# Quotas for RPC calls (Dubbo, Bolt, any codec of the RPC interface) by service and method:
# local token buckets (shared by the worker processes, ratelimit.pxd) and RLQS buckets
# (rlqs.pxd, the same buckets HTTP requests use). Written once against rbac.pxd's
# RbacRequest accessor (rpc_proxy's RpcRbacRequest reads a frame's :service, :method,
# :version, :group), never against a protocol.
#
# Contract: RpcQuota is compiled once per config by sofamesh.filters.network.rpc_quota and
# never mutated. `admit` is called with a request bound to the call (frame, connection);
# it reads only what the rules' matchers need.

from sofamesh._core.ratelimit cimport TokenBucket
from sofamesh._core.rbac cimport RbacRequest, RbacRule
from sofamesh._core.rlqs cimport RlqsFilter
from sofamesh._core.stats cimport Counter


cdef class RpcQuotaRule:
    cdef readonly RbacRule match        # the calls it counts; None: every call
    cdef readonly TokenBucket bucket    # a local bucket, or None
    cdef readonly RlqsFilter rlqs       # an RLQS bucket, or None (one of the two is set)


cdef class RpcQuotaStage:
    """One configured quota filter: its first rule that matches decides."""
    cdef tuple rules                    # tuple[RpcQuotaRule]
    cdef Counter c_ok
    cdef Counter c_limited


cdef class RpcQuota:
    cdef readonly tuple stages          # tuple[RpcQuotaStage], each must admit the call
    cdef int admit(self, RbacRequest r) except -1      # 1 admitted, 0 over a quota
