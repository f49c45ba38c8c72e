"""RBAC `metadata` and `filter_state` rules against Envoy 1.40, with what sets them:
envoy.filters.http.set_metadata (dynamic metadata), envoy.filters.http.set_filter_state
(per request) and envoy.filters.network.set_filter_state (per connection, before the HTTP
connection manager). These are the shapes istiod writes for AuthorizationPolicies: JWT
claims as `istio_authn` metadata and the caller's SPIFFE identity as the filter state
`io.istio.peer_principal`. Each route holds one rule (RBACPerRoute), so the status says
whether that rule matched; the same requests through both proxies get the same statuses and
the same RBAC and set_metadata counters."""

from __future__ import annotations

from tests.integration.http_filters.conftest import typed

RBAC = "envoy.extensions.filters.http.rbac.v3.RBAC"
RBAC_ROUTE = "envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
SET_MD = "envoy.extensions.filters.http.set_metadata.v3.Config"
SET_FS = "envoy.extensions.filters.http.set_filter_state.v3.Config"
NET_SET_FS = "envoy.extensions.filters.network.set_filter_state.v3.Config"


def _md(ns: str, keys: list[str], value: dict, invert: bool = False) -> dict:
    m = {"filter": ns, "path": [{"key": k} for k in keys], "value": value}
    if invert:
        m["invert"] = True
    return {"metadata": m}


def _fs(key: str, **sm) -> dict:
    return {"filter_state": {"key": key, "string_match": sm}}


def _routes(cases: dict[str, dict], permission: bool = False) -> dict:
    """One route per case; its RBACPerRoute allows only requests the rule matches."""
    routes = []
    for name, rule in cases.items():
        pol = (
            {"permissions": [rule], "principals": [{"any": True}]}
            if permission
            else {"permissions": [{"any": True}], "principals": [rule]}
        )
        routes.append(
            {
                "match": {"path": f"/{name}"},
                "route": {"cluster": "backend"},
                "typed_per_filter_config": {
                    "envoy.filters.http.rbac": typed(
                        RBAC_ROUTE,
                        rbac={"rules": {"action": "ALLOW", "policies": {"p": pol}}},
                    )
                },
            }
        )
    return {"routes": routes}


# the filter's own rules allow everything: the routes' rules decide
RBAC_FILTER = {
    "name": "envoy.filters.http.rbac",
    "typed_config": typed(
        RBAC,
        rules={
            "action": "ALLOW",
            "policies": {"all": {"permissions": [{"any": True}], "principals": [{"any": True}]}},
        },
    ),
}


def _statuses(envoy, ours, paths, headers_list) -> list:
    got = []
    for path in paths:
        for hs in headers_list:
            e = envoy.request("GET", f"/{path}", [("host", "h"), *hs])
            o = ours.request("GET", f"/{path}", [("host", "h"), *hs])
            got.append((path, hs, e.status, o.status))
    return got


def _rbac_stats(side) -> dict:
    return {k: v for k, v in side.stats().items() if ".rbac." in k or "set_metadata" in k}


METADATA_CASES = {
    # the claims as istio_authn metadata, after three set_metadata entries (below)
    "iss-exact": _md(
        "istio_authn",
        ["request.auth.claims", "iss"],
        {"list_match": {"one_of": {"string_match": {"exact": "https://accounts.example"}}}},
    ),
    "iss-other": _md(
        "istio_authn",
        ["request.auth.claims", "iss"],
        {"list_match": {"one_of": {"string_match": {"exact": "https://other"}}}},
    ),
    "iss-as-string": _md(
        "istio_authn",
        ["request.auth.claims", "iss"],
        {"string_match": {"exact": "https://accounts.example"}},
    ),
    "groups-merged": _md(
        "istio_authn",
        ["request.auth.claims", "groups"],
        {"list_match": {"one_of": {"string_match": {"exact": "late"}}}},
    ),
    "sub-kept": _md(
        "istio_authn", ["request.auth.claims", "sub"], {"string_match": {"prefix": "user-"}}
    ),
    "level-range": _md("acme", ["level"], {"double_match": {"range": {"start": 2, "end": 4}}}),
    "level-exact": _md("acme", ["level"], {"double_match": {"exact": 3}}),
    "level-out": _md("acme", ["level"], {"double_match": {"range": {"start": 4, "end": 9}}}),
    "on-true": _md("acme", ["on"], {"bool_match": True}),
    "on-false": _md("acme", ["on"], {"bool_match": False}),
    "nothing-null": _md("acme", ["nothing"], {"null_match": {}}),
    "level-null": _md("acme", ["level"], {"null_match": {}}),
    "struct-present": _md("acme", ["nested"], {"present_match": True}),
    "missing-present": _md("acme", ["missing"], {"present_match": True}),
    "present-false": _md("acme", ["level"], {"present_match": False}),
    "missing-inverted": _md("acme", ["missing"], {"present_match": True}, invert=True),
    "exact-inverted": _md("acme", ["nested", "k"], {"string_match": {"exact": "v"}}, invert=True),
    "through-scalar": _md("acme", ["level", "x"], {"present_match": True}),
    "deep": _md("acme", ["nested", "k"], {"string_match": {"exact": "v"}}),
    "or": _md(
        "acme",
        ["level"],
        {
            "or_match": {
                "value_matchers": [{"string_match": {"exact": "3"}}, {"double_match": {"exact": 3}}]
            }
        },
    ),
    "no-namespace": _md("nobody", ["level"], {"present_match": True}),
    "legacy-replaced": _md("legacy", ["a", "x"], {"present_match": True}),
    "legacy-new": _md("legacy", ["a", "y"], {"double_match": {"exact": 2}}),
    "legacy-other": _md("legacy", ["b"], {"string_match": {"exact": "kept"}}),
}


