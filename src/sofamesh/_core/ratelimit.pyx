# Token buckets (private or shared by worker processes) and envoy.filters.http.local_ratelimit;
# see ratelimit.pxd.
#
# A bucket's whole state is one 64-bit counter, `taken`, so one compare-and-swap updates
# it from any process without a lock. With filled = fill epochs since base_ns times
# tokens_per_fill (epoch = floor((now - base_ns) / fill_interval)):
#
#     tokens = min(max_tokens, max_tokens + filled - taken)
#     take one:  taken' = max(taken, filled) + 1          (only if tokens >= 1)
#
# which is exactly "every fill_interval adds tokens_per_fill, capped at max_tokens" (a
# zeroed slot is a full bucket). `taken` only grows, so a process whose clock read is a
# little behind another's sees fewer tokens, never more. Arithmetic is modulo 2**64 and
# compared as signed differences: correct while a bucket goes less than 2**63 tokens'
# worth of fills without a request.
#
# Shared region (one memfd, mmap'd MAP_SHARED by every worker):
#
#     +------------------+-----------+-----------+-----+-----------+
#     | RegionHeader 64B | slot 0    | slot 1    | ... | slot n-1  |   BucketSlot: 64 B
#     +------------------+-----------+-----------+-----+-----------+
#
# A bucket finds its slot by key = hash(config path, parameters), open addressing from
# key % n: the first slot holding the key is the bucket's; a free slot (key 0) on the way
# is claimed with a CAS on its key. Every worker builds the same config, so every worker
# (and a restarted one) lands on the same slot, and a reloaded route with the same
# parameters keeps its tokens. Slots are never freed: a region holds REGION_SLOTS distinct
# buckets; past that a bucket stays private to its worker (counted, logged).

cimport cython
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memset
from posix.mman cimport mmap, munmap, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_FAILED
from posix.unistd cimport close

from sofamesh._core.http_stream cimport HttpFilter, HttpStream, FILTER_CONTINUE, FILTER_STOP
from sofamesh._core.router cimport rng_next
from sofamesh._core.stats cimport Store

cdef extern from "time.h" nogil:
    ctypedef int clockid_t
    cdef struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(clockid_t clk, timespec* ts)
    clockid_t CLOCK_MONOTONIC

cdef extern from *:
    """
    /* gcc/clang __atomic builtins on one 64-bit word: lock-free on every 64-bit target. */
    static inline uint64_t rl_load(uint64_t *p) {
        return __atomic_load_n(p, __ATOMIC_RELAXED);
    }
    static inline int rl_cas(uint64_t *p, uint64_t *expected, uint64_t desired) {
        return __atomic_compare_exchange_n(p, expected, desired, 1,
                                           __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    }
    static inline uint64_t rl_add(uint64_t *p, uint64_t v) {
        return __atomic_add_fetch(p, v, __ATOMIC_RELAXED);
    }
    static inline int64_t rl_load_i64(int64_t *p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    static inline int rl_cas_i64(int64_t *p, int64_t *expected, int64_t desired) {
        return __atomic_compare_exchange_n(p, expected, desired, 0,
                                           __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    static inline int rl_cas_key(uint64_t *p, uint64_t *expected, uint64_t desired) {
        return __atomic_compare_exchange_n(p, expected, desired, 0,
                                           __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    static inline uint64_t rl_load_key(uint64_t *p) {
        return __atomic_load_n(p, __ATOMIC_ACQUIRE);
    }
    """
    uint64_t rl_load(uint64_t* p) nogil
    bint rl_cas(uint64_t* p, uint64_t* expected, uint64_t desired) nogil
    uint64_t rl_add(uint64_t* p, uint64_t v) nogil
    int64_t rl_load_i64(int64_t* p) nogil
    bint rl_cas_i64(int64_t* p, int64_t* expected, int64_t desired) nogil
    bint rl_cas_key(uint64_t* p, uint64_t* expected, uint64_t desired) nogil
    uint64_t rl_load_key(uint64_t* p) nogil


