# Compiled RBAC policies and the network RBAC gate; see rbac.pxd for the contract.
#
#   policy  = any(permissions) and any(principals)
#   ALLOW:  allowed iff some policy matches     DENY: allowed iff none matches
#   LOG:    always allowed (the match is only recorded)
#
# Policies are tried in name order (Envoy keeps them in a std::map), so the "matched
# policy" reported is the first by name.

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM, PyList_SET_ITEM
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp, memcpy, memchr, memset

from sofamesh._core.router cimport StringMatcher, HeaderMatcher, SM_EXACT, SM_PREFIX
from sofamesh._core.stats cimport Store
from sofamesh.proxy.original_dst import local_address as _local_address

cdef extern from "arpa/inet.h" nogil:
    int inet_pton(int af, const char* src, void* dst)

cdef extern from "sys/socket.h" nogil:
    int AF_INET
    int AF_INET6


cdef int rbac_parse_ip(const char* s, Py_ssize_t n, rbac_ip* out) noexcept:
    cdef char buf[64]
    out.family = 0
    if n <= 0 or n >= 64:
        return 0
    memcpy(buf, s, n)
    buf[n] = 0
    if memchr(buf, 58, n) != NULL:      # ':'
        if inet_pton(AF_INET6, buf, out.b) == 1:
            out.family = 6
    elif inet_pton(AF_INET, buf, out.b) == 1:
        out.family = 4
    return 0


cdef inline bint _in_range(rbac_ip* a, rbac_ip* net, int plen) noexcept:
    cdef int i, full, rest
    cdef unsigned char mask
    if a.family == 0 or a.family != net.family:
        return False
    full = plen >> 3
    for i in range(full):
        if a.b[i] != net.b[i]:
            return False
    rest = plen & 7
    if rest:
        mask = <unsigned char>(0xff << (8 - rest))
        if (a.b[full] & mask) != (net.b[full] & mask):
            return False
    return True


cdef inline void _list_set(list l, Py_ssize_t i, object v) noexcept:
    """l[i] = v for an index known to be in range (the caches below are fixed-size)."""
    cdef PyObject* old = PyList_GET_ITEM(l, i)
    Py_INCREF(v)
    PyList_SET_ITEM(l, i, v)
    Py_XDECREF(old)


cdef class RbacRequest:
    def __cinit__(self):
        self.pv = [None] * PSEUDO_COUNT
        self.hv = [None] * HEADER_SLOTS

    cdef void begin(self) noexcept:
        self.have = 0
        self.pseudo_have = 0
        self.hv_have = 0
        self.path_nq = None

    cdef object cached_header(self, int slot, bytes name):
        # PERF(benchmarks/instr_per_request.py --mixer rbac): 20 policies naming two headers
        # scanned the header map 19 times per request
        cdef unsigned long long bit
        if slot < 0:
            return self.header(name)
        bit = (<unsigned long long>1) << slot
        if self.hv_have & bit:
            return self.hv[slot]
        v = self.header(name)
        _list_set(self.hv, slot, v)
        self.hv_have |= bit
        return v

    cdef object pseudo(self, int which):
        # PERF(benchmarks/http1_e2e.py --rbac 20): rules naming :method/:path read each once
        # per check (10 policies reading :method cost ~1 us/request before)
        if self.pseudo_have & (1 << which):
            return self.pv[which]
        v = self.read_pseudo(which)
        _list_set(self.pv, which, v)
        self.pseudo_have |= 1 << which
        return v

    cdef int pseudo_view(self, int which, const char** p, Py_ssize_t* n) except -1:
        v = self.pseudo(which)      # kept in pv until the next check: the view stays valid
        if v is None:
            return 0
        p[0] = PyBytes_AS_STRING(v)
        n[0] = PyBytes_GET_SIZE(v)
        return 1

    cdef int ensure(self, int which) except -1:
        if not (self.have & (1 << which)):
            self.addr[which].family = 0
            self.port[which] = -1
            self.resolve(which)
            self.have |= 1 << which
        return 0

    cdef int resolve(self, int which) except -1:
        return 0

    cdef object header(self, bytes name):
        return None

    cdef object read_pseudo(self, int which):
        return None

    cdef object read_state(self, str key):
        return None

    cdef object read_metadata(self, str ns):
        return None


