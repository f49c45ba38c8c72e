# Zone-aware routing's per-request choice of a locality (see zone_aware.pxd).

from cpython.mem cimport PyMem_Free, PyMem_Malloc

from sofamesh._core.router cimport rng_next

# the states and results for Python (proxy/zone_aware.py, tests)
NO_ROUTING, DIRECT, RESIDUAL = ZONE_NO_ROUTING, ZONE_DIRECT, ZONE_RESIDUAL
ANY, FAIL = ZONE_ANY, ZONE_FAIL


cdef class ZoneRouting:
    def __init__(self, int routing_enabled=100, bint fail_on_panic=False):
        self.routing_enabled = routing_enabled
        self.fail_on_panic = fail_on_panic
        self.state = ZONE_NO_ROUTING
        self.localities = ()
        self.n = 0

    def __dealloc__(self):
        PyMem_Free(self.residual)

    def install(self, int state, unsigned long long local_percent, list residual,
                tuple localities, bint local_panic):
        """A new routing state: `residual` holds the cumulative residual capacity of each
        locality of `localities` (RESIDUAL), in Envoy's order (the local one first)."""
        cdef Py_ssize_t i, n = len(localities)
        cdef unsigned long long *arr = NULL
        if state == ZONE_RESIDUAL:
            if n == 0 or len(residual) != n:
                raise ValueError("a residual state needs one capacity per locality")
            arr = <unsigned long long *>PyMem_Malloc(n * sizeof(unsigned long long))
            if arr == NULL:
                raise MemoryError()
            for i in range(n):
                arr[i] = residual[i]
        elif state == ZONE_DIRECT and n == 0:
            raise ValueError("a direct state needs the local locality")
        if state != ZONE_NO_ROUTING and None in (
            self.all_directly, self.sampled, self.cross_zone, self.local_not_ok,
            self.no_capacity_left,
        ):
            raise ValueError("zone routing needs its lb_zone_* counters")
        PyMem_Free(self.residual)
        self.residual = arr
        self.state = state
        self.local_percent = local_percent
        self.localities = localities
        self.n = n
        self.local_panic = local_panic

    def residual_capacity(self):
        """The cumulative residual capacities (tests, admin); [] unless RESIDUAL."""
        if self.residual == NULL:
            return []
        return [self.residual[i] for i in range(self.n)]

    cdef int choose(self) except -3:
        """The locality index of this request's host, ZONE_ANY or ZONE_FAIL: Envoy's
        hostSourceToUse past the priority choice, and tryChooseLocalLocalityHosts."""
        cdef unsigned long long total, t
        cdef Py_ssize_t i
        if self.state == ZONE_NO_ROUTING:
            return ZONE_ANY
        if self.routing_enabled < 100 and <int>(rng_next() % 100) >= self.routing_enabled:
            return ZONE_ANY
        if self.local_panic:
            self.local_not_ok.inc()
            return ZONE_FAIL if self.fail_on_panic else ZONE_ANY
        if self.state == ZONE_DIRECT:
            self.all_directly.inc()
            return 0
        if rng_next() % 10000 < self.local_percent:
            self.sampled.inc()
            return 0
        self.cross_zone.inc()
        total = self.residual[self.n - 1]
        if total == 0:  # rounding left no capacity anywhere: any locality
            self.no_capacity_left.inc()
            return <int>(rng_next() % <unsigned long long>self.n)
        t = rng_next() % total
        i = 0
        while t >= self.residual[i]:
            i += 1
        return <int>i

    def pick(self):
        """choose() from Python (tests)."""
        return self.choose()
