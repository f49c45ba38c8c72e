"""Operator policies in the generated resources (pilot/policy_xds.py): what the listeners,
virtual hosts and clusters carry with and without policies."""

from __future__ import annotations

from envoy.config.listener.v3 import listener_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac_cfg
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_http
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as rbac_net

from sofamesh.pilot.generate import CDS, LDS, RDS, Generator
from sofamesh.pilot.model import Instance
from sofamesh.pilot.policy import resolve
from sofamesh.pilot.store import BaseStore

INSTANCES = {
    "x": [Instance("x", "x1", "10.0.0.1", 8080)],
    "db": [Instance("db", "d1", "10.0.0.9", 5432, protocol="tcp")],
    "y": [Instance("y", "y1", "10.0.0.2", 1), Instance("y", "y2", "fd00::2", 1)],
}


def _gen(records: dict, mixer=("127.0.0.1", 15030)) -> Generator:
    store = BaseStore()
    store.records = records
    g = Generator(listener_address="127.0.0.1")
    g.policy_source = lambda instances: resolve(store, instances)
    g.mixer = mixer
    g.update({}, INSTANCES)
    return g


def _listener(g: Generator, name: str) -> listener_pb2.Listener:
    lst = listener_pb2.Listener()
    g.all[LDS][name].message().Unpack(lst)
    return lst


def _http_filters(g: Generator) -> list[str]:
    hcm = hcm_pb2.HttpConnectionManager()
    _listener(g, "127.0.0.1_15001").filter_chains[0].filters[0].typed_config.Unpack(hcm)
    return [f.name for f in hcm.http_filters]


def test_without_policies_the_resources_are_unchanged():
    plain = Generator(listener_address="127.0.0.1")
    plain.update({}, INSTANCES)
    g = _gen({})
    for t in (CDS, LDS, RDS):
        assert {n: r.version for n, r in g.all[t].items()} == {
            n: r.version for n, r in plain.all[t].items()
        }
    assert _http_filters(g) == ["envoy.filters.http.router"]


def test_access_policy_allows_the_callers_addresses_on_vhost_and_tcp_listener():
    g = _gen({"x": {"access": {"allow_from": ["y"]}}, "db": {"access": {"allow_from": ["y"]}}})
    assert _http_filters(g) == ["envoy.filters.http.rbac", "envoy.filters.http.router"]
    rc = route_pb2.RouteConfiguration()
    g.all[RDS]["15001|x"].message().Unpack(rc)
    per = rbac_http.RBACPerRoute()
    rc.virtual_hosts[0].typed_per_filter_config["envoy.filters.http.rbac"].Unpack(per)
    rules = per.rbac.rules
    assert rules.action == rbac_cfg.RBAC.ALLOW
    (pol,) = rules.policies.values()
    assert [
        (p.direct_remote_ip.address_prefix, p.direct_remote_ip.prefix_len.value)
        for p in pol.principals
    ] == [
        ("10.0.0.2", 32),
        ("fd00::2", 128),
    ]
    tcp = _listener(g, "127.0.0.1_5432").filter_chains[0].filters
    assert [f.name for f in tcp] == [
        "envoy.filters.network.rbac",
        "envoy.filters.network.tcp_proxy",
    ]
    net = rbac_net.RBAC()
    tcp[0].typed_config.Unpack(net)
    assert net.rules == rules


def test_access_policy_naming_no_registered_service_denies_everyone():
    g = _gen({"x": {"access": {"allow_from": ["nobody"]}}})
    rc = route_pb2.RouteConfiguration()
    g.all[RDS]["15001|x"].message().Unpack(rc)
    per = rbac_http.RBACPerRoute()
    rc.virtual_hosts[0].typed_per_filter_config["envoy.filters.http.rbac"].Unpack(per)
    assert per.rbac.rules.action == rbac_cfg.RBAC.ALLOW and not per.rbac.rules.policies


def test_rate_policy_needs_the_mixer_and_brings_its_cluster():
    g = _gen({"x": {"rate": {"requests_per_second": 7}}})
    assert _http_filters(g) == ["sofamesh.quota.x", "envoy.filters.http.router"]
    assert "sofamesh-mixer" in g.all[CDS]
    g2 = _gen({"x": {"rate": {"requests_per_second": 7}}}, mixer=None)
    assert _http_filters(g2) == ["envoy.filters.http.router"]
    assert "sofamesh-mixer" not in g2.all[CDS]
    assert any("--mixer" in p for p in g2.problems)


def test_rate_policy_on_a_tcp_service_is_reported_not_enforced():
    g = _gen(
        {"db": {"rate": {"requests_per_second": 7}}, "x": {"rate": {"requests_per_second": 5}}}
    )
    assert [p for p in g.problems if "rate policy" in p] == [
        "rate policy of db: not enforced on its TCP port(s) 5432 (tcp_proxy has no requests to count)"
    ]
    tcp = _listener(g, "127.0.0.1_5432").filter_chains[0].filters
    assert [f.name for f in tcp] == ["envoy.filters.network.tcp_proxy"]


def test_a_new_instance_of_the_allowed_service_changes_only_the_protected_vhost():
    store = BaseStore()
    store.records = {"x": {"access": {"allow_from": ["y"]}}}
    g = Generator(listener_address="127.0.0.1")
    g.policy_source = lambda instances: resolve(store, instances)
    g.update({}, INSTANCES)
    more = dict(INSTANCES, y=[*INSTANCES["y"], Instance("y", "y3", "10.0.0.3", 1)])
    ch = g.update({}, more)
    assert "15001|x" in ch.changed[RDS]
    # x's scoped route config, and the one of every vhost served by name (`sofamesh demo`)
    assert ch.changed[RDS] == {"15001|x", "15001"}
    assert not ch.changed[LDS]  # the listeners already carry the RBAC filter