REGION_MAGIC = 0x736f66616c726c31  # "sofalrl1"
REGION_SLOTS = 4096                # distinct buckets a region holds (256 KiB)
cdef uint64_t _MAGIC = REGION_MAGIC


cdef inline double mono() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline int64_t mono_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


def monotonic():
    return mono()


cdef inline int64_t _to_ns(double seconds) noexcept:
    return <int64_t>(seconds * 1e9 + 0.5)


@cython.cdivision(True)  # el > 0 and interval_ns > 0: C division, no sign fix-ups
cdef inline uint64_t _filled(BucketSlot* s, uint64_t per_fill, int64_t interval_ns,
                             int64_t now_ns) noexcept nogil:
    cdef int64_t el = now_ns - s.base_ns
    if el <= 0:
        return 0
    return <uint64_t>(el // interval_ns) * per_fill


cdef inline bint bucket_take(BucketSlot* s, uint64_t max_t, uint64_t per_fill,
                             int64_t interval_ns, int64_t now_ns) noexcept nogil:
    """Takes one token if there is one (lock-free; see the top of this file)."""
    cdef uint64_t filled = _filled(s, per_fill, interval_ns, now_ns)
    cdef uint64_t taken = rl_load(&s.taken)
    cdef uint64_t start
    while True:
        start = filled if <int64_t>(taken - filled) < 0 else taken
        if <int64_t>(start - filled) >= <int64_t>max_t:
            return False
        if rl_cas(&s.taken, &taken, start + 1):  # on failure `taken` is reloaded
            return True


def _memfd() -> int:
    import os
    import tempfile

    if hasattr(os, "memfd_create"):
        try:
            return os.memfd_create("sofamesh-local-ratelimit", os.MFD_CLOEXEC)
        except OSError:
            pass
    fd, path = tempfile.mkstemp(prefix="sofamesh-local-ratelimit-")
    os.unlink(path)
    return fd


cdef BucketRegion _map_region(int fd):
    """Maps the whole file behind `fd` (the region takes ownership of `fd`)."""
    import os

    cdef BucketRegion r = BucketRegion.__new__(BucketRegion)
    r.fd = fd  # closed with the region, also if mmap fails
    cdef size_t size = os.fstat(fd).st_size
    if size < sizeof(RegionHeader):
        raise ValueError(f"fd {fd} is too small for a token bucket region")
    cdef void* p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
    if p == MAP_FAILED:
        raise OSError("mmap of the token bucket region failed")
    r.mem = <char*>p
    r.size = size
    r.hdr = <RegionHeader*>p
    r.slots = <BucketSlot*>(r.mem + sizeof(RegionHeader))
    return r


cdef class BucketRegion:
    """Shared token-bucket slots. `BucketRegion.create()` in the main process (a memfd),
    `BucketRegion.attach(fd)` in each worker; the mapping lives while the object does
    (buckets hold a reference)."""

    def __cinit__(self):
        self.mem = NULL
        self.fd = -1

    @staticmethod
    def create(int nslots=REGION_SLOTS) -> BucketRegion:
        import os

        if nslots < 1:
            raise ValueError("a bucket region needs at least one slot")
        fd = _memfd()
        try:
            os.ftruncate(fd, sizeof(RegionHeader) + nslots * sizeof(BucketSlot))
        except BaseException:
            os.close(fd)
            raise
        cdef BucketRegion r = _map_region(fd)  # owns fd from here
        r.hdr.nslots = nslots
        r.hdr.magic = _MAGIC
        return r

    @staticmethod
    def attach(int fd) -> BucketRegion:
        """Maps the region behind `fd` (created by `create`); `fd` stays the caller's."""
        import os

        cdef BucketRegion r = _map_region(os.dup(fd))
        if (r.hdr.magic != _MAGIC or sizeof(RegionHeader) + r.hdr.nslots * sizeof(BucketSlot)
                != r.size):
            r.close()
            raise ValueError(f"fd {fd} is not a sofamesh token bucket region")
        return r

    cdef BucketSlot* claim(self, uint64_t key, int64_t now_ns) noexcept:
        """The slot for `key` (found or claimed), its base time set; NULL if full."""
        cdef uint64_t n = self.hdr.nslots
        cdef uint64_t i, k, expected
        cdef int64_t zero = 0
        cdef BucketSlot* s
        if key == 0:
            key = 1
        if now_ns == 0:
            now_ns = 1
        for i in range(n):
            s = &self.slots[(key + i) % n]
            k = rl_load_key(&s.key)
            if k == 0:
                expected = 0
                if rl_cas_key(&s.key, &expected, key):
                    rl_add(&self.hdr.used, 1)
                    k = key
                else:
                    k = expected  # another process took it, maybe for this key
            if k == key:
                rl_cas_i64(&s.base_ns, &zero, now_ns)  # the first holder sets epoch 0
                return s
        rl_add(&self.hdr.overflows, 1)
        return NULL

    @property
    def nslots(self):
        return self.hdr.nslots if self.mem != NULL else 0

    @property
    def used(self):
        return rl_load(&self.hdr.used) if self.mem != NULL else 0

    @property
    def overflows(self):
        return rl_load(&self.hdr.overflows) if self.mem != NULL else 0

    def close(self):
        """Unmaps now (only when no bucket uses the region any more) and closes the fd."""
        import os

        if self.mem != NULL:
            munmap(self.mem, self.size)
            self.mem = NULL
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __dealloc__(self):
        if self.mem != NULL:
            munmap(self.mem, self.size)
        if self.fd >= 0:
            close(self.fd)  # no Python import here: it may run at interpreter shutdown


def bucket_key(str path, uint64_t max_tokens, uint64_t tokens_per_fill,
               int64_t interval_ns) -> int:
    """A bucket's slot key: its config path and parameters, the same in every worker."""
    import hashlib

    raw = f"{path}|{max_tokens}|{tokens_per_fill}|{interval_ns}".encode()
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little") or 1


cdef class TokenBucket:
    def __init__(self, double max_tokens, double tokens_per_fill, double fill_interval,
                 now=None, BucketRegion region=None, str key=None):
        """`region` and `key` (the config path): share the bucket with every process that
        maps the region and builds the same bucket; otherwise (or if the region is full,
        see `shared`) the bucket is this object's own."""
        if max_tokens < 1 or fill_interval <= 0:
            raise ValueError("token bucket needs max_tokens >= 1 and fill_interval > 0")
        self.max_tokens = max_tokens
        self.tokens_per_fill = tokens_per_fill if tokens_per_fill > 0 else 1
        self.fill_interval = fill_interval
        self.max_t = <uint64_t>max_tokens
        self.per_fill = <uint64_t>self.tokens_per_fill
        if self.per_fill > self.max_t:  # a fill past max_tokens fills the bucket
            self.per_fill = self.max_t
        self.interval_ns = max(_to_ns(fill_interval), 1)
        cdef int64_t now_ns = mono_ns() if now is None else _to_ns(now)
        memset(&self.own, 0, sizeof(BucketSlot))
        self.own.base_ns = now_ns
        self.slot = &self.own
        self.region = None
        if region is not None and key is not None and region.mem != NULL:
            s = region.claim(bucket_key(key, self.max_t, <uint64_t>self.tokens_per_fill,
                                        self.interval_ns), now_ns)
            if s != NULL:
                self.slot = s
                self.region = region

    @property
    def shared(self):
        """True if the bucket lives in a BucketRegion."""
        return self.region is not None

    cdef bint consume(self, int64_t now_ns) noexcept:
        return bucket_take(self.slot, self.max_t, self.per_fill, self.interval_ns, now_ns)

    def try_consume(self, now=None):
        return self.consume(mono_ns() if now is None else _to_ns(now))

    def available_at(self, now=None):
        """Tokens left at `now` (seconds, monotonic; default: now)."""
        cdef int64_t now_ns = mono_ns() if now is None else _to_ns(now)
        cdef uint64_t filled = _filled(self.slot, self.per_fill, self.interval_ns, now_ns)
        cdef uint64_t taken = rl_load(&self.slot.taken)
        if <int64_t>(taken - filled) < 0:
            taken = filled
        return <double>(<int64_t>self.max_t - <int64_t>(taken - filled))

    @property
    def available(self):
        return self.available_at()


def _count_key(str key) -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b(b"count|" + key.encode(), digest_size=8).digest(),
                          "little") or 1


