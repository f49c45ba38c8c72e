# Zone-aware routing, the per-request part (Envoy's ZoneAwareLoadBalancerBase). The state
# is computed in Python (proxy/zone_aware.py) each time the upstream cluster's priority 0
# or the local cluster changes, and installed whole; choose() only reads it.

from sofamesh._core.stats cimport Counter

# ZoneRouting.state (Envoy's LocalityRoutingState)
cdef enum:
    ZONE_NO_ROUTING = 0     # earlyExitNonLocalityRouting: the level's healthy hosts
    ZONE_DIRECT = 1         # every request to the local locality
    ZONE_RESIDUAL = 2       # local_percent of them local, the rest by residual capacity

# ZoneRouting.choose() results that are not a locality index
cdef enum:
    ZONE_ANY = -1           # no zone routing for this request: the level's healthy hosts
    ZONE_FAIL = -2          # fail_traffic_on_panic and the local cluster in panic: no host


cdef class ZoneRouting:
    # config (Cluster.CommonLbConfig.ZoneAwareLbConfig)
    cdef readonly int routing_enabled       # percent of requests considered (default 100)
    cdef readonly bint fail_on_panic        # fail_traffic_on_panic
    # state, replaced whole by install()
    cdef readonly int state                 # ZONE_*
    cdef readonly unsigned long long local_percent  # of 10000: the local share (RESIDUAL)
    cdef unsigned long long *residual       # cumulative residual capacity per locality
    cdef readonly Py_ssize_t n              # number of localities
    cdef readonly tuple localities          # tuple[upstream.HostSet]: healthy, local first
    cdef readonly bint local_panic          # the local cluster's hosts are in panic
    # cluster.<name>.lb_zone_* (None without a local cluster: never counted then)
    cdef public Counter all_directly
    cdef public Counter sampled
    cdef public Counter cross_zone
    cdef public Counter local_not_ok
    cdef public Counter no_capacity_left
    cdef int choose(self) except -3