_PSEUDO_NAMES = {b":method": PSEUDO_METHOD, b":path": PSEUDO_PATH,
                 b":authority": PSEUDO_AUTHORITY, b"host": PSEUDO_HOST,
                 b":scheme": PSEUDO_SCHEME, b":service": PSEUDO_SERVICE,
                 b":version": PSEUDO_VERSION, b":group": PSEUDO_GROUP}


cdef dict _HEADER_SLOTS = {}


cdef int header_slot(bytes name):
    """The cache slot of an ordinary header name (-1 once HEADER_SLOTS names have one)."""
    slot = _HEADER_SLOTS.get(name)
    if slot is None:
        if len(_HEADER_SLOTS) >= HEADER_SLOTS:
            return -1
        slot = len(_HEADER_SLOTS)
        _HEADER_SLOTS[name] = slot
    return slot


def pseudo_code(bytes name):
    """The PSEUDO_* a header rule's (lower-case) name reads."""
    code = _PSEUDO_NAMES.get(name)
    if code is not None:
        return code
    return PSEUDO_OTHER if name[:1] == b":" else PSEUDO_NONE


cdef inline Py_ssize_t _path_end(const char* c, Py_ssize_t n) noexcept:
    """The length of the path's part before its query or fragment (url_path)."""
    cdef Py_ssize_t i
    for i in range(n):
        if c[i] == 63 or c[i] == 35:      # '?' '#'
            return i
    return n


cdef bytes _url_path(RbacRequest r):
    """The path without query and fragment (what Envoy's url_path matches), or None."""
    cdef bytes p
    cdef const char* c
    cdef Py_ssize_t i, n
    if r.path_nq is None:
        p = r.pseudo(PSEUDO_PATH)
        if p is None:
            return None
        c = PyBytes_AS_STRING(p)
        n = PyBytes_GET_SIZE(p)
        for i in range(n):
            if c[i] == 63 or c[i] == 35:      # '?' '#'
                p = p[:i]
                break
        r.path_nq = p
    return r.path_nq


# -- rules (permissions and principals) -------------------------------------------------

cdef class RbacRule:
    cdef int matches(self, RbacRequest r) except -1:
        return 0


cdef class AnyRule(RbacRule):
    cdef int matches(self, RbacRequest r) except -1:
        return 1


cdef class NotRule(RbacRule):
    cdef RbacRule inner

    def __init__(self, RbacRule inner):
        self.inner = inner

    cdef int matches(self, RbacRequest r) except -1:
        return 0 if self.inner.matches(r) else 1


cdef class AndRule(RbacRule):
    cdef tuple rules        # tuple[RbacRule, ...]

    def __init__(self, rules):
        self.rules = tuple(rules)

    cdef int matches(self, RbacRequest r) except -1:
        cdef tuple rules = self.rules
        cdef Py_ssize_t i
        for i in range(PyTuple_GET_SIZE(rules)):
            if not (<RbacRule>PyTuple_GET_ITEM(rules, i)).matches(r):
                return 0
        return 1


cdef class OrRule(RbacRule):
    cdef tuple rules        # tuple[RbacRule, ...]

    def __init__(self, rules):
        self.rules = tuple(rules)

    cdef int matches(self, RbacRequest r) except -1:
        cdef tuple rules = self.rules
        cdef Py_ssize_t i
        for i in range(PyTuple_GET_SIZE(rules)):
            if (<RbacRule>PyTuple_GET_ITEM(rules, i)).matches(r):
                return 1
        return 0


cdef object joined_header(object v):
    if type(v) is tuple:
        return b",".join(<tuple>v)
    return v


