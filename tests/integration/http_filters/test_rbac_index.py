"""envoy.filters.http.rbac with many policies against Envoy 1.40: the shapes sofamesh's policy
index (rbac.pyx RbacIndex: necessary atoms read once, only candidate policies evaluated)
must not get wrong. Many policies sharing one header, overlapping path prefixes, or_rules
holding a not_rule, inverted and case-insensitive matchers (never indexed), a value with a
comma, addresses from x-forwarded-for, and the shadow and per-route engines: the same
requests get the same status and the same allowed/denied/shadow counters. And a header sent
twice (`x: a` and `x: b`): Envoy 1.40 matches a policy's header rule against each value (one
matching is enough; an inverted rule holds when none does), through the index and without it."""

from __future__ import annotations

import random

from tests.integration.http_filters.conftest import typed

RBAC = "envoy.extensions.filters.http.rbac.v3.RBAC"
RBAC_ROUTE = "envoy.extensions.filters.http.rbac.v3.RBACPerRoute"


def _hdr(name: str, **match) -> dict:
    if "invert" in match:
        return {"header": {"name": name, "invert_match": True, "string_match": match["sm"]}}
    return {"header": {"name": name, "string_match": match}}


def _path(**match) -> dict:
    return {"url_path": {"path": match}}


def _ip(kind: str, prefix: str, plen: int) -> dict:
    return {kind: {"address_prefix": prefix, "prefix_len": plen}}


def _and(*rules: dict) -> dict:
    return {"and_rules": {"rules": list(rules)}}


def _or(*rules: dict) -> dict:
    return {"or_rules": {"rules": list(rules)}}


def _pol(perms: list[dict], who: list[dict]) -> dict:
    return {"permissions": perms, "principals": who}


ANY = {"any": True}

POLICIES = {
    # ten policies on one header, each with its own value and path prefix
    **{
        f"a-tenant-{k}": _pol(
            [_and(_hdr("x-tenant", exact=f"t{k}"), _path(prefix=f"/t{k}/"))], [ANY]
        )
        for k in range(10)
    },
    # overlapping prefixes: the short one needs POST from loopback, the long one a user
    "b-prefix-short": _pol(
        [_and(_path(prefix="/p/"), _hdr(":method", exact="POST"))],
        [_ip("direct_remote_ip", "127.0.0.1", 32)],
    ),
    "b-prefix-long": _pol([_path(prefix="/p/long/")], [_hdr("x-user", exact="u1")]),
    # an or_rules whose not_rule branch makes every request a candidate
    "c-or-not": _pol(
        [_or(_hdr("x-a", exact="1"), {"not_rule": _hdr("x-b", exact="2")})],
        [_ip("remote_ip", "10.0.0.0", 8)],
    ),
    "d-multi-valued": _pol([_hdr("x-multi", exact="a,b")], [ANY]),
    "e-ignore-case": _pol([_hdr("x-ci", exact="MiXed", ignore_case=True)], [ANY]),
    "f-invert": _pol(
        [_and(_hdr("x-inv", invert=True, sm={"exact": "no"}), _path(exact="/inv"))], [ANY]
    ),
    "g-header-prefix": _pol(
        [_hdr("x-pre", prefix="ab")],
        [{"or_ids": {"ids": [_ip("direct_remote_ip", "10.0.0.0", 8), _hdr("x-user", exact="u2")]}}],
    ),
    "h-path-exact": _pol([_path(exact="/q")], [ANY]),
    "i-authority": _pol(
        [_hdr(":authority", exact="auth.test")], [{"not_id": _ip("remote_ip", "10.0.0.0", 8)}]
    ),
    "j-ipv6": _pol([ANY], [_ip("remote_ip", "::1", 128)]),
    "k-destination": _pol(
        [
            _and(
                _ip("destination_ip", "127.0.0.0", 8),
                {"destination_port_range": {"start": 1, "end": 65536}},
                _hdr("x-dst", exact="1"),
            )
        ],
        [ANY],
    ),
    "l-methods": _pol(
        [_or(_hdr(":method", exact="PUT"), _hdr(":method", exact="DELETE"))],
        [_ip("remote_ip", "192.168.0.0", 16)],
    ),
    "m-and-ids": _pol(
        [_hdr(":method", exact="GET")],
        [{"and_ids": {"ids": [_ip("remote_ip", "172.16.0.0", 12), _hdr("x-user", exact="u3")]}}],
    ),
    # more values on one header than the index compares one by one (a dict instead)
    **{f"n-big-{k:02d}": _pol([_hdr("x-big", exact=f"b{k}")], [ANY]) for k in range(20)},
    # IPv6 ranges whose length is not a whole number of bytes
    "o-v6-range": _pol([_path(prefix="/v6")], [_ip("remote_ip", "2001:db8:8000::", 33)]),
}

