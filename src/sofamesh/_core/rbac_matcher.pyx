# RBAC's `matcher` form (envoy.filters.http.rbac `matcher` / `shadow_matcher`: an xds
# matcher list over the request) on the rbac.pxd engine interface; compiled by
# sofamesh.filters.http.rbac_matcher.

from sofamesh._core.rbac cimport RbacEngine, RbacRequest, RbacRule, RBAC_ALLOW, RBAC_DENY


cdef class MatcherEngine(RbacEngine):
    """RBAC's `matcher` form (an xds matcher list): the first predicate that matches gives
    the action (ALLOW and LOG allow, DENY denies); when none matches, `on_no_match`'s
    action, else a denial (Envoy's default). `names` holds each action's name (the
    effective policy), the on_no_match action's last."""
    cdef tuple rules        # tuple[RbacRule, ...]: the predicates, in order
    cdef tuple allow        # tuple[bool, ...]: by predicate, then on_no_match's
    cdef bint has_default   # on_no_match set

    def __init__(self, matchers, default=None, header_names=()):
        """matchers: [(predicate RbacRule, action RBAC_*, name)]; default: (action, name)
        of on_no_match, or None."""
        self.action = RBAC_ALLOW
        self.rules = tuple(m[0] for m in matchers)
        acts = [m[1] for m in matchers]
        names = [m[2] for m in matchers]
        self.has_default = default is not None
        if default is not None:
            acts.append(default[0])
            names.append(default[1])
        self.allow = tuple(a != RBAC_DENY for a in acts)
        self.names = tuple(names)
        self.perms = ()
        self.principals = ()
        self.header_names = frozenset(header_names)

    cdef int first_match(self, RbacRequest r) except -2:
        cdef Py_ssize_t i
        for i in range(len(self.rules)):
            if (<RbacRule>self.rules[i]).matches(r):
                return <int>i
        return <int>len(self.rules) if self.has_default else -1

    cdef int allows(self, RbacRequest r, int* policy) except -1:
        cdef int m = self.first_match(r)
        policy[0] = m
        if m < 0:
            return 0
        return 1 if self.allow[m] else 0