cdef class HeaderRule(RbacRule):
    """A route-table HeaderMatcher on the request's headers; names starting with ':' (and
    `host`, which Envoy keeps as :authority) are read as pseudo-headers by the caller.

    A header sent more than once: a permission's or principal's header rule holds when one
    of its values matches (and an inverted one when none does), as Envoy 1.40's; the matcher
    form's HttpRequestHeaderMatchInput (each_value False) sees the values joined by ","."""
    cdef HeaderMatcher hm
    cdef int code           # PSEUDO_*
    cdef int slot           # header_slot(name) for an ordinary header
    cdef bint each_value

    def __init__(self, HeaderMatcher hm, bint each_value=True):
        self.hm = hm
        self.code = pseudo_code(hm.name)
        self.slot = header_slot(hm.name) if self.code == PSEUDO_NONE else -1
        self.each_value = each_value

    cdef int matches(self, RbacRequest r) except -1:
        cdef HeaderMatcher hm = self.hm
        cdef object v = r.pseudo(self.code) if self.code else r.cached_header(self.slot, hm.name)
        cdef bint ok
        # the same outcome as HeaderMatcher.matches on a HeaderMap, for a value read by
        # the caller (HTTP map, pseudo-header or RPC attachment)
        if hm.sm is None:
            ok = (v is not None) == hm.present
        elif v is None:
            return 0
        elif type(v) is tuple:
            if self.each_value:
                ok = False
                for x in <tuple>v:
                    if hm.sm.matches(<bytes>x):
                        ok = True
                        break
            else:
                ok = hm.sm.matches(b",".join(<tuple>v))
        else:
            ok = hm.sm.matches(<bytes>v)
        return 1 if ok != hm.invert else 0

    @property
    def name(self):
        return self.hm.name


cdef class PathRule(RbacRule):
    """url_path: the path without its query string."""
    cdef StringMatcher sm

    def __init__(self, StringMatcher sm):
        self.sm = sm

    cdef int matches(self, RbacRequest r) except -1:
        cdef bytes p = _url_path(r)
        if p is None:
            return 0
        return 1 if self.sm.matches(p) else 0


cdef class IpRule(RbacRule):
    cdef int which          # ADDR_*
    cdef rbac_ip net
    cdef int plen

    def __init__(self, int which, str address, int prefix_len):
        cdef bytes a = address.encode()
        rbac_parse_ip(PyBytes_AS_STRING(a), PyBytes_GET_SIZE(a), &self.net)
        if self.net.family == 0:
            raise ValueError(f"malformed IP address: {address}")
        if prefix_len > (32 if self.net.family == 4 else 128) or prefix_len < 0:
            raise ValueError(f"invalid prefix length {prefix_len} for {address}")
        self.which = which
        self.plen = prefix_len

    cdef int matches(self, RbacRequest r) except -1:
        r.ensure(self.which)
        return 1 if _in_range(&r.addr[self.which], &self.net, self.plen) else 0


cdef class PortRule(RbacRule):
    """destination_port (one port) and destination_port_range ([lo, hi))."""
    cdef int lo, hi

    def __init__(self, int lo, int hi):
        self.lo = lo
        self.hi = hi

    cdef int matches(self, RbacRequest r) except -1:
        cdef int p
        r.ensure(ADDR_LOCAL)
        p = r.port[ADDR_LOCAL]
        return 1 if self.lo <= p < self.hi else 0


cdef class ServerNameRule(RbacRule):
    """requested_server_name: the TLS SNI (empty for plaintext or no SNI)."""
    cdef StringMatcher sm

    def __init__(self, StringMatcher sm):
        self.sm = sm

    cdef int matches(self, RbacRequest r) except -1:
        v = r.pseudo(PSEUDO_SNI)
        return 1 if self.sm.matches(v if v is not None else b"") else 0


cdef class AuthenticatedRule(RbacRule):
    """Principal authenticated: a verified peer certificate; with principal_name, its URI
    SAN, else DNS SAN, else subject must match (Envoy's order)."""
    cdef StringMatcher sm              # None: any authenticated peer

    def __init__(self, StringMatcher sm=None):
        self.sm = sm

    cdef int matches(self, RbacRequest r) except -1:
        v = r.pseudo(PSEUDO_PRINCIPAL)
        if v is None:
            return 0                        # not TLS
        if self.sm is None:
            return 1                        # any TLS connection (Envoy's, certificate or not)
        for name in <tuple>v:
            if self.sm.matches(name):
                return 1
        return 0