SHADOW = {
    "action": "DENY",
    "policies": {
        "s-get-t3": _pol([_and(_hdr(":method", exact="GET"), _hdr("x-tenant", exact="t3"))], [ANY]),
        "s-prefix": _pol([_path(prefix="/p/")], [_ip("remote_ip", "10.1.0.0", 16)]),
        "s-not": _pol([{"not_rule": _hdr("x-tenant", prefix="t")}], [_hdr("x-user", prefix="u")]),
    },
}

# RBACPerRoute on /route/: five policies on one header, DENY
ROUTE_RULES = {
    "action": "DENY",
    "policies": {
        f"r-{k}": _pol([_hdr("x-r", exact=f"v{k}")], [_ip("direct_remote_ip", "127.0.0.0", 8)])
        for k in range(5)
    },
}

FIXED = [
    ("GET", "/t3/x", [("x-tenant", "t3")]),
    ("GET", "/t3/x", [("x-tenant", "t4")]),
    ("GET", "/t9/", [("x-tenant", "t9")]),
    ("GET", "/t9", [("x-tenant", "t9")]),
    ("POST", "/p/a", []),
    ("GET", "/p/a", []),
    ("GET", "/p/long/x", [("x-user", "u1")]),
    ("GET", "/p/lon", [("x-user", "u1")]),
    ("GET", "/c", [("x-forwarded-for", "10.2.3.4")]),
    ("GET", "/c", [("x-forwarded-for", "10.2.3.4"), ("x-b", "2")]),
    ("GET", "/c", [("x-forwarded-for", "10.2.3.4"), ("x-b", "2"), ("x-a", "1")]),
    ("GET", "/c", [("x-forwarded-for", "11.2.3.4"), ("x-a", "1")]),
    ("GET", "/d", [("x-multi", "a,b")]),
    ("GET", "/d", [("x-multi", "a")]),
    ("GET", "/e", [("x-ci", "mixed")]),
    ("GET", "/e", [("x-ci", "MIXED")]),
    ("GET", "/e", [("x-ci", "mixe")]),
    ("GET", "/inv", []),
    ("GET", "/inv", [("x-inv", "no")]),
    ("GET", "/inv", [("x-inv", "yes")]),
    ("GET", "/inv?x=1", []),
    ("GET", "/g", [("x-pre", "abc"), ("x-user", "u2")]),
    ("GET", "/g", [("x-pre", "ab"), ("x-user", "u1")]),
    ("GET", "/g", [("x-pre", "a"), ("x-user", "u2")]),
    ("GET", "/q?z=1", []),
    ("GET", "/q/", []),
    ("GET", "/i", [("host", "auth.test")]),
    ("GET", "/i", [("host", "auth.test"), ("x-forwarded-for", "10.0.0.1")]),
    ("GET", "/k", [("x-dst", "1")]),
    ("GET", "/k", [("x-dst", "2")]),
    ("PUT", "/l", [("x-forwarded-for", "192.168.1.1")]),
    ("DELETE", "/l", [("x-forwarded-for", "192.168.1.1")]),
    ("PATCH", "/l", [("x-forwarded-for", "192.168.1.1")]),
    ("GET", "/m", [("x-forwarded-for", "172.20.0.1"), ("x-user", "u3")]),
    ("GET", "/m", [("x-forwarded-for", "172.20.0.1")]),
    ("GET", "/n", [("x-big", "b0")]),
    ("GET", "/n", [("x-big", "b17")]),
    ("GET", "/n", [("x-big", "b20")]),
    ("GET", "/n", [("x-big", "b1"), ("x-forwarded-for", "::1")]),
    ("GET", "/j", [("x-forwarded-for", "::1")]),
    ("GET", "/j", [("x-forwarded-for", "::2")]),
    ("GET", "/v6", [("x-forwarded-for", "2001:db8:8000::1")]),
    ("GET", "/v6", [("x-forwarded-for", "2001:db8:ffff::1")]),
    ("GET", "/v6", [("x-forwarded-for", "2001:db8::1")]),
    ("GET", "/v6", [("x-forwarded-for", "2001:db9:8000::1")]),
    ("GET", "/route/x", [("x-r", "v2")]),
    ("GET", "/route/x", [("x-r", "v7")]),
    ("GET", "/route/x", []),
]


