# envoy.filters.http.rbac; see rbac_http.pxd.
#
# Envoy's decodeHeaders: the shadow engine is checked (and counted) first, then the
# enforced one; a denial is a local 403 `RBAC: access denied`. A route's RBACPerRoute
# replaces both engines (an empty one turns RBAC off there); stats stay the filter's.

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from sofamesh._core.codecs.http1 cimport Head
from sofamesh._core.headers cimport HeaderMap
from sofamesh._core.http_stream cimport HttpFilter, HttpStream, FILTER_CONTINUE, FILTER_STOP
from sofamesh._core.rbac cimport (
    RbacPolicies, RbacRequest, RbacStats, rbac_parse_ip, ADDR_REMOTE, ADDR_LOCAL,
    PSEUDO_METHOD, PSEUDO_PATH, PSEUDO_AUTHORITY, PSEUDO_HOST, PSEUDO_SCHEME,
    PSEUDO_PRINCIPAL, PSEUDO_SNI, tls_pseudo, header_slot, joined_header,
)
from sofamesh._core.stats cimport Store
from sofamesh.proxy.original_dst import local_address as _local_address

cdef bytes _DENIED = b"RBAC: access denied"
cdef tuple _META_KEY = ("metadata", "envoy.filters.http.rbac")   # filter_state key
cdef bytes _XFF = b"x-forwarded-for"
cdef int _XFF_SLOT = header_slot(_XFF)


cdef class HttpRbacRequest(RbacRequest):
    cdef int resolve(self, int which) except -1:
        cdef bytes ip
        cdef const char* p
        cdef Py_ssize_t n, i, end
        if which == ADDR_LOCAL:
            t = self.s.transport
            info = _local_address(t)  # the original destination, when restored
            if info:
                ip = str(info[0]).encode()
                rbac_parse_ip(PyBytes_AS_STRING(ip), PyBytes_GET_SIZE(ip), &self.addr[which])
                self.port[which] = info[1]
            return 0
        ip = self.s.remote_ip
        if which == ADDR_REMOTE and not self.s.cfg.use_remote_address:
            # Envoy's original client address without use_remote_address: the last
            # x-forwarded-for entry when it is an IP address, else the peer
            xff = joined_header(self.cached_header(_XFF_SLOT, _XFF))
            if xff is not None:
                p = PyBytes_AS_STRING(xff)
                n = PyBytes_GET_SIZE(xff)
                end = n
                while end > 0 and (p[end - 1] == 32 or p[end - 1] == 9):
                    end -= 1
                i = end
                while i > 0 and p[i - 1] != 44:     # ','
                    i -= 1
                while i < end and (p[i] == 32 or p[i] == 9):
                    i += 1
                rbac_parse_ip(p + i, end - i, &self.addr[which])
                if self.addr[which].family != 0:
                    return 0
        if ip is not self.last_ip:
            rbac_parse_ip(PyBytes_AS_STRING(ip), PyBytes_GET_SIZE(ip), &self.last_addr)
            self.last_ip = ip
        self.addr[which] = self.last_addr
        self.port[which] = -1
        return 0

    cdef object header(self, bytes name):
        cdef HeaderMap h = self.h
        cdef int n = <int>PyBytes_GET_SIZE(name)
        cdef const char* p = PyBytes_AS_STRING(name)
        cdef int i = h.find_from(p, n, 0), j
        if i < 0:
            return None
        j = h.find_from(p, n, i + 1)
        if j < 0:
            return h.value_at(i)
        out = [h.value_at(i)]
        while j >= 0:
            out.append(h.value_at(j))
            j = h.find_from(p, n, j + 1)
        return tuple(out)

    cdef int pseudo_view(self, int which, const char** p, Py_ssize_t* n) except -1:
        # the method and path as views into the request's header map (no bytes per check)
        cdef int k
        cdef Head h1
        if which == PSEUDO_PATH:
            p[0] = self.h.path_ptr(&k)
            n[0] = k
            return 1
        if which == PSEUDO_METHOD and type(self.h) is Head:
            h1 = <Head>self.h
            p[0] = h1.base
            n[0] = h1.method_len
            return 1
        return RbacRequest.pseudo_view(self, which, p, n)

    cdef object read_pseudo(self, int which):
        # pseudo-headers as Envoy's header map holds them
        if which == PSEUDO_METHOD:
            return self.h.method()
        if which == PSEUDO_PATH:
            return self.h.path()
        if which == PSEUDO_AUTHORITY or which == PSEUDO_HOST:
            return self.h.authority()       # Envoy keeps Host as :authority
        if which == PSEUDO_SCHEME:
            return self.s.cfg.scheme if self.s.cfg.scheme is not None else b"http"
        if which == PSEUDO_PRINCIPAL or which == PSEUDO_SNI:
            return tls_pseudo(self.s.transport, which)
        return None

    cdef object read_state(self, str key):
        # the connection's (the chain's network filters: HcmConfig.conn_state), else the
        # stream's own (set_filter_state on_request_headers): as in Envoy, a stream cannot
        # set a key its connection holds
        cs = self.s.cfg.conn_state
        if cs:
            v = cs.get(self.s.transport, key)
            if v is not None:
                return v
        fs = self.s.filter_state
        if fs:
            v = (<dict>fs).get(key)
            if type(v) is str:
                return v
        return None

    cdef object read_metadata(self, str ns):
        fs = self.s.filter_state
        return (<dict>fs).get(("metadata", ns)) if fs else None


