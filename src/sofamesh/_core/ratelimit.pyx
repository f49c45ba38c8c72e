# Token buckets and envoy.filters.http.local_ratelimit; see ratelimit.pxd.

from sofamesh._core.http_proxy cimport HttpFilter, DownstreamConn, FILTER_CONTINUE, FILTER_STOP
from sofamesh._core.router cimport rng_next
from sofamesh._core.stats cimport Store

cdef extern from "time.h" nogil:
    ctypedef int clockid_t
    cdef struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(clockid_t clk, timespec* ts)
    clockid_t CLOCK_MONOTONIC


cdef inline double mono() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


def monotonic():
    return mono()


cdef class TokenBucket:
    def __init__(self, double max_tokens, double tokens_per_fill, double fill_interval,
                 now=None):
        if max_tokens <= 0 or fill_interval <= 0:
            raise ValueError("token bucket needs max_tokens > 0 and fill_interval > 0")
        self.max_tokens = max_tokens
        self.tokens_per_fill = tokens_per_fill if tokens_per_fill > 0 else 1
        self.fill_interval = fill_interval
        self.tokens = max_tokens
        self.last_fill = mono() if now is None else now

    cdef bint consume(self, double now) noexcept:
        cdef double fills
        if now - self.last_fill >= self.fill_interval:
            fills = <double>(<long long>((now - self.last_fill) / self.fill_interval))
            self.tokens += fills * self.tokens_per_fill
            if self.tokens > self.max_tokens:
                self.tokens = self.max_tokens
            self.last_fill += fills * self.fill_interval
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def try_consume(self, now=None):
        return self.consume(mono() if now is None else now)

    @property
    def available(self):
        return self.tokens


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
        """LocalRateLimit from envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit."""
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
            bucket = TokenBucket(tb.max_tokens, per_fill, interval)
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

    cpdef int decode_headers(self, DownstreamConn s, bint end_stream) except -1:
        cdef LocalRateLimit lim = self.default
        cdef object per_route
        if s.route is not None and s.route.filter_config:
            per_route = s.route.filter_config.get(self.name)
            if per_route is not None:
                lim = <LocalRateLimit>per_route
        if lim is None or lim.bucket is None or not _roll(lim.enabled_ppm):
            return FILTER_CONTINUE
        lim.c_enabled.inc()
        if lim.bucket.consume(mono()):
            lim.c_ok.inc()
            return FILTER_CONTINUE
        lim.c_rate_limited.inc()
        if not _roll(lim.enforced_ppm):
            return FILTER_CONTINUE
        lim.c_enforced.inc()
        s.send_local_reply(lim.status, b"local_rate_limited", lim.response_headers, "RL")
        return FILTER_STOP