def _set_md(*entries: tuple[str, dict, bool]) -> dict:
    return {
        "name": "envoy.filters.http.set_metadata",
        "typed_config": typed(
            SET_MD,
            metadata=[
                {"metadata_namespace": ns, "value": v, "allow_overwrite": ow}
                for ns, v, ow in entries
            ],
        ),
    }


def _set_md_legacy(ns: str, value: dict) -> dict:
    return {
        "name": "envoy.filters.http.set_metadata",
        "typed_config": typed(SET_MD, metadata_namespace=ns, value=value),
    }


METADATA_FILTERS = [
    _set_md(
        (
            "istio_authn",
            {
                "request.auth.claims": {
                    "iss": ["https://accounts.example"],
                    "sub": "user-1",
                    "groups": ["early"],
                }
            },
            False,
        ),
        ("acme", {"level": 3, "on": True, "nothing": None, "nested": {"k": "v"}}, False),
    ),
    # merged in: a list appended to, a struct field added; the next is denied
    _set_md(
        ("istio_authn", {"request.auth.claims": {"groups": ["late"], "extra": "e"}}, True),
        ("acme", {"level": 7}, False),
    ),
    _set_md_legacy("legacy", {"a": {"x": 1}, "b": "kept"}),
    _set_md_legacy("legacy", {"a": {"y": 2}}),
    RBAC_FILTER,
]


def test_metadata_principals_as_envoy(pair):
    envoy, ours = pair(http_filters=METADATA_FILTERS, virtual_host=_routes(METADATA_CASES))
    got = _statuses(envoy, ours, METADATA_CASES, [[]])
    assert [g for g in got if g[2] != g[3]] == []
    # the cases are not all one way
    assert {g[2] for g in got} == {200, 403}
    stats = _rbac_stats(ours)
    assert stats == _rbac_stats(envoy)
    # one denied overwrite ("acme" without allow_overwrite) per request
    assert stats["http.ingress.set_metadata.overwrite_denied"] == len(METADATA_CASES)


def test_metadata_permissions_as_envoy(pair):
    cases = {k: METADATA_CASES[k] for k in ("iss-exact", "level-out", "missing-inverted", "deep")}
    envoy, ours = pair(http_filters=METADATA_FILTERS, virtual_host=_routes(cases, permission=True))
    got = _statuses(envoy, ours, cases, [[]])
    assert [g for g in got if g[2] != g[3]] == []
    assert [g[3] for g in got] == [200, 403, 200, 200]


FS_CASES = {
    "who-alice": _fs("my.who", exact="alice"),
    "who-prefix": _fs("my.who", prefix="al"),
    "who-absent": _fs("my.who", exact="-"),
    "who-regex": _fs("my.who", safe_regex={"regex": "b.b"}),
    "unset-key": _fs("never.set", exact="-"),
    "conn-peer": _fs("conn.peer", exact="127.0.0.1"),
    "conn-peer-port": _fs("conn.addr", prefix="127.0.0.1:"),
    "conn-other": _fs("conn.peer", prefix="10."),
    "conn-san": _fs("io.istio.peer_principal", exact="-"),
    "conn-literal": _fs("conn.lit", exact="plain-text"),
    "stream-over-conn": _fs("both", exact="stream"),
}


def _value(key: str, fmt: str, **extra) -> dict:
    return {
        "object_key": key,
        "factory_key": "envoy.string",
        "format_string": {"text_format_source": {"inline_string": fmt}},
        **extra,
    }


def test_filter_state_principals_as_envoy(pair):
    network = [
        {
            "name": "envoy.filters.network.set_filter_state",
            "typed_config": typed(
                NET_SET_FS,
                on_new_connection=[
                    _value("conn.peer", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
                    _value("conn.addr", "%DOWNSTREAM_REMOTE_ADDRESS%"),
                    _value("io.istio.peer_principal", "%DOWNSTREAM_PEER_URI_SAN%"),
                    _value("conn.lit", "plain-text"),
                    _value("both", "connection"),
                ],
            ),
        }
    ]
    http = [
        {
            "name": "envoy.filters.http.set_filter_state",
            "typed_config": typed(
                SET_FS,
                on_request_headers=[
                    _value("my.who", "%REQ(x-who)%"),
                    _value("both", "stream"),
                ],
            ),
        },
        RBAC_FILTER,
    ]
    envoy, ours = pair(http_filters=http, network_filters=network, virtual_host=_routes(FS_CASES))
    who = [[("x-who", "alice")], [("x-who", "bob")], []]
    got = _statuses(envoy, ours, FS_CASES, who)
    assert [g for g in got if g[2] != g[3]] == []
    assert {g[2] for g in got} == {200, 403}
    assert _rbac_stats(envoy) == _rbac_stats(ours)