cdef class RbacFilter(HttpFilter):
    def __init__(self, RbacPolicies policies, Store store, str stat_prefix,
                 str rules_stat_prefix="", str shadow_rules_stat_prefix="",
                 str name="envoy.filters.http.rbac"):
        """Stats `http.<stat_prefix>.rbac.<rules_stat_prefix>allowed|denied` and
        `http.<stat_prefix>.rbac.<shadow_rules_stat_prefix>shadow_allowed|denied`."""
        HttpFilter.__init__(self, name)
        base = f"http.{stat_prefix}.rbac."
        self.policies = policies
        self.st = RbacStats(store, base + rules_stat_prefix, base + shadow_rules_stat_prefix)
        self.req = HttpRbacRequest.__new__(HttpRbacRequest)
        self.shadow_prefix = shadow_rules_stat_prefix

    cpdef int decode_headers(self, HttpStream s, bint end_stream) except -1:
        cdef RbacPolicies p = self.policies
        cdef HttpRbacRequest r = self.req
        cdef int policy = -1
        cdef int ok
        cdef dict per_route
        if s.route is not None:
            per_route = s.route.filter_config
            if per_route:
                o = per_route.get(self.name)
                if o is not None:
                    p = <RbacPolicies>o
        if p.engine is None and p.shadow is None:
            return FILTER_CONTINUE
        r.s = s
        r.h = <HeaderMap>s.head
        try:
            ok = self.st.check(p, r, &policy)
        finally:
            r.s = None
            r.h = None
        if self.st.shadow_result >= 0:
            # Envoy's dynamic metadata `envoy.filters.http.rbac`: <shadow_rules_stat_prefix>
            # shadow_engine_result, and shadow_effective_policy_id when a policy matched
            # (read by tracing's metadata custom tags, as istiod's dry-run tags do)
            meta = {self.shadow_prefix + "shadow_engine_result":
                    "allowed" if self.st.shadow_result else "denied"}
            if self.st.shadow_policy >= 0:
                meta[self.shadow_prefix + "shadow_effective_policy_id"] = \
                    p.shadow.names[self.st.shadow_policy]
            if s.filter_state is None:
                s.filter_state = {}
            old = s.filter_state.get(_META_KEY)
            if old is None:
                s.filter_state[_META_KEY] = meta
            else:                           # a second RBAC filter: fields merge, as Envoy's
                old.update(meta)
        if ok:
            return FILTER_CONTINUE
        # Envoy's details: rbac_access_denied_matched_policy[<policy>|none]
        s.send_local_reply(403, _DENIED)
        return FILTER_STOP
