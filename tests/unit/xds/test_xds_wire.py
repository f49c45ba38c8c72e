"""_core.xds_wire: resources read from their wire bytes agree with the protobuf path.

The sidecar takes these shortcuts for what a control plane sends by the thousand (plain
endpoint assignments, clusters and virtual hosts that differ only in names); each must give
what the full path gives, or step aside (None) and let the full path decide."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sofamesh._core import xds_wire
from sofamesh.config.validate import validate_resource
from sofamesh.proxy.errors import UnsupportedConfig
from sofamesh.proxy.routes import compile_route_config
from sofamesh.proxy.xds_shapes import hosts_from_assignment
from sofamesh.xds.checks import ResourceChecks

from .test_checks import cla, cluster, route_config, variants


def attrs(h):
    return (
        h.address,
        h.port,
        h.host_port,
        h.weight,
        h.healthy,
        h.priority,
        h.locality,
        h.locality_weight,
        h.hc_port,
        h.hostname,
    )


def full_path(m):
    """What proxy/dynamic.py did before the shortcut: (accepted, [host attrs])."""
    if validate_resource(m):
        return False, None
    try:
        return True, [attrs(h) for h in hosts_from_assignment(m)]
    except (UnsupportedConfig, ValueError):
        return False, None


def agrees(m) -> bool:
    """The shortcut's answer for m's bytes equals the full path's, or it steps aside."""
    got = xds_wire.plain_assignment(m.SerializeToString())
    if got is None:
        return False
    ok, hosts = full_path(m)
    assert ok, f"the shortcut accepted what the full path refuses: {m}"
    assert got[0] == m.cluster_name
    assert [attrs(h) for h in got[1]] == hosts
    return True


@pytest.mark.parametrize("m", list(variants()))
def test_every_variant_agrees_or_steps_aside(m):
    agrees(m)


def test_the_pilots_assignments_take_the_shortcut():
    assert agrees(cla())
    assert agrees(cla(endpoints=[]))
    m = cla()
    m.endpoints[0].ClearField("locality")  # no locality: "//", as the full path
    assert agrees(m)
    big = cla(cluster_name="c" * 300 + "é")
    for i in range(300):
        lbe = big.endpoints[0].lb_endpoints.add()
        lbe.endpoint.address.socket_address.address = (
            f"fd00::{i:x}" if i % 2 else f"10.{i // 256}.{i % 256}.1"
        )
        lbe.endpoint.address.socket_address.port_value = (1, 127, 128, 65535)[i % 4]
        lbe.health_status = i % 6  # UNHEALTHY, DRAINING, TIMEOUT: kept, not chosen
        if i % 3:
            lbe.load_balancing_weight.value = (1, 200, 70000)[i % 3]
    assert agrees(big)


@pytest.mark.parametrize(
    "address", ["10.0.0", "example.com", "10.0.0.256", "fd00::g", "", "1.2.3.4 "]
)
def test_an_address_that_is_not_an_ip_takes_the_full_path(address):
    m = cla()
    m.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address = address
    assert xds_wire.plain_assignment(m.SerializeToString()) is None
    assert full_path(m) == (False, None)


def test_a_field_given_twice_or_out_of_order_is_handled():
    one = cla().SerializeToString()
    # cluster_name twice (protobuf: the last wins): not plain, the full path decides
    assert xds_wire.plain_assignment(one + b"\x0a\x01x") is None
    # endpoints before the name: the same assignment
    m = cla()
    name = endpoint_pb2.ClusterLoadAssignment(cluster_name=m.cluster_name).SerializeToString()
    rest = endpoint_pb2.ClusterLoadAssignment(endpoints=m.endpoints).SerializeToString()
    got = xds_wire.plain_assignment(rest + name)
    assert got is not None and [attrs(h) for h in got[1]] == full_path(m)[1]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_bytes_never_escape_and_never_disagree(data):
    raw = bytearray(cla().SerializeToString())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    raw = bytes(raw)
    got = xds_wire.plain_assignment(raw)  # never raises
    if got is None:
        return
    m = endpoint_pb2.ClusterLoadAssignment.FromString(raw)  # what it read is protobuf
    ok, hosts = full_path(m)
    assert ok and [attrs(h) for h in got[1]] == hosts


def test_strip_fields_is_the_cluster_without_its_names():
    c = cluster("outbound|80||a")
    stripped = xds_wire.strip_fields(c.SerializeToString(), ((1,), (3, 2)))
    want = cluster_pb2.Cluster()
    want.CopyFrom(c)
    want.ClearField("name")
    want.eds_cluster_config.ClearField("service_name")
    assert cluster_pb2.Cluster.FromString(stripped) == want
    other = xds_wire.strip_fields(cluster("b").SerializeToString(), ((1,), (3, 2)))
    assert other == stripped  # same shape, same bytes
    wider = cluster("c", connect_timeout="6s").SerializeToString()
    assert xds_wire.strip_fields(wider, ((1,), (3, 2))) != stripped
    assert xds_wire.strip_fields(b"\xff", ((1,),)) is None


def test_repeated_gives_each_virtual_host_as_parsed():
    rc = route_config("80", ["a", "b", "c"])
    parts = xds_wire.repeated(rc.SerializeToString(), 2)
    assert [type(rc.virtual_hosts[0]).FromString(p) for p in parts] == list(rc.virtual_hosts)


def _parts(rc):
    return xds_wire.repeated(rc.SerializeToString(), 2)


