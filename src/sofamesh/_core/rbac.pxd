# Compiled RBAC policies (Envoy's envoy.config.rbac.v3 model): one engine checks HTTP
# requests (rbac_http), connections (the network filter, RbacGate) and RPC calls (rpc_proxy).
#
# Contract: a caller hands the engine an RbacRequest subclass, which says how to read the
# connection's addresses and the request's headers, pseudo-headers and path; the engine
# reads only what its rules need, when they need it (addresses are resolved once per check,
# lazily). Engines are compiled once per config by sofamesh.filters.http.rbac (Python, from
# the proto) and never mutated; a new config builds new engines. String and header
# matchers are router.pxd's, shared with the HTTP route table.

from sofamesh._core.router cimport StringMatcher, HeaderMatcher
from sofamesh._core.stats cimport Counter, Store

cdef enum:
    RBAC_ALLOW = 0
    RBAC_DENY = 1
    RBAC_LOG = 2

# which address an IP or port rule reads (RbacRequest.addr / port index)
cdef enum:
    ADDR_DIRECT = 0     # direct_remote_ip, source_ip: the connection's peer
    # remote_ip: the original client (HTTP: x-forwarded-for's last entry unless
    # use_remote_address), else the peer
    ADDR_REMOTE = 1
    ADDR_LOCAL = 2      # destination_ip / destination_port: the connection's local end

# pseudo-headers a header rule names, resolved when the rule is compiled; each is read at
# most once per check (RbacRequest.pseudo caches it)
cdef enum:
    PSEUDO_NONE = 0         # an ordinary header
    PSEUDO_METHOD = 1       # :method (HTTP method, RPC method)
    PSEUDO_PATH = 2         # :path, with its query
    PSEUDO_AUTHORITY = 3    # :authority
    PSEUDO_HOST = 4         # `host`: HTTP keeps it as :authority (Envoy); RPC: a header
    PSEUDO_SCHEME = 5       # :scheme
    PSEUDO_SERVICE = 6      # :service (RPC interface)
    PSEUDO_VERSION = 7      # :version (RPC)
    PSEUDO_GROUP = 8        # :group (RPC)
    PSEUDO_OTHER = 9        # any other ':' name
    # TLS (read from the connection's transport by tls_pseudo, never from a header):
    # tuple[bytes]: the verified peer certificate's URI SANs, DNS SANs, subject; None
    # when the connection is not TLS
    PSEUDO_PRINCIPAL = 10
    PSEUDO_SNI = 11         # the server name the client asked for (b"" without TLS/SNI)
    PSEUDO_COUNT = 12

# header names that rules read get a slot (process-wide, first come: at most HEADER_SLOTS
# names), so that a check reads each such header once however many rules name it
cdef enum:
    HEADER_SLOTS = 64

cdef struct rbac_ip:
    int family                  # 0: unknown (matches no range), 4 or 6
    unsigned char b[16]         # network order; IPv4 in b[0:4]

# the n bytes at `s` as an IPv4/IPv6 address; out.family 0 when they are not one
cdef int rbac_parse_ip(const char* s, Py_ssize_t n, rbac_ip* out) noexcept

# the cache slot of an ordinary header name (RbacRequest.cached_header), -1: none left
cdef int header_slot(bytes name)

# PSEUDO_PRINCIPAL / PSEUDO_SNI of a connection's transport (asyncio transport or None)
cdef object tls_pseudo(object transport, int which)


cdef class RbacRequest:
    """What a check reads. Reused from one check to the next (`begin` clears it)."""
    cdef int have                   # bit (1 << ADDR_*): addr/port resolved for this check
    cdef rbac_ip addr[3]            # by ADDR_*
    cdef int port[3]
    cdef bytes path_nq              # url_path cache for this check (None: not read yet)
    cdef int pseudo_have            # bit (1 << PSEUDO_*): pv[i] read for this check
    cdef list pv                    # list[bytes | None], PSEUDO_COUNT long, reused
    cdef unsigned long long hv_have     # bit (1 << slot): hv[slot] read for this check
    cdef list hv                    # list[bytes | tuple | None], HEADER_SLOTS long, reused
    cdef void begin(self) noexcept
    cdef int ensure(self, int which) except -1      # resolves addr[which] once per check
    cdef object pseudo(self, int which)             # read_pseudo(which), once per check
    # pseudo(which) as a view valid for this check (*p, *n): 1, or 0 when absent. The base
    # class reads pseudo(); a caller whose map holds the value may lend it without bytes
    cdef int pseudo_view(self, int which, const char** p, Py_ssize_t* n) except -1
    # header(name) once per check for a name with a slot (header_slot), else every time
    cdef object cached_header(self, int slot, bytes name)
    # overridden by each kind of caller:
    cdef int resolve(self, int which) except -1     # fills addr[which] and port[which]
    # bytes | None; a header sent more than once: a tuple of its values, in order (an RBAC
    # header rule holds when one of them matches, as Envoy's; joined_header() joins them)
    cdef object header(self, bytes name)
    cdef object read_pseudo(self, int which)        # bytes | None (PSEUDO_PATH: the path)
    # a filter state object's string form by key (str | None) and a dynamic metadata
    # namespace (dict | None); the base class has neither
    cdef object read_state(self, str key)
    cdef object read_metadata(self, str ns)


