# Counters, gauges and histograms for the hot path; see stats.pxd for the contract.

# Envoy's default histogram buckets (milliseconds).
DEFAULT_BOUNDS = (0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
                  5000.0, 10000.0, 30000.0, 60000.0, 300000.0, 600000.0, 1800000.0,
                  3600000.0)


cdef class Counter:
    def __cinit__(self, str name):
        self.name = name
        self.value = 0
        self.used = False

    def __repr__(self):
        return f"Counter({self.name!r}, {self.value})"


cdef class Gauge:
    def __cinit__(self, str name):
        self.name = name
        self.value = 0
        self.used = False

    def __repr__(self):
        return f"Gauge({self.name!r}, {self.value})"


cdef class Histogram:
    def __cinit__(self, str name):
        cdef int i
        self.name = name
        self.bounds = DEFAULT_BOUNDS
        self.nbounds = len(DEFAULT_BOUNDS)
        for i in range(self.nbounds):
            self.cbounds[i] = DEFAULT_BOUNDS[i]
        for i in range(20):
            self.counts[i] = 0
        self.count = 0
        self.sum = 0.0
        self.used = False

    cdef void record(self, double v) noexcept:
        cdef int i = 0
        while i < self.nbounds and v > self.cbounds[i]:
            i += 1
        self.counts[i] += 1
        self.count += 1
        self.sum += v
        self.used = True

    def add(self, double v):
        """Records one sample (milliseconds)."""
        self.record(v)

    def bucket_counts(self):
        """Per-bucket (non-cumulative) counts, len(bounds) + 1 entries, the last for +Inf."""
        return [self.counts[i] for i in range(self.nbounds + 1)]

    def quantile(self, double q):
        """An estimate of quantile q (0..1) by linear interpolation inside the bucket."""
        if self.count == 0:
            return None
        cdef double target = q * self.count
        cdef double seen = 0
        cdef double lo = 0.0
        cdef int i
        for i in range(self.nbounds + 1):
            if self.counts[i] and seen + self.counts[i] >= target:
                hi = self.cbounds[i] if i < self.nbounds else lo * 2 or 1.0
                return lo + (hi - lo) * ((target - seen) / self.counts[i])
            seen += self.counts[i]
            if i < self.nbounds:
                lo = self.cbounds[i]
        return lo

    def reset(self):
        cdef int i
        for i in range(20):
            self.counts[i] = 0
        self.count = 0
        self.sum = 0.0


cdef class Store:
    """All stats of one process, by full Envoy-style name."""

    def __cinit__(self):
        self._counters = {}
        self._gauges = {}
        self._histograms = {}

    cpdef Counter counter(self, str name):
        c = self._counters.get(name)
        if c is None:
            c = Counter(name)
            self._counters[name] = c
        return <Counter>c

    cpdef Gauge gauge(self, str name):
        g = self._gauges.get(name)
        if g is None:
            g = Gauge(name)
            self._gauges[name] = g
        return <Gauge>g

    cpdef Histogram histogram(self, str name):
        h = self._histograms.get(name)
        if h is None:
            h = Histogram(name)
            self._histograms[name] = h
        return <Histogram>h

    def counters(self):
        return self._counters

    def gauges(self):
        return self._gauges

    def histograms(self):
        return self._histograms

    def reset_counters(self):
        cdef Counter c
        for c in self._counters.values():
            c.value = 0

    def snapshot(self):
        """A plain-data copy: {"counters": {name: int}, "gauges": {name: int},
        "histograms": {name: {"counts": [...], "sum": float, "count": int}},
        "used": set of names}. Worker processes send this to the admin process."""
        cdef Counter c
        cdef Gauge g
        cdef Histogram h
        used = set()
        counters = {}
        for c in self._counters.values():
            counters[c.name] = c.value
            if c.used:
                used.add(c.name)
        gauges = {}
        for g in self._gauges.values():
            gauges[g.name] = g.value
            if g.used:
                used.add(g.name)
        hists = {}
        for h in self._histograms.values():
            hists[h.name] = {"counts": h.bucket_counts(), "sum": h.sum, "count": h.count}
            if h.used:
                used.add(h.name)
        return {"counters": counters, "gauges": gauges, "histograms": hists, "used": used}