_reaped = set()  # the per-worker count slots this process has taken back (see SharedCount)


cdef class SharedCount:
    """A count every worker process shares (connection limits: proxy/overload.py,
    filters/network/connection_limit.py): the total in one slot of the region (the
    `taken` word), each worker's part in a slot of its own. A worker that restarts after
    a crash takes back, the first time it builds the count, what its predecessor left
    (its part, subtracted from the total). Without a region (one process), or with the
    region full, the count is this object's own."""

    def __init__(self, str key, int worker=-1, BucketRegion region=None):
        memset(&self.own_total, 0, sizeof(BucketSlot))
        memset(&self.own_part, 0, sizeof(BucketSlot))
        self.total = &self.own_total
        self.part = &self.own_part
        self.region = None
        cdef BucketSlot* t
        cdef BucketSlot* p
        cdef uint64_t stale
        if region is None or region.mem == NULL or worker < 0:
            return
        t = region.claim(_count_key(key), 1)
        p = region.claim(_count_key(f"{key}|worker {worker}"), 1)
        if t == NULL or p == NULL:
            return
        self.total = t
        self.part = p
        self.region = region
        if (key, worker) not in _reaped:  # the first in this process: a new worker
            _reaped.add((key, worker))
            stale = rl_load(&p.taken)
            if stale:
                rl_add(&p.taken, <uint64_t>0 - stale)
                rl_add(&t.taken, <uint64_t>0 - stale)

    cpdef bint try_acquire(self, int64_t limit):
        """One more if fewer than `limit` (Envoy's tryAllocateResource)."""
        cdef uint64_t cur = rl_load(&self.total.taken)
        while True:
            if <int64_t>cur >= limit:
                return False
            if rl_cas(&self.total.taken, &cur, cur + 1):  # on failure `cur` is reloaded
                rl_add(&self.part.taken, 1)
                return True

    cpdef int64_t acquire(self):
        """One more; returns the count before it."""
        rl_add(&self.part.taken, 1)
        return <int64_t>rl_add(&self.total.taken, 1) - 1

    cpdef void release(self):
        rl_add(&self.part.taken, <uint64_t>0 - 1)
        rl_add(&self.total.taken, <uint64_t>0 - 1)

    @property
    def value(self):
        return <int64_t>rl_load(&self.total.taken)

    @property
    def mine(self):
        """This worker's part."""
        return <int64_t>rl_load(&self.part.taken)

    @property
    def shared(self):
        return self.region is not None