def test_route_hosts_are_checked_once_per_shape_from_their_bytes():
    checks = ResourceChecks()
    rc = route_config("80", [f"s{i}" for i in range(100)])
    assert checks.check(rc, parts=_parts(rc)) == []
    first = checks.full
    assert first <= 3
    rc2 = route_config("81", [f"t{i}" for i in range(100)])
    assert checks.check(rc2, parts=_parts(rc2)) == []
    assert checks.full == first  # another config, the same host shape


def _routes(table, hosts):
    from tests.unit.dataplane.test_router import head

    out = []
    for h in hosts:
        r = table.match(head(host=h))
        out.append((h, r.name, r.vhost_name, r.cluster, r.timeout))
    return out


def test_virtual_hosts_of_one_shape_keep_their_own_names_and_clusters():
    hosts = [f"s{i}" for i in range(20)]
    rc = route_config(
        "80", hosts, routes=[{"name": "r", "match": {"prefix": "/"}, "route": {"timeout": "3s"}}]
    )
    for i, vh in enumerate(rc.virtual_hosts):
        vh.routes[0].route.cluster = f"outbound|80||s{i}"
        vh.routes[0].name = f"route-{i}"
    plain = compile_route_config(rc)
    fast = compile_route_config(rc, reuse={}, parts=_parts(rc))
    want = _routes(plain, hosts)
    assert _routes(fast, hosts) == want
    assert want[7] == ("s7", "route-7", "s7:80", "outbound|80||s7", 3.0)
    # a later version of another config with the same shape: compiled from the shape
    rc2 = route_config("81", ["n0", "n1"])
    again = compile_route_config(rc2, reuse={}, parts=_parts(rc2))
    assert _routes(again, ["n0", "n1"]) == _routes(compile_route_config(rc2), ["n0", "n1"])


def _vh(name, domains, routes):
    rc = route_config("80", ["x"])
    vh = rc.virtual_hosts[0]
    vh.Clear()
    json_format.ParseDict({"name": name, "domains": domains, "routes": routes}, vh)
    return vh


R1 = [{"name": "r1", "match": {"prefix": "/"}, "route": {"cluster": "c1", "timeout": "2s"}}]


def test_vhost_shape_reads_names_domains_and_route_clusters():
    vh = _vh("a:80", ["a", "a:80", "a.ns.svc"], R1 + [{"match": {"path": "/x"}, "redirect": {}}])
    name, domains, key, routes = xds_wire.vhost_shape(vh.SerializeToString(), True)
    assert (name, domains, routes) == (
        "a:80",
        ["a", "a:80", "a.ns.svc"],
        [("r1", "c1"), ("", None)],
    )
    other = _vh("b", ["b", "b:80", "b.ns.svc"], R1)
    other.routes[0].name, other.routes[0].route.cluster = "r2", "c2"
    other.routes.add().CopyFrom(vh.routes[1])
    assert xds_wire.vhost_shape(other.SerializeToString(), True)[2] == key  # names aside
    # route names count unless asked to leave them out
    assert (
        xds_wire.vhost_shape(other.SerializeToString(), False)[2]
        != (xds_wire.vhost_shape(vh.SerializeToString(), False)[2])
    )
    longer = _vh("a:80", ["a"], [{**R1[0], "route": {"cluster": "c1", "timeout": "3s"}}])
    assert xds_wire.vhost_shape(longer.SerializeToString(), True)[2] != key


@pytest.mark.parametrize(
    "vh",
    [
        _vh("a", ["*"], R1),  # not a plain domain: the full path
        _vh("a", ["a:123456"], R1),
        _vh("", ["a"], R1),
        _vh("a", [], R1),
        _vh("a", ["a"], [{"match": {"prefix": "/"}, "route": {"cluster": ""}}]),
    ],
)
def test_vhost_shape_steps_aside(vh):
    assert xds_wire.vhost_shape(vh.SerializeToString(), True) is None


def test_a_route_naming_two_cluster_specifiers_takes_the_full_path():
    vh = _vh("a", ["a"], R1)
    assert xds_wire.vhost_shape(vh.SerializeToString(), True) is not None
    # the route action's bytes with cluster_header after cluster: protobuf keeps the last
    action = vh.routes[0].route.SerializeToString() + b"\x12\x03x-c"
    routes = b"\x12" + bytes([len(action)]) + action  # Route.route
    raw = b"\x0a\x01a" + b"\x12\x01a" + b"\x1a" + bytes([len(routes)]) + routes
    parsed = type(vh).FromString(raw)
    assert parsed.routes[0].route.WhichOneof("cluster_specifier") == "cluster_header"
    assert xds_wire.vhost_shape(raw, True) is None


def test_only_fields_tells_a_bare_route_config():
    rc = route_config("80", ["a", "b"])
    assert xds_wire.only_fields(rc.SerializeToString(), frozenset({1, 2}))
    rc.request_headers_to_remove.append("x-a")
    assert not xds_wire.only_fields(rc.SerializeToString(), frozenset({1, 2}))
    assert not xds_wire.only_fields(b"\xff", frozenset({1, 2}))


def test_a_bare_route_config_compiles_as_the_full_path_does():
    hosts = [f"s{i}" for i in range(5)]
    rc = route_config("80", hosts)
    bare = compile_route_config(rc, reuse={}, parts=_parts(rc), plain=True)
    assert _routes(bare, hosts) == _routes(compile_route_config(rc), hosts)
