# Compiled route tables (Envoy RouteConfiguration semantics); see router.pxd.

import os
import re

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from libc.string cimport memcmp, memchr
from sofamesh._core.headers cimport HeaderMap

cdef extern from "string.h" nogil:
    int strncasecmp(const char* a, const char* b, size_t n)
    void* memmem(const void* h, size_t hl, const void* n, size_t nl)

cdef unsigned long long _rng = int.from_bytes(os.urandom(8), "little") | 1


cdef unsigned long long rng_next() noexcept:
    global _rng
    _rng ^= _rng >> 12
    _rng ^= _rng << 25
    _rng ^= _rng >> 27
    return _rng * 0x2545F4914F6CDD1DULL


def random_u64():
    return rng_next()


cdef class StringMatcher:
    def __init__(self, int kind, value=b"", bint ignore_case=False, long long lo=0,
                 long long hi=0):
        self.kind = kind
        self.ignore_case = ignore_case
        if isinstance(value, str):
            value = value.encode()
        self.value = value.lower() if ignore_case else value
        self.regex = re.compile(self.value) if kind == SM_REGEX else None
        self.lo = lo
        self.hi = hi

    cdef bint matches(self, bytes v):
        cdef Py_ssize_t n, m
        if self.kind == SM_PRESENT:
            return True
        if self.kind == SM_REGEX:
            return self.regex.fullmatch(v) is not None
        if self.kind == SM_RANGE:
            try:
                x = int(v)
            except ValueError:
                return False
            return self.lo <= x < self.hi
        if self.ignore_case:
            v = v.lower()
        n = PyBytes_GET_SIZE(v)
        m = PyBytes_GET_SIZE(self.value)
        if self.kind == SM_EXACT:
            # a C compare, not bytes.__eq__ (RBAC tries many exact matchers per request)
            return n == m and memcmp(PyBytes_AS_STRING(v), PyBytes_AS_STRING(self.value), m) == 0
        if self.kind == SM_PREFIX:
            return n >= m and memcmp(PyBytes_AS_STRING(v), PyBytes_AS_STRING(self.value), m) == 0
        if self.kind == SM_SUFFIX:
            return n >= m and memcmp(PyBytes_AS_STRING(v) + n - m,
                                     PyBytes_AS_STRING(self.value), m) == 0
        if self.kind == SM_CONTAINS:
            return self.value in v
        return False

    def test(self, value):
        return self.matches(value)


cdef class HeaderMatcher:
    def __init__(self, name, StringMatcher sm=None, bint present=True, bint invert=False):
        if isinstance(name, str):
            name = name.encode()
        self.name = name.lower()
        self.sm = sm
        self.present = present
        self.invert = invert

    cdef bint matches(self, HeaderMap h):
        # Several headers of one name match as their values joined by "," (Envoy).
        cdef bytes v = h.get_all(self.name)
        cdef bint r
        if self.sm is None:
            r = (v is not None) == self.present
        elif v is None:
            return False        # a value matcher never matches an absent header
        else:
            r = self.sm.matches(v)
        return (not r) if self.invert else r

    def test(self, HeaderMap h):
        return self.matches(h)


cdef class QueryMatcher:
    def __init__(self, name, StringMatcher sm=None):
        if isinstance(name, str):
            name = name.encode()
        self.name = name
        self.sm = sm

    cdef bint matches(self, dict query):
        v = query.get(self.name)
        if v is None:
            return False
        if self.sm is None:
            return True
        return self.sm.matches(v)


cdef dict _parse_query(bytes path):
    cdef dict out = {}
    cdef Py_ssize_t q = path.find(b"?")
    if q < 0:
        return out
    qs = path[q + 1:]
    h = qs.find(b"#")
    if h >= 0:
        qs = qs[:h]
    for part in qs.split(b"&"):
        if not part:
            continue
        k, _, v = part.partition(b"=")
        if k not in out:
            out[k] = v
    return out