cdef class FilterStateRule(RbacRule):
    """filter_state: the object under `key` (its string form) against a string matcher;
    absent, it matches nothing (Envoy's FilterStateMatcher)."""
    cdef str key
    cdef StringMatcher sm

    def __init__(self, str key, StringMatcher sm):
        self.key = key
        self.sm = sm

    cdef int matches(self, RbacRequest r) except -1:
        v = r.read_state(self.key)
        if v is None:
            return 0
        return 1 if self.sm.matches((<str>v).encode()) else 0


cdef class MetadataRule(RbacRule):
    """metadata: a MetadataMatcher on the request's dynamic metadata
    (proxy/metadata_match.py)."""
    cdef object mm                     # metadata_match.MetadataMatch

    def __init__(self, mm):
        self.mm = mm

    cdef int matches(self, RbacRequest r) except -1:
        return 1 if self.mm.matches(r.read_metadata(self.mm.filter)) else 0


cdef object tls_pseudo(object transport, int which):
    # per check, only for rules that name TLS facts: Python-level reads are fine here
    if transport is None:
        return b"" if which == PSEUDO_SNI else None
    so = transport.get_extra_info("ssl_object")
    if so is None:
        return b"" if which == PSEUDO_SNI else None
    if which == PSEUDO_SNI:
        name = getattr(so, "_sofamesh_sni", None)  # recorded by proxy/tls.py's sni_callback
        return name.encode() if name else b""
    # the names a principal_name is matched against, in Envoy's order: every URI SAN, every
    # DNS SAN, then the subject (b"" without a verified certificate)
    cert = so.getpeercert() or {}
    sans = cert.get("subjectAltName", ())
    out = [str(v).encode() for kind in ("URI", "DNS") for t, v in sans if t == kind]
    # the subject as RFC 2253 writes it (last RDN first), as Envoy prints it
    _short = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
              "countryName": "C", "localityName": "L", "stateOrProvinceName": "ST"}
    parts = [f"{_short.get(k, k)}={v}"
             for rdn in reversed(cert.get("subject", ())) for k, v in rdn]
    out.append(",".join(parts).encode())
    return tuple(out)


# -- the policy index --------------------------------------------------------------------
#
# PERF(benchmarks/instr_per_request.py --mixer rbac): trying each of 20 policies rule by rule
# cost ~340 instructions a policy (6.8k a request) however little of it could match; the
# index reads each input once and rules out the policies whose necessary atoms are false.

cdef object _atom(RbacRule rule):
    """The key of an atom the index can test that is true whenever `rule` matches, or None."""
    cdef HeaderRule h
    cdef PathRule pr
    cdef IpRule ip
    cdef StringMatcher sm
    if type(rule) is HeaderRule:
        h = <HeaderRule>rule
        sm = h.hm.sm
        if h.hm.invert or h.code == PSEUDO_OTHER:
            return None
        inp = ("h", h.hm.name, h.slot) if h.code == PSEUDO_NONE else ("p", h.code)
    elif type(rule) is PathRule:
        pr = <PathRule>rule
        sm = pr.sm
        inp = ("u",)
    elif type(rule) is IpRule:
        ip = <IpRule>rule
        return ("ip", ip.which, ip.net.family, bytes(ip.net.b[:16]), ip.plen)
    else:
        return None
    if sm is None or sm.ignore_case or (sm.kind != SM_EXACT and sm.kind != SM_PREFIX):
        return None
    return (inp, sm.kind, sm.value)


cdef list _clauses(RbacRule rule):
    """Clauses (lists of atom keys) each of which has a true atom whenever `rule` matches;
    [] when no such clause is known (the rule may match whatever the atoms say)."""
    cdef list out, union, cl
    a = _atom(rule)
    if a is not None:
        return [[a]]
    if type(rule) is AndRule:
        out = []
        for c in (<AndRule>rule).rules:
            out += _clauses(c)
        return out
    if type(rule) is OrRule:
        union = []
        for c in (<OrRule>rule).rules:
            cl = _clauses(c)
            if not cl:
                return []
            union += min(cl, key=len)
        return [union]
    return []          # any, not_rule, ports, TLS, ...: no necessary atom


cdef bint _exact(RbacRule rule):
    """Whether `rule` matches exactly when all its _clauses hold (not only if)."""
    if type(rule) is AnyRule or _atom(rule) is not None:
        return True
    if type(rule) is AndRule:
        return all(_exact(c) for c in (<AndRule>rule).rules)
    if type(rule) is OrRule:
        return all(_exact(c) and len(_clauses(c)) == 1 for c in (<OrRule>rule).rules)
    return False


