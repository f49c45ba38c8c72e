# The RPC route table: see rpc_routes.pxd. Matching reads a call only through its codec's
# RpcFrame interface (rpc_key / rpc_header), so it never branches on the protocol.

import re

from sofamesh._core.codecs.rpcframe cimport (
    RpcFrame, RK_SERVICE, RK_METHOD, RK_VERSION, RK_GROUP, RK_SERVICE_ID,
)
from sofamesh._core.router cimport rng_next


cdef class StrMatch:
    def __init__(self, int kind, str value="", bint ignore_case=False):
        self.kind = kind
        self.ignore_case = ignore_case
        self.value = value.lower() if ignore_case else value
        self.regex = re.compile(value) if kind == SM_REGEX else None

    cdef bint match(self, object s):
        if s is None:
            return False
        if self.kind == SM_ANY:
            return True
        if self.ignore_case:
            s = s.lower()
        if self.kind == SM_EXACT:
            return s == self.value
        if self.kind == SM_PREFIX:
            return s.startswith(self.value)
        if self.kind == SM_SUFFIX:
            return s.endswith(self.value)
        if self.kind == SM_CONTAINS:
            return self.value in s
        return self.regex.fullmatch(s) is not None


cdef class HeaderMatch:
    def __init__(self, str name, StrMatch sm=None, bint present=False, bint invert=False):
        self.name = name
        self.sm = sm
        self.present = present
        self.invert = invert

    cdef bint match(self, object value):
        cdef bint ok
        if self.sm is None:
            ok = (value is not None) == self.present
        else:
            ok = self.sm.match(value)
        return ok != self.invert


cdef class RpcRoute:
    def __init__(self, StrMatch method, list headers, str cluster="", list weighted=None):
        self.method = method
        self.headers = headers
        self.cluster = cluster
        self.weighted = weighted or []
        self.total_weight = sum(w for _, w in self.weighted)

    cdef str pick_cluster(self):
        cdef long long r
        if not self.weighted:
            return self.cluster
        r = <long long>(rng_next() % <unsigned long long>(self.total_weight or 1))
        for name, w in self.weighted:
            if r < w:
                return name
            r -= w
        return self.weighted[len(self.weighted) - 1][0]


cdef class RpcRouteConfig:
    def __init__(self, str interface, str group, str version, list routes):
        self.interface = interface
        self.group = group
        self.version = version
        self.routes = routes
        self.needs_method = any((<RpcRoute>r).method is not None for r in routes)


cdef class RpcRouteTable:
    def __init__(self, list configs):
        cdef RpcRouteConfig rc
        cdef RpcRoute r
        cdef HeaderMatch hm
        self.configs = configs
        names = set()
        for rc in configs:
            for r in rc.routes:
                for hm in r.headers:
                    names.add(hm.name.encode())
        self.header_names = tuple(sorted(names))

    cdef RpcRoute match(self, RpcFrame f):
        cdef RpcRouteConfig rc
        cdef RpcRoute r
        cdef HeaderMatch hm
        cdef bint ok, got_service = False, got_method = False
        # keys are read once, when a config first needs them
        iface = f.rpc_key(RK_SERVICE)
        if iface is None:
            return None
        service = version = group = method = None
        for rc in self.configs:
            if rc.interface != "*" and rc.interface != iface:
                if not got_service:
                    service = f.rpc_key(RK_SERVICE_ID)
                    got_service = True
                if rc.interface != service:
                    continue
            if rc.group:
                if group is None:
                    group = f.rpc_key(RK_GROUP) or ""
                if rc.group != group:
                    continue
            if rc.version:
                if version is None:
                    version = f.rpc_key(RK_VERSION) or ""
                if rc.version != version:
                    continue
            if rc.needs_method and not got_method:
                method = f.rpc_key(RK_METHOD)
                got_method = True
            for r in rc.routes:
                if r.method is not None and not r.method.match(method):
                    continue
                ok = True
                for hm in r.headers:
                    if not hm.match(f.rpc_header(hm.name)):
                        ok = False
                        break
                if ok:
                    return r
        return None

    def cluster_for(self, RpcFrame f):
        """The cluster a call goes to (a weighted route picks one), or None: no route."""
        r = self.match(f)
        return None if r is None else r.pick_cluster()


SM = {"exact": SM_EXACT, "prefix": SM_PREFIX, "suffix": SM_SUFFIX, "contains": SM_CONTAINS,
      "regex": SM_REGEX, "any": SM_ANY}
