# The per-request half of envoy.filters.http.rate_limit_quota (RLQS): decide from the
# bucket's current action, count the decision for the next usage report. No remote call,
# no Python object per request.
#
# The reporting half (filters/http/rate_limit_quota.py, once per reporting_interval) reads
# and zeroes the counts (take_usage) and swaps in the action the server assigned
# (set_action): actions are never changed in place, a new one replaces the reference.
#
# A filter whose bucket matcher selects some requests (`match`, an RBAC rule over the request
# headers) lets the others pass uncounted, as Envoy does with a request no matcher selects.
#
#     request -> RlqsFilter.decode_headers -> action: ALLOW_ALL  -> count allowed
#                                                     DENY_ALL   -> count denied, local reply
#                                                     TOKENS     -> TokenBucket.consume

from libc.stdint cimport int64_t

from sofamesh._core.headers cimport HeaderMap
from sofamesh._core.http_stream cimport HttpFilter, HttpStream, FILTER_CONTINUE, FILTER_STOP
from sofamesh._core.rbac cimport RbacRule
from sofamesh._core.rbac_http cimport HttpRbacRequest
from sofamesh._core.ratelimit cimport TokenBucket

cdef extern from "time.h" nogil:
    ctypedef int clockid_t
    cdef struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(clockid_t clk, timespec* ts)
    clockid_t CLOCK_MONOTONIC

ACTION_ALLOW_ALL = 0               # envoy.type.v3.RateLimitStrategy.ALLOW_ALL
ACTION_DENY_ALL = 1                # RateLimitStrategy.DENY_ALL
ACTION_TOKENS = 2                  # RateLimitStrategy.token_bucket / requests_per_time_unit


cdef inline int64_t _mono_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef class RlqsAction:
    """One assignment (or fallback) of a bucket: immutable once built."""

    def __init__(self, int kind, TokenBucket bucket=None):
        if kind == ACTION_TOKENS and bucket is None:
            raise ValueError("a token bucket action needs a bucket")
        self.kind = kind
        self.bucket = bucket


cdef class RlqsFilter(HttpFilter):
    """One bucket (the matcher's bucket_id) and its current action."""

    def __init__(self, str name, RlqsAction action, on_first, int status=429, bytes body=b"",
                 headers=(), RbacRule match=None):
        HttpFilter.__init__(self, name)
        self.match = match
        if match is not None:
            self.req = HttpRbacRequest.__new__(HttpRbacRequest)
        self.action = action
        self.on_first = on_first
        self.status = status
        self.body = body
        self.headers = tuple(headers)

    def set_action(self, RlqsAction action):
        self.action = action

    @property
    def current_action(self):
        return self.action

    def take_usage(self):
        """(allowed, denied) since the last call, zeroed (one worker: no race)."""
        cdef tuple out = (self.allowed, self.denied)
        self.allowed = 0
        self.denied = 0
        return out

    cdef int _selects(self, HttpStream s) except -1:
        cdef HttpRbacRequest r = self.req
        r.s = s
        r.h = <HeaderMap>s.head
        r.begin()
        try:
            return self.match.matches(r)
        finally:
            r.s = None
            r.h = None

    cdef int admit(self) except -1:
        cdef RlqsAction a = self.action
        cdef bint ok
        if not self.started:
            self.started = True
            self.on_first()  # Envoy reports a new bucket at once
        if a.kind == ACTION_ALLOW_ALL:
            ok = True
        elif a.kind == ACTION_DENY_ALL:
            ok = False
        else:
            ok = a.bucket.consume(_mono_ns())
        if ok:
            self.allowed += 1
            return 1
        self.denied += 1
        return 0

    cpdef int decode_headers(self, HttpStream s, bint end_stream) except -1:
        if self.match is not None and not self._selects(s):
            return FILTER_CONTINUE
        if self.admit():
            return FILTER_CONTINUE
        s.send_local_reply(self.status, self.body, self.headers, "RFCF")
        return FILTER_STOP