# a header() value as one bytes: a repeated header's values joined by "," (None stays None)
cdef object joined_header(object v)


cdef class RbacRule:
    cdef int matches(self, RbacRequest r) except -1    # 1 / 0


cdef struct rbac_prefix:
    const char* p                   # the prefix's bytes (kept alive by its RbacInput)
    Py_ssize_t n
    int mask                        # its clauses: RbacIndex mask number


cdef struct rbac_ip_atom:
    int which                       # ADDR_*
    int family                      # 4 or 6
    unsigned long long bits[2]      # the range's address bytes, masked, as two words
    unsigned long long keep[2]      # its prefix mask, the same way
    int mask                        # RbacIndex mask number


cdef class RbacInput:
    """One value the index reads once per check (a header, pseudo-header or the url_path) and
    the exact values and prefixes its atoms test."""
    cdef int code                   # PSEUDO_*; -1: the url_path
    cdef int slot                   # header_slot for an ordinary header
    cdef bytes name                 # the header name
    cdef dict exact                 # dict[bytes, int]: value -> mask number (many values)
    cdef rbac_prefix* exacts        # or the values in an array (a few: compared in C)
    cdef int nexact
    cdef rbac_prefix* prefixes
    cdef int nprefix
    cdef list keep                  # list[bytes]: what prefixes[i].p points into


cdef class RbacIndex:
    """A policy set's necessary conditions, read in one pass: each policy's rules imply
    clauses (sets of atoms: a header equal to or starting with a value, the url_path too, an
    address in a range), every clause of a matching policy has a true atom. A check reads
    each input once, sets the bits of the clauses its atoms satisfy, and evaluates the
    rules of only the policies whose clauses all hold."""
    cdef int nw                             # 64-bit words of a clause bit set
    cdef unsigned long long* masks          # mask number m: masks[m * nw : (m + 1) * nw]
    cdef unsigned long long* need           # policy i: need[i * nw : ...], its clauses
    cdef unsigned long long* sat            # scratch: the clauses satisfied in this check
    # policy i: 1 when its clauses holding is exactly its rules matching (atoms, and/or of
    # atoms, any), so they are not evaluated
    cdef char* exact
    cdef tuple inputs                       # tuple[RbacInput, ...]
    cdef rbac_ip_atom* ips
    cdef int nip
    cdef int npol
    # reads the inputs and fills sat; 0
    cdef int scan(self, RbacRequest r) except -1
    cdef int sat_value(self, RbacInput inp, const char* p, Py_ssize_t n, object v) except -1
    # 1 if policy i's clauses all hold (after scan)
    cdef inline bint candidate(self, int i) noexcept:
        cdef int k
        cdef unsigned long long* need = self.need + i * self.nw
        for k in range(self.nw):
            if (self.sat[k] & need[k]) != need[k]:
                return False
        return True


cdef class RbacEngine:
    cdef readonly int action                # RBAC_*
    cdef readonly tuple names               # tuple[str, ...]: policy names, Envoy's order
    cdef tuple perms                        # tuple[RbacRule, ...]: per policy, any permission
    cdef tuple principals                   # tuple[RbacRule, ...]: per policy, any principal
    cdef RbacIndex index                    # None: every policy's rules are evaluated
    cdef readonly frozenset header_names    # frozenset[str]: every header name rules read
    # index of the first policy that matches, -1 if none
    cdef int first_match(self, RbacRequest r) except -2
    # 1 allowed / 0 denied by the action; *policy = the matched policy index or -1
    cdef int allows(self, RbacRequest r, int* policy) except -1


cdef class RbacPolicies:
    """What applies to a request: the enforced and the shadow engine (either may be None),
    a filter's own or a route's override (RBACPerRoute)."""
    cdef readonly RbacEngine engine
    cdef readonly RbacEngine shadow


cdef class RbacStats:
    cdef Counter allowed, denied, shadow_allowed, shadow_denied
    # the last check's shadow engine outcome (1 allowed, 0 denied, -1 no shadow engine) and
    # its matched policy index (-1 none): the HTTP filter's dynamic metadata
    cdef int shadow_result
    cdef int shadow_policy
    # checks `p` against `r`, counts; 1 allowed / 0 denied (*policy: the enforced engine's
    # matched policy index, -1 none)
    cdef int check(self, RbacPolicies p, RbacRequest r, int* policy) except -1


cdef class NetworkRbac:
    """The network filter: checks a connection once, at its first bytes (Envoy's
    ONE_TIME_ON_FIRST_BYTE), and closes it when denied."""
    cdef readonly RbacPolicies policies
    cdef RbacStats st
    cdef readonly str stat_prefix
    # proxy.filter_state.ConnState of the filters before it in its chain, or None
    cdef public object conn_state


cdef class RbacGate:
    """An asyncio protocol in front of a listener's protocol until the connection's first
    bytes are checked; then the transport moves to the inner protocol (set_protocol)."""
    cdef NetworkRbac cfg
    cdef object inner                       # the terminal filter's protocol
    cdef object transport
    cdef bint decided
    cdef int decide(self) except -1         # 1 allowed (moved aside) / 0 denied (aborted)
