"""xds.checks: the shortcuts never accept what the full check (validate_resource) refuses."""

from __future__ import annotations

import itertools

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format

from sofamesh.config.validate import validate_resource
from sofamesh.xds.checks import ResourceChecks, plain_assignment_ok, plain_size


def cla(**over):
    d = {
        "cluster_name": "outbound|80||a",
        "endpoints": [
            {
                "locality": {"region": "r", "zone": "z"},
                "load_balancing_weight": 2,
                "lb_endpoints": [
                    {
                        "endpoint": {
                            "address": {"socket_address": {"address": "10.0.0.1", "port_value": 80}}
                        },
                        "health_status": "HEALTHY",
                        "load_balancing_weight": 2,
                    }
                ],
            }
        ],
    }
    d.update(over)
    return json_format.ParseDict(d, endpoint_pb2.ClusterLoadAssignment())


def variants():
    """Plain assignments, then each broken or widened in one way."""
    yield cla()
    yield cla(endpoints=[])
    yield cla(cluster_name="")
    for path, value in [
        ("load_balancing_weight", 0),
        ("priority", 200),
        ("priority", 1),
        ("lb_endpoints.0.load_balancing_weight", 0),
        ("lb_endpoints.0.health_status", 3),
        ("lb_endpoints.0.endpoint.address.socket_address.port_value", 70000),
        ("lb_endpoints.0.endpoint.address.socket_address.address", ""),
        ("lb_endpoints.0.endpoint.address.socket_address.protocol", 1),
        ("lb_endpoints.0.endpoint.address.socket_address.resolver_name", "x"),
        ("lb_endpoints.0.endpoint.hostname", "h"),
        ("locality.sub_zone", "s"),
    ]:
        m = cla()
        target = m.endpoints[0]
        *parts, last = path.split(".")
        for p in parts:
            target = target[int(p)] if p.isdigit() else getattr(target, p)
        if last in ("load_balancing_weight",):
            getattr(target, last).value = value
        else:
            setattr(target, last, value)
        yield m
    m = cla()
    m.policy.overprovisioning_factor.value = 140
    yield m
    m = cla()
    m.endpoints[0].lb_endpoints[0].endpoint.address.pipe.path = "/tmp/x"
    yield m


@pytest.mark.parametrize("m", list(variants()))
def test_plain_assignment_never_accepts_what_the_full_check_refuses(m):
    full = validate_resource(m)
    if plain_assignment_ok(m):
        assert full == [], full
    if plain_size(m) == m.ByteSize():
        assert full == [], full
        assert plain_assignment_ok(m)  # the size shortcut accepts no more than the fields
    assert (ResourceChecks().check(m) == []) == (full == [])


def test_the_pilots_assignments_take_the_short_path():
    assert plain_assignment_ok(cla())
    assert plain_assignment_ok(cla(endpoints=[]))
    for m in (cla(), cla(endpoints=[])):
        assert plain_size(m) == m.ByteSize()


@pytest.mark.parametrize("n", [1, 5, 200])
def test_plain_size_counts_every_byte(n):
    """Long names, ports of 1-3 varint bytes, weights, statuses, non-ASCII: sizes agree."""
    m = cla(cluster_name="c" * 300 + "é")
    lle = m.endpoints[0]
    for i in range(n):
        lbe = lle.lb_endpoints.add()
        sa = lbe.endpoint.address.socket_address
        sa.address = f"10.{i % 256}.{i // 256}.1"
        sa.port_value = (1, 127, 128, 16383, 16384, 65535)[i % 6]
        lbe.health_status = i % 6
        if i % 3:
            lbe.load_balancing_weight.value = (1, 200, 70000)[i % 3]
    lle.locality.sub_zone = "ü" * 130
    assert plain_size(m) == m.ByteSize()
    m.endpoints[0].lb_endpoints[0].endpoint.hostname = "h"
    assert plain_size(m) != m.ByteSize()


def cluster(name, **over):
    d = {
        "name": name,
        "type": "EDS",
        "connect_timeout": "5s",
        "eds_cluster_config": {"eds_config": {"ads": {}}, "service_name": name + "-eds"},
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
    }
    d.update(over)
    return json_format.ParseDict(d, cluster_pb2.Cluster())


def test_a_cluster_shape_is_checked_once():
    checks = ResourceChecks()
    for i in range(50):
        assert checks.check(cluster(f"c{i}")) == []
    assert checks.full == 1


def test_a_different_shape_takes_the_full_check():
    checks = ResourceChecks()
    assert checks.check(cluster("a")) == []
    bad = cluster("b", lb_policy="MAGLEV")
    assert checks.check(bad) == validate_resource(bad) != []
    bad2 = cluster("c", common_lb_config={"close_connections_on_host_set_change": True})
    assert checks.check(bad2) != []
    assert checks.full == 3
    # refused shapes are not remembered
    assert checks.check(cluster("d", lb_policy="MAGLEV")) != []
    assert checks.full == 4


@pytest.mark.parametrize("a,b", list(itertools.combinations(["x", "outbound|80||y", "z.ns"], 2)))
def test_names_do_not_change_the_verdict(a, b):
    assert validate_resource(cluster(a)) == validate_resource(cluster(b)) == []


def route_config(rc_name, hosts, **vh_over):
    vhs = []
    for h in hosts:
        vh = {
            "name": f"{h}:80",
            "domains": [h, f"{h}:80"],
            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": f"outbound|80||{h}"}}],
        }
        vh.update(vh_over)
        vhs.append(vh)
    return json_format.ParseDict(
        {"name": rc_name, "virtual_hosts": vhs}, route_pb2.RouteConfiguration()
    )


def test_route_config_hosts_are_checked_by_shape_and_kept_between_versions():
    checks = ResourceChecks()
    assert checks.check(route_config("80", [f"s{i}" for i in range(100)])) == []
    first = checks.full
    assert first <= 3  # the head and one host shape
    assert checks.check(route_config("80", [f"s{i}" for i in range(101)])) == []
    assert checks.full == first


@pytest.mark.parametrize(
    "rc",
    [
        route_config("80", ["a", "b", "a"]),  # a domain twice
        route_config("80", ["a"], domains=[]),
        route_config("80", ["a"], name=""),
        route_config("80", ["a"], domains=["*bad*"]),
        route_config("80", ["a"], routes=[{"match": {"prefix": "/"}, "route": {"cluster": ""}}]),
        route_config(
            "80",
            ["a"],
            routes=[{"match": {"prefix": "/"}, "route": {"cluster": "c", "priority": "HIGH"}}],
        ),
    ],
)
@pytest.mark.parametrize("from_bytes", [False, True])
def test_route_config_by_parts_agrees_with_the_full_check(rc, from_bytes):
    """from_bytes: the virtual hosts also given as received (as proxy/dynamic.py does)."""
    from sofamesh._core import xds_wire

    def parts(m):
        return xds_wire.repeated(m.SerializeToString(), 2) if from_bytes else None

    checks = ResourceChecks()
    good = route_config("80", ["x", "y"])
    checks.check(good, parts=parts(good))  # shapes already known
    assert checks.check(rc, parts=parts(rc)) == validate_resource(rc)