# PERF(benchmarks/xds_scale.py): a route config of 10,000 hosts holds 10,000 routes, each
# with four sets that are nearly always empty (216 bytes each) and the same timeout header:
# one empty set and one header tuple per timeout are shared (all are immutable).
cdef object _NO_NAMES = frozenset()
cdef dict _TIMEOUT_HDRS = {}


cdef object _fs(items):
    s = frozenset(items)
    return s if s else _NO_NAMES


cdef tuple _timeout_hdr(long long ms):
    hdr = _TIMEOUT_HDRS.get(ms)
    if hdr is None:
        hdr = (b"x-envoy-expected-rq-timeout-ms", b"%d" % ms)
        if len(_TIMEOUT_HDRS) < 4096:
            _TIMEOUT_HDRS[ms] = hdr
    return hdr


cdef class Route:
    def __init__(self, *, name="", int path_kind=PM_PREFIX, path=b"/",
                 bint case_sensitive=True, headers=(), queries=(), int action=RA_CLUSTER,
                 cluster=None, weighted=(), prefix_rewrite=None, host_rewrite=None,
                 bint auto_host=False, host_rewrite_header=None, regex_rewrite=None,
                 regex_substitution=b"",
                 double timeout=15.0, int retry_on=0, int num_retries=0, retry_statuses=(),
                 double per_try_timeout=0.0, double retry_base=0.025, double retry_max=0.0,
                 int status=0, body=b"", location_scheme=None, location_host=None,
                 location_port=None, location_path=None, location_prefix=None,
                 bint strip_query=False, req_add=(), req_remove=(), req_add_if_absent=(),
                 resp_add=(), resp_remove=(), filter_config=None, upgrades=(), req_dyn=(),
                 resp_dyn=(), mirrors=(), hash_headers=(),
                 vhost_name="", double grpc_timeout_max=-1.0, double grpc_timeout_offset=0.0,
                 decorator=None, plugin=None, double max_grpc_timeout=-1.0,
                 double grpc_offset=0.0, bint attempt_count=False,
                 bint attempt_count_resp=False, int prev_hosts=-1,
                 int cluster_not_found=503, bint connect_term=False):
        self.name = name
        self.connect_term = connect_term
        self.prev_hosts = prev_hosts
        self.cluster_not_found = cluster_not_found
        self.max_grpc_timeout = max_grpc_timeout
        self.grpc_offset = grpc_offset
        self.attempt_count = attempt_count
        self.attempt_count_resp = attempt_count_resp
        self.plugin = plugin
        self.decorator = decorator or None
        self.grpc_timeout_max = grpc_timeout_max
        self.grpc_timeout_offset = grpc_timeout_offset
        self.mirrors = tuple(mirrors)
        self.hash_headers = tuple((_b(n).lower(), bool(t)) for n, t in hash_headers)
        self.pm = path_kind
        if isinstance(path, str):
            path = path.encode()
        self.case_sensitive = case_sensitive
        self.pvalue = path if case_sensitive else path.lower()
        self.regex = re.compile(path) if path_kind == PM_REGEX else None
        self.headers = tuple(headers)
        self.queries = tuple(queries)
        self.action = action
        self.cluster = cluster
        names, cum, total = [], [], 0
        for cname, w in weighted:
            total += int(w)
            names.append(cname)
            cum.append(total)
        self.wc_names = tuple(names)
        self.wc_cum = tuple(cum)
        self.wc_total = total
        if action == RA_WEIGHTED and total == 0:
            raise ValueError("weighted_clusters: total weight is 0")
        if action == RA_PLUGIN and plugin is None:
            raise ValueError("a cluster specifier plugin route needs its plugin")
        self.prefix_rewrite = _b(prefix_rewrite)
        self.host_rewrite = _b(host_rewrite)
        self.auto_host = auto_host
        self.host_rewrite_hdr = _b(host_rewrite_header).lower() if host_rewrite_header else None
        self.rx_rewrite = re.compile(_b(regex_rewrite)) if regex_rewrite is not None else None
        self.rx_subst = _b(regex_substitution) or b""
        self.timeout = timeout
        # Envoy announces the shorter of the route and per-try timeouts
        expected = timeout
        if per_try_timeout > 0 and (expected <= 0 or per_try_timeout < expected):
            expected = per_try_timeout
        self.timeout_hdr = _timeout_hdr(int(expected * 1000)) if expected > 0 else ()
        self.retry_on = retry_on
        self.num_retries = num_retries
        self.per_try_timeout = per_try_timeout
        self.retry_base = retry_base
        self.retry_max = retry_max if retry_max > 0 else retry_base * 10
        self.retry_statuses = _fs(retry_statuses)
        self.status = status
        self.body = _b(body) or b""
        self.location_scheme = _b(location_scheme)
        self.location_host = _b(location_host)
        self.location_port = _b(location_port)
        self.location_path = _b(location_path)
        self.location_prefix = _b(location_prefix)
        self.strip_query = strip_query
        self.req_add = _flat(req_add)
        self.req_remove = _fs(_b(k).lower() for k in req_remove)
        self.req_add_if_absent = tuple((_b(k).lower(), _b(v)) for k, v in req_add_if_absent)
        self.resp_add = _flat(resp_add)
        self.resp_remove = _fs(_b(k).lower() for k in resp_remove)
        self.req_dyn = tuple(req_dyn)
        self.resp_dyn = tuple(resp_dyn)
        self.filter_config = dict(filter_config or {})
        self.upgrades = _fs(_b(u).lower() for u in upgrades)
        self.vhost_name = vhost_name

    cdef bint path_matches(self, const char* p, int n, int qpos):
        cdef int m = <int>PyBytes_GET_SIZE(self.pvalue)
        cdef const char* v = PyBytes_AS_STRING(self.pvalue)
        if self.pm == PM_PREFIX:
            if n < m:
                return False
            if self.case_sensitive:
                return memcmp(p, v, m) == 0
            return strncasecmp(p, v, m) == 0
        if self.pm == PM_PATH:
            if qpos != m:
                return False
            if self.case_sensitive:
                return memcmp(p, v, m) == 0
            return strncasecmp(p, v, m) == 0
        if self.pm == PM_SEP_PREFIX:
            if qpos < m or memcmp(p, v, m) != 0:
                return False
            return qpos == m or p[m] == 47
        if self.pm == PM_REGEX:
            return self.regex.fullmatch(PyBytes_FromStringAndSize(p, qpos)) is not None
        return False

    cdef bint matches(self, HeaderMap h):
        cdef int n
        cdef const char* p = h.path_ptr(&n)
        cdef const char* q = <const char*>memchr(p, 63, n)
        cdef int qpos = n if q == NULL else <int>(q - p)
        cdef HeaderMatcher hm
        cdef QueryMatcher qm
        if self.pm == PM_CONNECT:
            if h.method() != b"CONNECT":
                return False
        elif not self.path_matches(p, n, qpos):
            return False
        for hm in self.headers:
            if not hm.matches(h):
                return False
        if self.queries:
            query = _parse_query(h.path())
            for qm in self.queries:
                if not qm.matches(query):
                    return False
        return True

    cpdef str pick_cluster(self):
        cdef unsigned long long r
        cdef Py_ssize_t i
        if self.action != RA_WEIGHTED:
            return self.cluster
        r = rng_next() % self.wc_total
        for i in range(len(self.wc_cum)):
            if r < <unsigned long long>self.wc_cum[i]:
                return self.wc_names[i]
        return self.wc_names[len(self.wc_names) - 1]

    def __repr__(self):
        return f"Route({self.name!r}, {self.pvalue!r} -> {self.cluster!r})"


