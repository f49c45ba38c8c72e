"""Whatever a config file holds, loading it ends in a Bootstrap or a ConfigError naming the
problem, never another exception (hypothesis over shapes built from real field names)."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sofamesh.config import ConfigError, load_bootstrap

NAMES = [
    "static_resources",
    "listeners",
    "clusters",
    "name",
    "address",
    "socket_address",
    "port_value",
    "filter_chains",
    "filters",
    "typed_config",
    "@type",
    "connect_timeout",
    "load_assignment",
    "endpoints",
    "lb_endpoints",
    "endpoint",
    "type",
    "lb_policy",
    "admin",
    "node",
    "id",
    "layered_runtime",
    "layers",
    "static_layer",
    "http_filters",
    "route_config",
    "virtual_hosts",
    "domains",
    "routes",
    "match",
    "prefix",
    "safe_regex",
    "regex",
    "route",
    "cluster",
    "weighted_clusters",
    "weight",
    "transport_socket",
    "filename",
    "bogus",
]
TYPES = [
    (
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
        ".HttpConnectionManager"
    ),
    "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
    "type.googleapis.com/xds.type.v3.TypedStruct",
    "type.googleapis.com/google.protobuf.Struct",
    "type.googleapis.com/no.such.Type",
    "",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.sampled_from(TYPES),
    st.sampled_from(["1s", "0s", "-1s", "auto", "STATIC", "round_robin"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(NAMES), inner, max_size=4),
    ),
    max_leaves=25,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(NAMES), values, max_size=4))
def test_any_document_loads_or_raises_config_error(tmp_path_factory, doc):
    p = tmp_path_factory.mktemp("fuzz") / "b.json"
    try:
        p.write_text(json.dumps(doc))
    except ValueError:  # NaN/inf are not JSON: YAML covers them below
        p = p.with_suffix(".yaml")
        p.write_text(repr(doc))
    try:
        load_bootstrap(p)
    except ConfigError as e:
        assert e.problems and all(str(x) for x in e.problems)
