# The per-request half of the Lua cluster specifier: one call into the script's Lua-side
# route handle (built by sofamesh.proxy.lua_cluster at config load) with the values of the
# header names the script reads by literal, and the answer turned into a cluster name.
#
# PERF(benchmarks/instr_per_request.py --lua): the header values are read with the map's C
# lookup (no lower-casing: the names are lower-case already) and cluster names are decoded
# once; in Python these were ~2k of the Lua route's instructions per request.

from sofamesh._core.headers cimport HeaderMap


cdef class LuaRoute:
    cdef readonly str default       # default_cluster
    cdef public object call         # lupa function: (v1, ..., v4) -> bytes | None | (False, msg)
    cdef tuple names                # tuple[bytes, ...]: lower-case literal header names, <= 4
    cdef int n
    cdef dict decoded               # dict[bytes, str]: cluster names returned, decoded once
    cdef object on_failure          # callable(result) -> None: counts and logs (Python)
    cdef public object headers      # headers.HeaderMap being routed, else None
    cdef public object clusters     # dict[str, upstream.Cluster] of that request's worker
    cdef public object lua          # lupa LuaRuntime running the script (kept alive here)
    # the script's callbacks hold the route weakly: a strong reference through the Lua
    # registry is a cycle Python's collector cannot see (a runtime leaked per route update)
    cdef object __weakref__

    def __init__(self, str default, names, on_failure):
        self.default = default
        self.names = tuple(names)
        self.n = len(self.names)
        if self.n > 4:
            raise ValueError("at most four prefetched header names")
        self.decoded = {}
        self.on_failure = on_failure
        self.call = None
        self.headers = None
        self.clusters = None
        self.lua = None

    cpdef str cluster(self, HeaderMap h, dict clusters):
        """The cluster for request headers h; never raises for what the script does (a
        failure is reported to on_failure and answered with default_cluster)."""
        cdef object r
        cdef str s
        cdef tuple nm = self.names
        self.headers = h
        self.clusters = clusters
        try:
            if self.n == 0:
                r = self.call()
            elif self.n == 1:
                r = self.call(h.get_all(nm[0]))
            elif self.n == 2:
                r = self.call(h.get_all(nm[0]), h.get_all(nm[1]))
            elif self.n == 3:
                r = self.call(h.get_all(nm[0]), h.get_all(nm[1]), h.get_all(nm[2]))
            else:
                r = self.call(h.get_all(nm[0]), h.get_all(nm[1]), h.get_all(nm[2]),
                              h.get_all(nm[3]))
        except Exception as e:      # a lupa failure: Envoy's run-time error path
            r = (False, repr(e).encode())
        finally:
            self.headers = None
            self.clusters = None
        if type(r) is bytes:
            s = self.decoded.get(r)
            if s is None:
                s = (<bytes>r).decode("utf-8", "surrogateescape")
                if len(self.decoded) < 1024:    # a script naming clusters without end
                    self.decoded[r] = s
            return s
        self.on_failure(r)
        return self.default