cdef bytes _b(v):
    if v is None:
        return None
    if isinstance(v, str):
        return v.encode("latin-1")
    return bytes(v)


cdef tuple _flat(pairs):
    """((name, value), ...) -> (lower-case name, value, name, value, ...)."""
    cdef list out = []
    for k, v in pairs:
        out.append(_b(k).lower())
        out.append(_b(v))
    return tuple(out)


cdef class VirtualHost:
    def __init__(self, name, routes):
        self.name = name
        self.routes = tuple(routes)

    cdef Route match(self, HeaderMap h):
        cdef Route r
        for r in self.routes:
            if r.matches(h):
                return r
        return None

    def __repr__(self):
        return f"VirtualHost({self.name!r})"


cdef class RouteTable:
    """Virtual hosts by domain, Envoy's precedence: exact, then the longest `*.suffix`,
    then the longest `prefix.*`, then `*`."""

    def __init__(self, vhosts, bint strip_port=False):
        """vhosts: iterable of (domains: list[str], VirtualHost)."""
        self.exact = {}
        suffixes, prefixes = [], []
        self.default = None
        self.strip_port = strip_port
        seen = set()
        for domains, vh in vhosts:
            for d in domains:
                d = d.lower()
                if d in seen:
                    raise ValueError(f"domain {d!r} appears in more than one virtual host")
                seen.add(d)
                if d == "*":
                    self.default = vh
                elif d.startswith("*"):
                    suffixes.append((d[1:].encode(), vh))
                elif d.endswith("*"):
                    prefixes.append((d[:len(d) - 1].encode(), vh))
                else:
                    self.exact[d.encode()] = vh
        suffixes.sort(key=lambda t: -len(t[0]))
        prefixes.sort(key=lambda t: -len(t[0]))
        self.suffixes = tuple(suffixes)
        self.prefixes = tuple(prefixes)
        self.only_default = not self.exact and not suffixes and not prefixes

    cdef VirtualHost select(self, bytes host):
        cdef bytes s
        cdef VirtualHost vh
        cdef Py_ssize_t n = len(host)
        if host:
            host = host.lower()
            if self.strip_port and not host.endswith(b"]"):
                i = host.rfind(b":")
                if i > 0:
                    host = host[:i]
                    n = i
            vh = self.exact.get(host)
            if vh is not None:
                return vh
            for s, vh in self.suffixes:
                # "*.foo.com" needs at least one character before ".foo.com"
                if n > len(s) and host.endswith(s):
                    return vh
            for s, vh in self.prefixes:
                if n > len(s) and host.startswith(s):
                    return vh
        return self.default

    cdef Route route(self, HeaderMap h):
        cdef VirtualHost vh
        if self.only_default:
            vh = self.default
        else:
            vh = self.select(h.authority())
        if vh is None:
            return None
        return vh.match(h)

    # Python API (tests, admin)
    def select_host(self, host):
        if isinstance(host, str):
            host = host.encode()
        return self.select(host)

    def match(self, HeaderMap h):
        return self.route(h)


