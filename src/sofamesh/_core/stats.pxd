# Counters, gauges and histograms: C fields bumped on the hot path, read by admin.
#
# Contract: hot-path code cimports these classes and touches the fields directly
# (`c.value += 1` compiles to a struct field increment, no Python call). Names follow
# Envoy's (`cluster.<name>.upstream_rq_total`). A Store owns each stat by full name, so two
# parts of the proxy that ask for the same name share one object.

cdef class Counter:
    cdef readonly str name
    cdef public unsigned long long value    # running total since start (or reset_counters)
    cdef public bint used                   # set on first inc; survives reset, as in Envoy
    cdef inline void inc(self) noexcept:
        self.value += 1
        self.used = True
    cdef inline void add(self, unsigned long long n) noexcept:
        self.value += n
        self.used = True

cdef class Gauge:
    cdef readonly str name
    cdef public long long value
    cdef public bint used
    cdef inline void inc(self) noexcept:
        self.value += 1
        self.used = True
    cdef inline void dec(self) noexcept:
        self.value -= 1
        self.used = True
    cdef inline void set(self, long long v) noexcept:
        self.value = v
        self.used = True

cdef class Histogram:
    cdef readonly str name
    cdef readonly tuple bounds              # tuple[float, ...], upper bucket bounds (ms)
    cdef unsigned long long counts[20]      # counts[i]: samples <= bounds[i]; last is +Inf
    cdef public unsigned long long count
    cdef public double sum
    cdef public bint used
    cdef int nbounds                        # len(bounds): DEFAULT_BOUNDS, in _BOUNDS
    cdef void record(self, double v) noexcept

cdef class Store:
    cdef dict _counters     # dict[str, Counter]
    cdef dict _gauges       # dict[str, Gauge]
    cdef dict _histograms   # dict[str, Histogram]
    cpdef Counter counter(self, str name)
    cpdef Gauge gauge(self, str name)
    cpdef Histogram histogram(self, str name)