_shared_region = None  # BucketRegion | None: set in a worker process by share_buckets()


def share_buckets(region):
    """Buckets compiled from config from now on live in `region` (a worker process calls
    this with the region the main process created, before building its Server); None:
    private buckets (one process)."""
    global _shared_region
    _shared_region = region


def shared_region():
    return _shared_region


cdef int _ppm(pct):
    """envoy.type.v3.FractionalPercent -> parts per million."""
    if pct is None:
        return 0
    scale = (10000, 100, 1)[pct.denominator] if pct.denominator < 3 else 1
    v = pct.numerator * scale
    return 1000000 if v > 1000000 else v


cdef class LocalRateLimit:
    def __init__(self, Store store, str stat_prefix, TokenBucket bucket, int enabled_ppm,
                 int enforced_ppm, int status=429, response_headers=()):
        self.bucket = bucket
        self.enabled_ppm = enabled_ppm
        self.enforced_ppm = enforced_ppm
        self.status = status
        self.response_headers = tuple(response_headers)
        p = f"{stat_prefix}.http_local_rate_limit."
        self.c_enabled = store.counter(p + "enabled")
        self.c_enforced = store.counter(p + "enforced")
        self.c_rate_limited = store.counter(p + "rate_limited")
        self.c_ok = store.counter(p + "ok")

    @staticmethod
    def from_proto(msg, Store store, str path=""):
        """LocalRateLimit from envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit.
        In a worker process (see share_buckets) the bucket is shared by all workers, keyed
        by `path`."""
        from sofamesh.proxy.errors import UnsupportedConfig
        if msg.descriptors:
            raise UnsupportedConfig(f"{path}.descriptors: rate limit descriptors are not "
                                    "supported")
        if msg.local_rate_limit_per_downstream_connection:
            raise UnsupportedConfig(f"{path}.local_rate_limit_per_downstream_connection is "
                                    "not supported")
        if not msg.stat_prefix:
            raise UnsupportedConfig(f"{path}.stat_prefix: required")
        bucket = None
        if msg.HasField("token_bucket"):
            tb = msg.token_bucket
            interval = tb.fill_interval.seconds + tb.fill_interval.nanos / 1e9
            if interval <= 0 or tb.max_tokens == 0:
                raise UnsupportedConfig(f"{path}.token_bucket: max_tokens and fill_interval "
                                        "must be > 0")
            per_fill = tb.tokens_per_fill.value if tb.HasField("tokens_per_fill") else 1
            region = _shared_region
            bucket = TokenBucket(tb.max_tokens, per_fill, interval, region=region, key=path)
            if region is not None and not bucket.shared:
                import logging
                logging.getLogger("sofamesh.ratelimit").warning(
                    "%s: the shared token bucket region is full (%d buckets); this bucket "
                    "is per worker process, so the workers together admit up to "
                    "--concurrency times its rate", path, region.nslots)
                store.counter(f"{msg.stat_prefix}.http_local_rate_limit."
                              "shared_bucket_overflow").inc()
        enabled = _ppm(msg.filter_enabled.default_value) if msg.HasField("filter_enabled") \
            else 0
        enforced = _ppm(msg.filter_enforced.default_value) if msg.HasField(
            "filter_enforced") else 0
        status = msg.status.code if msg.HasField("status") and msg.status.code >= 400 else 429
        headers = []
        for hv in msg.response_headers_to_add:
            headers.append((hv.header.key.encode(), hv.header.value.encode()))
        return LocalRateLimit(store, msg.stat_prefix, bucket, enabled, enforced, status,
                              headers)