# Python-visible constants for the compiler in sofamesh.proxy.routes
PATH_PREFIX = PM_PREFIX
PATH_EXACT = PM_PATH
PATH_REGEX = PM_REGEX
PATH_SEPARATED_PREFIX = PM_SEP_PREFIX
PATH_CONNECT = PM_CONNECT
S_EXACT = SM_EXACT
S_PREFIX = SM_PREFIX
S_SUFFIX = SM_SUFFIX
S_CONTAINS = SM_CONTAINS
S_REGEX = SM_REGEX
S_PRESENT = SM_PRESENT
S_RANGE = SM_RANGE
ACTION_CLUSTER = RA_CLUSTER
ACTION_WEIGHTED = RA_WEIGHTED
ACTION_DIRECT = RA_DIRECT
ACTION_REDIRECT = RA_REDIRECT
ACTION_PLUGIN = RA_PLUGIN
RETRY_ON = {
    "5xx": RETRY_5XX,
    "gateway-error": RETRY_GATEWAY,
    "connect-failure": RETRY_CONNECT_FAILURE,
    "reset": RETRY_RESET,
    "retriable-4xx": RETRY_RETRIABLE_4XX,
    "refused-stream": RETRY_REFUSED_STREAM,
    "retriable-status-codes": RETRY_STATUS_CODES,
    "cancelled": RETRY_GRPC_CANCELLED,
    "deadline-exceeded": RETRY_GRPC_DEADLINE_EXCEEDED,
    "internal": RETRY_GRPC_INTERNAL,
    "resource-exhausted": RETRY_GRPC_RESOURCE_EXHAUSTED,
    "unavailable": RETRY_GRPC_UNAVAILABLE,
}
