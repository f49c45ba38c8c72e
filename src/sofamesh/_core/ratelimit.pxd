# Token buckets and the local rate limit HTTP filter (envoy.filters.http.local_ratelimit).
#
# Contract: a TokenBucket refills lazily from the monotonic clock (no timer): every
# fill_interval adds tokens_per_fill, capped at max_tokens; consume() is a few C ops.

from sofamesh._core.http_proxy cimport HttpFilter, DownstreamConn
from sofamesh._core.stats cimport Counter

cdef class TokenBucket:
    cdef readonly double max_tokens
    cdef readonly double tokens_per_fill
    cdef readonly double fill_interval      # seconds
    cdef double tokens
    cdef double last_fill
    cdef bint consume(self, double now) noexcept


cdef class LocalRateLimit:
    """One compiled LocalRateLimit message (filter-level or per-route)."""
    cdef public TokenBucket bucket          # None: no bucket, never limits
    cdef int enabled_ppm                    # parts per million
    cdef int enforced_ppm
    cdef readonly int status
    cdef readonly tuple response_headers    # tuple[(bytes, bytes)]
    cdef Counter c_enabled
    cdef Counter c_enforced
    cdef Counter c_rate_limited
    cdef Counter c_ok


cdef class LocalRateLimitFilter(HttpFilter):
    cdef LocalRateLimit default             # the filter-level config