cdef enum:
    # an input's exact values up to this many are compared in C (a dict lookup hashes the
    # value first: ~250 instructions for a method); more go in a dict
    EXACT_SCAN_MAX = 16


cdef rbac_prefix* _strings(list pairs) except NULL:
    """[(bytes, mask number)] as an array pointing into the bytes (kept by the caller)."""
    cdef rbac_prefix* out = <rbac_prefix*>calloc(max(1, len(pairs)), sizeof(rbac_prefix))
    if out == NULL:
        raise MemoryError()
    for i, (v, m) in enumerate(pairs):
        out[i].p = PyBytes_AS_STRING(v)
        out[i].n = PyBytes_GET_SIZE(v)
        out[i].mask = m
    return out


cdef class RbacInput:
    def __cinit__(self):
        self.prefixes = NULL
        self.exacts = NULL

    def __dealloc__(self):
        free(self.prefixes)
        free(self.exacts)


cdef class RbacIndex:
    def __cinit__(self):
        self.masks = self.need = self.sat = NULL
        self.exact = NULL
        self.ips = NULL

    def __dealloc__(self):
        free(self.masks)
        free(self.need)
        free(self.sat)
        free(self.exact)
        free(self.ips)

    def __init__(self, list policy_clauses, list exact_rules):
        """policy_clauses: per policy (in evaluation order), its clauses (_clauses); exact_rules:
        per policy, whether they are exactly its rules (_exact)."""
        cdef RbacInput inp
        cdef int i, c, m, nclauses = 0
        by_atom = {}            # atom key -> clause numbers
        needs = []
        for clauses in policy_clauses:
            mine = []
            for cl in dict.fromkeys(tuple(dict.fromkeys(x)) for x in clauses):
                for a in cl:
                    by_atom.setdefault(a, []).append(nclauses)
                mine.append(nclauses)
                nclauses += 1
            needs.append(mine)
        self.npol = len(policy_clauses)
        self.nw = max(1, (nclauses + 63) // 64)
        atoms = list(by_atom)
        self.masks = <unsigned long long*>calloc(max(1, len(atoms)) * self.nw, 8)
        self.need = <unsigned long long*>calloc(max(1, self.npol) * self.nw, 8)
        self.sat = <unsigned long long*>calloc(self.nw, 8)
        self.exact = <char*>calloc(max(1, self.npol), 1)
        if self.masks == NULL or self.need == NULL or self.sat == NULL or self.exact == NULL:
            raise MemoryError()
        for i in range(self.npol):
            self.exact[i] = 1 if exact_rules[i] else 0
        for m, a in enumerate(atoms):
            for c in by_atom[a]:
                self.masks[m * self.nw + c // 64] |= (<unsigned long long>1) << (c % 64)
        for i, mine in enumerate(needs):
            for c in mine:
                self.need[i * self.nw + c // 64] |= (<unsigned long long>1) << (c % 64)
        inputs = {}             # input key -> (exact {value: mask}, [(prefix, mask)])
        ips = []
        for m, a in enumerate(atoms):
            if a[0] == "ip":
                ips.append((a, m))
                continue
            exact, prefixes = inputs.setdefault(a[0], ({}, []))
            if a[1] == SM_EXACT:
                exact[a[2]] = m
            else:
                prefixes.append((a[2], m))
        out = []
        for key, (exact, prefixes) in inputs.items():
            inp = RbacInput.__new__(RbacInput)
            inp.code = -1 if key[0] == "u" else (PSEUDO_NONE if key[0] == "h" else key[1])
            inp.name = key[1] if key[0] == "h" else None
            inp.slot = key[2] if key[0] == "h" else -1
            inp.exact = exact if len(exact) > EXACT_SCAN_MAX else None
            inp.nexact = len(exact) if inp.exact is None else 0
            inp.exacts = _strings(list(exact.items()) if inp.nexact else [])
            inp.keep = [p for p, _ in prefixes] + list(exact)
            inp.nprefix = len(prefixes)
            inp.prefixes = _strings(prefixes)
            out.append(inp)
        self.inputs = tuple(out)
        self.nip = len(ips)
        self.ips = <rbac_ip_atom*>calloc(max(1, self.nip), sizeof(rbac_ip_atom))
        if self.ips == NULL:
            raise MemoryError()
        ips.sort(key=lambda am: am[0][1])     # by address kind: each resolved once (scan)
        for i, (a, m) in enumerate(ips):
            # the prefix as a byte mask; address and mask read as two words the same way
            # (memory order), so one AND and compare per word tests the range
            full, rest = divmod(a[4], 8)
            keep = bytes([0xff] * full + ([(0xff << (8 - rest)) & 0xff] if rest else []))
            keep = keep.ljust(16, b"\0")
            bits = bytes(x & y for x, y in zip(<bytes>a[3], keep))
            self.ips[i].which = a[1]
            self.ips[i].family = a[2]
            memcpy(self.ips[i].keep, <const char*>keep, 16)
            memcpy(self.ips[i].bits, <const char*>bits, 16)
            self.ips[i].mask = m

    cdef int sat_value(self, RbacInput inp, const char* p, Py_ssize_t n, object v) except -1:
        """Marks the atoms of `inp` that the value (p, n; `v` its bytes, or None for a
        view) satisfies."""
        cdef int nw = self.nw, k, j
        cdef unsigned long long* sat = self.sat
        cdef unsigned long long* mk
        cdef rbac_prefix* pf
        if inp.nexact:
            for j in range(inp.nexact):
                pf = &inp.exacts[j]
                if n == pf.n and memcmp(p, pf.p, n) == 0:
                    mk = self.masks + pf.mask * nw
                    for k in range(nw):
                        sat[k] |= mk[k]
                    break       # the values are distinct
        elif inp.exact is not None:
            m = inp.exact.get(v)
            if m is not None:
                mk = self.masks + <int>m * nw
                for k in range(nw):
                    sat[k] |= mk[k]
        if inp.nprefix:
            for j in range(inp.nprefix):
                pf = &inp.prefixes[j]
                if n >= pf.n and memcmp(p, pf.p, pf.n) == 0:
                    mk = self.masks + pf.mask * nw
                    for k in range(nw):
                        sat[k] |= mk[k]
        return 0

    cdef int scan(self, RbacRequest r) except -1:
        cdef int nw = self.nw, k, j, which, family = 0
        cdef unsigned long long a[2]
        cdef unsigned long long* sat = self.sat
        cdef unsigned long long* mk
        cdef tuple inputs = self.inputs
        cdef RbacInput inp
        cdef rbac_ip_atom* ip
        cdef Py_ssize_t i, n
        cdef const char* p
        cdef object v
        memset(sat, 0, nw * 8)
        for i in range(PyTuple_GET_SIZE(inputs)):
            inp = <RbacInput>PyTuple_GET_ITEM(inputs, i)
            if inp.exact is None and inp.code:
                # PERF(benchmarks/instr_per_request.py --mixer rbac): a pseudo-header or the
                # path compared in place (the caller may lend a view: no bytes made)
                if not r.pseudo_view(PSEUDO_PATH if inp.code < 0 else inp.code, &p, &n):
                    continue
                if inp.code < 0:
                    n = _path_end(p, n)
                v = None
            else:
                if inp.code < 0:
                    v = _url_path(r)
                elif inp.code:
                    v = r.pseudo(inp.code)
                else:
                    v = r.cached_header(inp.slot, inp.name)
                if v is None:
                    continue
                if type(v) is tuple:
                    # a header sent more than once: an atom holds when one value has it
                    for x in <tuple>v:
                        self.sat_value(inp, PyBytes_AS_STRING(x), PyBytes_GET_SIZE(x), x)
                    continue
                p = PyBytes_AS_STRING(v)
                n = PyBytes_GET_SIZE(v)
            self.sat_value(inp, p, n, v)
        which = -1
        for j in range(self.nip):
            ip = &self.ips[j]
            if ip.which != which:
                which = ip.which
                r.ensure(which)
                family = r.addr[which].family
                memcpy(a, r.addr[which].b, 16)
            if family == ip.family and (a[0] & ip.keep[0]) == ip.bits[0] and \
                    (a[1] & ip.keep[1]) == ip.bits[1]:
                mk = self.masks + ip.mask * nw
                for k in range(nw):
                    sat[k] |= mk[k]
        return 0


# -- engines -----------------------------------------------------------------------------

cdef class RbacEngine:
    def __init__(self, int action, policies, header_names=()):
        """policies: [(name, [permission RbacRule], [principal RbacRule])]."""
        ordered = sorted(policies, key=lambda p: p[0])
        self.action = action
        self.names = tuple(p[0] for p in ordered)
        self.perms = tuple(_any_of(p[1]) for p in ordered)
        self.principals = tuple(_any_of(p[2]) for p in ordered)
        self.header_names = frozenset(header_names)
        clauses = [_clauses(self.perms[i]) + _clauses(self.principals[i])
                   for i in range(len(ordered))]
        exact = [_exact(self.perms[i]) and _exact(self.principals[i])
                 for i in range(len(ordered))]
        self.index = RbacIndex(clauses, exact) if any(clauses) else None

    cdef int first_match(self, RbacRequest r) except -2:
        cdef Py_ssize_t i
        cdef tuple perms = self.perms, principals = self.principals
        cdef RbacIndex idx = self.index
        cdef unsigned long long sat
        cdef unsigned long long* need
        cdef Py_ssize_t n
        if idx is not None:
            # only the policies whose necessary atoms hold, in the same order: the same
            # first match as trying them all
            idx.scan(r)
            need = idx.need
            sat = idx.sat[0]
            n = idx.npol
            i = 0
            while True:
                if idx.nw == 1:         # (the usual case: up to 64 clauses) a tight loop
                    while i < n and (need[i] & ~sat):
                        i += 1
                else:
                    while i < n and not idx.candidate(<int>i):
                        i += 1
                if i >= n:
                    return -1
                if idx.exact[i] or (
                        (<RbacRule>PyTuple_GET_ITEM(perms, i)).matches(r) and
                        (<RbacRule>PyTuple_GET_ITEM(principals, i)).matches(r)):
                    return <int>i
                i += 1
        for i in range(PyTuple_GET_SIZE(perms)):
            if (<RbacRule>PyTuple_GET_ITEM(perms, i)).matches(r) and \
                    (<RbacRule>PyTuple_GET_ITEM(principals, i)).matches(r):
                return <int>i
        return -1

    cdef int allows(self, RbacRequest r, int* policy) except -1:
        cdef int m = self.first_match(r)
        policy[0] = m
        if self.action == RBAC_ALLOW:
            return 1 if m >= 0 else 0
        if self.action == RBAC_DENY:
            return 0 if m >= 0 else 1
        return 1    # LOG

    def check(self, RbacRequest r):
        """(allowed, matched policy name or None): for tests and tools."""
        cdef int pol = -1
        r.begin()
        ok = self.allows(r, &pol)
        return bool(ok), (self.names[pol] if pol >= 0 else None)


cdef RbacRule _any_of(rules):
    rules = tuple(rules)
    if len(rules) == 1:
        return rules[0]
    return OrRule(rules)


cdef class RbacPolicies:
    def __init__(self, RbacEngine engine=None, RbacEngine shadow=None):
        self.engine = engine
        self.shadow = shadow

    @property
    def header_names(self):
        out = set()
        if self.engine is not None:
            out |= self.engine.header_names
        if self.shadow is not None:
            out |= self.shadow.header_names
        return frozenset(out)


def _join(str prefix, str name):
    return prefix + name if not prefix or prefix.endswith(".") else prefix + "." + name


cdef class RbacStats:
    def __init__(self, Store store, str prefix, str shadow_prefix):
        """Counters `<prefix>.allowed|denied` and `<shadow_prefix>.shadow_allowed|denied`,
        joined as Envoy's statPrefixJoin does (no second dot after a prefix ending in one:
        rules_stat_prefix "r." and "r" both give `...rbac.r.allowed`)."""
        self.allowed = store.counter(_join(prefix, "allowed"))
        self.denied = store.counter(_join(prefix, "denied"))
        self.shadow_allowed = store.counter(_join(shadow_prefix, "shadow_allowed"))
        self.shadow_denied = store.counter(_join(shadow_prefix, "shadow_denied"))

    cdef int check(self, RbacPolicies p, RbacRequest r, int* policy) except -1:
        cdef int shadow = -1
        policy[0] = -1
        self.shadow_result = -1
        r.begin()
        if p.shadow is not None:
            if p.shadow.allows(r, &shadow):
                self.shadow_allowed.inc()
                self.shadow_result = 1
            else:
                self.shadow_denied.inc()
                self.shadow_result = 0
            self.shadow_policy = shadow
        if p.engine is None:
            return 1
        if p.engine.allows(r, policy):
            self.allowed.inc()
            return 1
        self.denied.inc()
        return 0


# -- the network filter ------------------------------------------------------------------

cdef class _ConnRequest(RbacRequest):
    """A connection: addresses, TLS facts and the chain's filter state (no headers, no
    path, no dynamic metadata)."""
    cdef object transport
    cdef object conn_state              # filter_state.ConnState | None

    cdef object read_state(self, str key):
        return self.conn_state.get(self.transport, key) if self.conn_state else None

    cdef object read_pseudo(self, int which):
        if which == PSEUDO_PRINCIPAL or which == PSEUDO_SNI:
            return tls_pseudo(self.transport, which)
        return None

    cdef int resolve(self, int which) except -1:
        cdef bytes ip
        info = (_local_address(self.transport) if which == ADDR_LOCAL
                else self.transport.get_extra_info("peername"))
        if not info:
            return 0
        ip = str(info[0]).encode()
        rbac_parse_ip(PyBytes_AS_STRING(ip), PyBytes_GET_SIZE(ip), &self.addr[which])
        self.port[which] = info[1]
        return 0


cdef class NetworkRbac:
    def __init__(self, RbacPolicies policies, Store store, str stat_prefix,
                 str shadow_stat_prefix=""):
        """Stats as Envoy's network filter names them: `<stat_prefix>.rbac.allowed|denied`,
        `<stat_prefix>.rbac.<shadow_rules_stat_prefix>shadow_allowed|denied`."""
        base = stat_prefix if stat_prefix.endswith(".") else stat_prefix + "."
        self.policies = policies
        self.stat_prefix = stat_prefix
        self.st = RbacStats(store, base + "rbac.", base + "rbac." + shadow_stat_prefix)

    def wrap(self, factory):
        """A protocol factory putting a gate in front of `factory`'s protocols."""
        def gated():
            return RbacGate(self, factory())
        return gated

    def check_transport(self, transport):
        """(allowed, matched policy name or None) for a connection: counts, as a check."""
        cdef _ConnRequest r = _ConnRequest.__new__(_ConnRequest)
        cdef int pol = -1
        r.transport = transport
        r.conn_state = self.conn_state
        ok = self.st.check(self.policies, r, &pol)
        eng = self.policies.engine
        return bool(ok), (eng.names[pol] if pol >= 0 else None)


cdef class RbacGate:
    def __init__(self, NetworkRbac cfg, inner):
        self.cfg = cfg
        self.inner = inner
        self.transport = None
        self.decided = False

    def connection_made(self, transport):
        self.transport = transport
        self.inner.connection_made(transport)

    cdef int decide(self) except -1:
        self.decided = True
        ok, _ = self.cfg.check_transport(self.transport)
        if ok:
            self.transport.set_protocol(self.inner)
            return 1
        # Envoy closes without flushing (NoFlush): nothing the inner filter queued leaves
        self.transport.abort()
        return 0

    def data_received(self, data):
        if not self.decided and not self.decide():
            return
        self.inner.data_received(data)

    def eof_received(self):
        if not self.decided and not self.decide():
            return False
        return self.inner.eof_received()

    def connection_lost(self, exc):
        self.inner.connection_lost(exc)

    def pause_writing(self):
        self.inner.pause_writing()

    def resume_writing(self):
        self.inner.resume_writing()


ACTION_ALLOW = RBAC_ALLOW
ACTION_DENY = RBAC_DENY
ACTION_LOG = RBAC_LOG
ADDRESS_DIRECT = ADDR_DIRECT
ADDRESS_REMOTE = ADDR_REMOTE
ADDRESS_LOCAL = ADDR_LOCAL