cdef inline bint _roll(int ppm) noexcept:
    if ppm >= 1000000:
        return True
    if ppm <= 0:
        return False
    return <int>(rng_next() % 1000000) < ppm


cdef class LocalRateLimitFilter(HttpFilter):
    def __init__(self, LocalRateLimit default, str name="envoy.filters.http.local_ratelimit"):
        HttpFilter.__init__(self, name)
        self.default = default

    cpdef int decode_headers(self, HttpStream s, bint end_stream) except -1:
        cdef LocalRateLimit lim = self.default
        cdef object per_route
        if s.route is not None and s.route.filter_config:
            per_route = s.route.filter_config.get(self.name)
            if per_route is not None:
                lim = <LocalRateLimit>per_route
        if lim is None or lim.bucket is None or not _roll(lim.enabled_ppm):
            return FILTER_CONTINUE
        lim.c_enabled.inc()
        if lim.bucket.consume(mono_ns()):
            lim.c_ok.inc()
            return FILTER_CONTINUE
        lim.c_rate_limited.inc()
        if not _roll(lim.enforced_ppm):
            return FILTER_CONTINUE
        lim.c_enforced.inc()
        s.send_local_reply(lim.status, b"local_rate_limited", lim.response_headers, "RL")
        return FILTER_STOP
