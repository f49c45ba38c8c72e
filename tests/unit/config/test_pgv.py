"""protoc-gen-validate rules read from the xds-protos descriptors, with Envoy's wording."""

from __future__ import annotations

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2
from envoy.config.route.v3 import route_components_pb2

from sofamesh.config.pgv import validate_message


def msgs(m):
    return [str(p) for p in validate_message(m)]


def test_string_min_len_and_duration_gt():
    c = cluster_pb2.Cluster()
    c.connect_timeout.SetInParent()
    assert msgs(c) == [
        "name: value length must be at least 1 characters",
        "connect_timeout: value must be greater than 0s",
    ]


def test_enum_defined_only():
    c = cluster_pb2.Cluster(name="a", lb_policy=42)
    assert msgs(c) == ["lb_policy: value must be one of the defined enum values"]


def test_required_oneof_and_message():
    r = route_components_pb2.Route()
    out = msgs(r)
    assert "match: value is required" in out
    assert "action: value is required" in out


def test_uint32_range_and_nested_paths():
    b = bootstrap_pb2.Bootstrap()
    sa = b.admin.address.socket_address
    sa.address = "127.0.0.1"
    sa.port_value = 70000
    assert msgs(b) == [
        ("admin.address.socket_address.port_value: value must be less than or equal to 65535")
    ]


def test_repeated_min_items():
    vh = route_components_pb2.VirtualHost(name="v")
    assert "domains: value must contain at least 1 item(s)" in msgs(vh)
    vh.domains.append("*")
    assert msgs(vh) == []


def test_header_name_well_known_regex():
    h = route_components_pb2.HeaderMatcher(name="bad\nheader")  # strict: false -> no CR/LF/NUL
    assert msgs(h) and msgs(h)[0].startswith("name: value does not match regex pattern")
    assert msgs(route_components_pb2.HeaderMatcher(name=":authority")) == []


def test_valid_address_passes():
    a = address_pb2.Address()
    a.socket_address.address = "127.0.0.1"
    a.socket_address.port_value = 80
    assert msgs(a) == []
