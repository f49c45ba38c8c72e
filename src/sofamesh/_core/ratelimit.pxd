# Token buckets and the local rate limit HTTP filter (envoy.filters.http.local_ratelimit).
#
# Contract: a TokenBucket refills lazily from the monotonic clock (no timer): every
# fill_interval adds tokens_per_fill, capped at max_tokens; consume() is a few C ops and
# one compare-and-swap. A bucket's state is one 64-bit word in a BucketSlot; the slot is
# either the bucket's own (one process) or a slot of a BucketRegion, memory shared by
# every worker process, so N workers together admit the configured rate, as Envoy's
# workers share one bucket.

from libc.stdint cimport int64_t, uint64_t

from sofamesh._core.http_stream cimport HttpFilter, HttpStream
from sofamesh._core.stats cimport Counter


ctypedef struct BucketSlot:         # 64 bytes: one cache line, no false sharing
    uint64_t key                    # hash of config path + parameters; 0: free slot
    int64_t base_ns                 # CLOCK_MONOTONIC ns of fill epoch 0; 0: not yet set
    uint64_t taken                  # virtual tokens taken (atomic; see bucket_take)
    uint64_t pad[5]


ctypedef struct RegionHeader:       # 64 bytes, then nslots BucketSlots
    uint64_t magic                  # REGION_MAGIC
    uint64_t nslots
    uint64_t used                   # slots claimed (atomic)
    uint64_t overflows              # claims refused because every slot was taken (atomic)
    uint64_t pad[4]


cdef class BucketRegion:
    """A mapping of the shared bucket array (created by the main process, attached by
    each worker from the fd it inherits)."""
    cdef char* mem
    cdef size_t size
    cdef RegionHeader* hdr
    cdef BucketSlot* slots
    cdef readonly int fd            # -1 once closed
    cdef BucketSlot* claim(self, uint64_t key, int64_t now_ns) noexcept


cdef class SharedCount:
    cdef BucketSlot* total                  # &self.own_total, or a slot of self.region
    cdef BucketSlot* part                   # this worker's part
    cdef BucketSlot own_total
    cdef BucketSlot own_part
    cdef readonly BucketRegion region       # None: a private count
    cpdef bint try_acquire(self, int64_t limit)
    cpdef int64_t acquire(self)
    cpdef void release(self)


cdef class TokenBucket:
    cdef readonly double max_tokens
    cdef readonly double tokens_per_fill
    cdef readonly double fill_interval      # seconds
    cdef uint64_t max_t
    cdef uint64_t per_fill                  # min(tokens_per_fill, max_tokens)
    cdef int64_t interval_ns
    cdef BucketSlot* slot                   # &self.own, or a slot of self.region
    cdef BucketSlot own
    cdef readonly BucketRegion region       # None: a private bucket
    cdef bint consume(self, int64_t now_ns) noexcept


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