def _generated(n: int, seed: int) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """Requests drawn from the policies' own vocabulary, so that near misses are common."""
    rnd = random.Random(seed)
    paths = ["/t0/", "/t3/a", "/t7/b", "/p/", "/p/long/", "/q", "/inv", "/x", "/route/y"]
    values = {
        "x-tenant": ["t0", "t3", "t7", "t10", "T3"],
        "x-user": ["u1", "u2", "u3", "u"],
        "x-a": ["1", "2"],
        "x-b": ["2", "3"],
        "x-pre": ["ab", "abz", "b"],
        "x-dst": ["1"],
        "x-r": ["v0", "v4", "v5"],
        "x-forwarded-for": ["10.1.2.3", "192.168.0.9", "172.16.5.5", "8.8.8.8"],
    }
    out = []
    for _ in range(n):
        hs = [(k, rnd.choice(v)) for k, v in values.items() if rnd.random() < 0.35]
        out.append((rnd.choice(["GET", "POST", "PUT", "DELETE"]), rnd.choice(paths), hs))
    return out


def _rbac_stats(side) -> dict[str, int]:
    return {k: v for k, v in side.stats().items() if ".rbac." in k}


def test_many_policies_same_answers_as_envoy(pair):
    rules = {"action": "ALLOW", "policies": POLICIES}
    filters = [
        {
            "name": "envoy.filters.http.rbac",
            "typed_config": typed(RBAC, rules=rules, shadow_rules=SHADOW),
        }
    ]
    per_route = {"envoy.filters.http.rbac": typed(RBAC_ROUTE, rbac={"rules": ROUTE_RULES})}
    vh = {
        "routes": [
            {
                "match": {"prefix": "/route/"},
                "route": {"cluster": "backend"},
                "typed_per_filter_config": per_route,
            },
            {"match": {"prefix": "/"}, "route": {"cluster": "backend"}},
        ]
    }
    envoy, ours = pair(http_filters=filters, virtual_host=vh)
    seen = set()
    bad = []
    for method, path, hs in FIXED + _generated(120, 10):
        body = b"x" if method in ("POST", "PUT") else None
        if not any(k == "host" for k, _ in hs):
            hs = [("host", "h"), *hs]
        e = envoy.request(method, path, hs, body)
        o = ours.request(method, path, hs, body)
        if (o.status, o.body) != (e.status, e.body):
            bad.append((method, path, hs, e.status, o.status))
        seen.add(o.status)
    assert bad == []
    assert seen == {200, 403}
    st = _rbac_stats(ours)
    assert st == _rbac_stats(envoy)
    assert min(st.values()) > 0, st


# one ALLOW policy per path, each a header rule on x-rep; requests send x-rep once or twice
REPEATED = {
    "/exact-a": _hdr("x-rep", exact="a"),
    "/exact-b": _hdr("x-rep", exact="b"),
    "/exact-ab": _hdr("x-rep", exact="a,b"),
    "/prefix-b": _hdr("x-rep", prefix="b"),
    "/suffix-a": _hdr("x-rep", suffix="a"),
    "/contains": _hdr("x-rep", contains=","),
    "/regex": _hdr("x-rep", safe_regex={"regex": "b"}),
    "/invert-a": _hdr("x-rep", invert=True, sm={"exact": "a"}),
    "/present": {"header": {"name": "x-rep", "present_match": True}},
}


def test_a_repeated_header_as_envoy(pair):
    rules = {
        "action": "ALLOW",
        "policies": {p: _pol([_and(_path(exact=p), rule)], [ANY]) for p, rule in REPEATED.items()},
    }
    filters = [{"name": "envoy.filters.http.rbac", "typed_config": typed(RBAC, rules=rules)}]
    envoy, ours = pair(http_filters=filters)
    got = []
    for path in REPEATED:
        for values in (["a"], ["b"], ["a", "b"], ["b", "a"], ["a,b"], []):
            hs = [("host", "h"), *[("x-rep", v) for v in values]]
            e = envoy.request("GET", path, hs)
            o = ours.request("GET", path, hs)
            got.append((path, values, e.status, o.status))
    bad = [g for g in got if g[2] != g[3]]
    assert bad == [], bad
