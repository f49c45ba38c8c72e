"""Service model -> Envoy resources: content, caching, versions and the spliced wire format."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2, scoped_route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.service.discovery.v3 import discovery_pb2

from sofamesh.pilot.generate import CDS, EDS, LDS, RDS, SRDS, Generator, Resource, ld_field
from sofamesh.pilot.model import Instance, Locality, Port, Service


def inst(svc, iid, port, **kw):
    return Instance(svc, iid, f"10.0.0.{port % 250}", port, **kw)


def decode(res: Resource, msg):
    a = res.message()
    assert a.type_url == res.type_url
    return msg.FromString(a.value)


def test_cluster_endpoints_weights_localities_health():
    g = Generator(outbound_port=15001)
    insts = [
        inst("reviews", "a", 9001, weight=3, locality=Locality("r1", "z1")),
        inst("reviews", "b", 9002, locality=Locality("r1", "z1")),
        inst("reviews", "c", 9003, healthy=False, locality=Locality("r1", "z2")),
    ]
    svc = Service("reviews", ports=(Port(9080, "http"),))
    g.update({"reviews": svc}, {"reviews": insts})
    c = decode(g.all[CDS]["outbound|9080||reviews"], cluster_pb2.Cluster)
    assert c.type == cluster_pb2.Cluster.EDS and c.eds_cluster_config.eds_config.HasField("ads")
    cla = decode(g.all[EDS]["outbound|9080||reviews"], endpoint_pb2.ClusterLoadAssignment)
    assert [(l.locality.zone, l.load_balancing_weight.value) for l in cla.endpoints] == [
        ("z1", 4),
        ("z2", 1),
    ]
    z1 = cla.endpoints[0].lb_endpoints
    assert [
        (e.endpoint.address.socket_address.port_value, e.load_balancing_weight.value) for e in z1
    ] == [(9001, 3), (9002, 1)]
    assert cla.endpoints[1].lb_endpoints[0].health_status == health_check_pb2.HealthStatus.UNHEALTHY


def test_routes_listener_and_tcp_proxy():
    g = Generator(outbound_port=15001, listener_address="127.0.0.1")
    g.update(
        {
            "db": Service("db", ports=(Port(5432, "tcp"),)),
            "api": Service("api", ports=(Port(80, "http"), Port(81, "grpc"))),
        },
        {"db": [inst("db", "1", 5432)], "api": [inst("api", "1", 80), inst("api", "2", 81)]},
    )
    rc = decode(g.all[RDS]["15001"], route_pb2.RouteConfiguration)
    doms = {vh.name: list(vh.domains) for vh in rc.virtual_hosts}
    assert doms == {"api:80": ["api", "api:80"], "api:81": ["api:81"]}
    assert rc.virtual_hosts[1].routes[0].route.cluster == "outbound|81||api"
    # gRPC port: the upstream cluster speaks HTTP/2
    c81 = decode(g.all[CDS]["outbound|81||api"], cluster_pb2.Cluster)
    assert (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        in c81.typed_extension_protocol_options
    )
    # only the instance on port 81 backs port 81
    cla = decode(g.all[EDS]["outbound|81||api"], endpoint_pb2.ClusterLoadAssignment)
    assert [
        e.endpoint.address.socket_address.port_value for e in cla.endpoints[0].lb_endpoints
    ] == [81]
    wild = set(g.wild[LDS])
    assert wild == {"127.0.0.1_15001", "127.0.0.1_5432"}
    lst = decode(g.all[LDS]["127.0.0.1_15001"], listener_pb2.Listener)
    hcm = http_connection_manager_pb2.HttpConnectionManager.FromString(
        lst.filter_chains[0].filters[0].typed_config.value
    )
    # scoped routes: the Host's name picks the service's scope, which names its route config
    sr = hcm.scoped_routes
    hv = sr.scope_key_builder.fragments[0].header_value_extractor
    assert (hv.name, hv.element_separator, hv.index) == (":authority", ":", 0)
    assert hcm.http_filters[-1].name == "envoy.filters.http.router"
    scope = decode(g.all[SRDS]["15001|api"], scoped_route_pb2.ScopedRouteConfiguration)
    assert scope.route_configuration_name == "15001|api"
    assert [f.string_key for f in scope.key.fragments] == ["api"]
    own = decode(g.all[RDS]["15001|api"], route_pb2.RouteConfiguration)
    assert own.virtual_hosts == rc.virtual_hosts  # the service's hosts, and only them
    assert set(g.all[SRDS]) == {"15001|api"}  # db is TCP: no scope
    plain = Generator(outbound_port=15001, listener_address="127.0.0.1", scoped_routes=False)
    plain.update(
        {"api": Service("api", ports=(Port(80, "http"),))}, {"api": [inst("api", "1", 80)]}
    )
    lst = decode(plain.all[LDS]["127.0.0.1_15001"], listener_pb2.Listener)
    hcm = http_connection_manager_pb2.HttpConnectionManager.FromString(
        lst.filter_chains[0].filters[0].typed_config.value
    )
    assert hcm.rds.route_config_name == "15001" and not plain.all[SRDS]
    tcp = decode(g.all[LDS]["127.0.0.1_5432"], listener_pb2.Listener)
    tp = tcp_proxy_pb2.TcpProxy.FromString(tcp.filter_chains[0].filters[0].typed_config.value)
    assert tp.cluster == "outbound|5432||db"
    # proxyless gRPC listeners exist by name only, for gRPC ports only
    for name in ("api", "api:81"):
        assert name in g.all[LDS] and name not in g.wild[LDS]
        lst = decode(g.all[LDS][name], listener_pb2.Listener)
        hcm = http_connection_manager_pb2.HttpConnectionManager.FromString(
            lst.api_listener.api_listener.value
        )
        assert hcm.rds.route_config_name == "api:81"
    assert "api:80" not in g.all[LDS] and "api:80" not in g.all[RDS]


def test_only_changed_services_are_rebuilt_and_versions_are_content_hashes():
    g1, g2 = Generator(), Generator()
    model = {f"s{i}": [inst(f"s{i}", "1", 8000 + i)] for i in range(50)}
    g1.update({}, model)
    g2.update({}, dict(reversed(list(model.items()))))
    for t in (CDS, EDS, LDS, RDS):  # same model, same versions (replicas agree)
        assert g1.version(t) == g2.version(t)
        assert {n: r.version for n, r in g1.all[t].items()} == {
            n: r.version for n, r in g2.all[t].items()
        }
    before = {n: r for n, r in g1.all[EDS].items()}
    model2 = dict(model)
    model2["s7"] = model["s7"] + [inst("s7", "2", 9999, service_port=8007)]
    ch = g1.update({}, model2)
    assert ch.changed[EDS] == {"outbound|8007||s7"}
    assert not ch.changed[CDS] and not ch.changed[RDS] and not ch.changed[LDS]
    assert all(g1.all[EDS][n] is before[n] for n in before if n != "outbound|8007||s7")
    # a removed service: its resources are reported removed and the route config changes
    del model2["s3"]
    ch = g1.update({}, model2)
    assert (
        set(ch.removed[CDS]) == {"outbound|8003||s3"}
        and "outbound|8003||s3" in ch.removed_wild[CDS]
    )
    assert ch.changed[RDS] == {"15001"}


def test_bad_names_and_duplicate_domains_are_skipped_not_fatal():
    g = Generator()
    g.update(
        {},
        {
            "ok": [inst("ok", "1", 80)],
            "bad name*": [inst("bad name*", "1", 81)],
            "OK": [inst("OK", "1", 80)],
        },
    )
    rc = decode(g.all[RDS]["15001"], route_pb2.RouteConfiguration)
    assert len(rc.virtual_hosts) == 1  # "OK" and "ok" collide case-insensitively
    assert g.skipped["bad_name"] == 1 and g.skipped["duplicate_domain"] == 1
    assert "outbound|81||bad name*" not in g.all[CDS]


def test_spliced_responses_parse_as_the_real_messages():
    g = Generator()
    g.update({}, {"a": [inst("a", "1", 80)]})
    res = list(g.all[CDS].values())
    body = (
        ld_field(1, b"v1")
        + b"".join(r.sotw_chunk() for r in res)
        + ld_field(4, CDS.encode())
        + ld_field(5, b"n1")
    )
    m = discovery_pb2.DiscoveryResponse.FromString(body)
    assert m.version_info == "v1" and m.nonce == "n1" and m.type_url == CDS
    assert m.resources[0].SerializeToString() == res[0].any
    d = discovery_pb2.DeltaDiscoveryResponse.FromString(
        b"".join(r.delta_chunk() for r in res) + ld_field(6, b"gone")
    )
    assert d.resources[0].name == res[0].name and d.resources[0].version == res[0].version
    assert d.removed_resources == ["gone"]


def test_instances_without_service_port_form_one_service_port():
    g = Generator()
    # a REST/Consul-style service: instances on different ports, no service port anywhere
    g.update({}, {"pay": [inst("pay", "a", 8080), inst("pay", "b", 8081), inst("pay", "c", 8081)]})
    assert set(g.all[CDS]) == {"outbound|8081||pay"}  # the port most of them use
    cla = decode(g.all[EDS]["outbound|8081||pay"], endpoint_pb2.ClusterLoadAssignment)
    assert sorted(
        e.endpoint.address.socket_address.port_value for e in cla.endpoints[0].lb_endpoints
    ) == [8080, 8081, 8081]
    # explicit service ports split; an implicit instance on an explicit port joins it
    g.update(
        {},
        {
            "pay": [
                inst("pay", "a", 9000, service_port=80),
                inst("pay", "b", 9001, service_port=443),
                inst("pay", "c", 443),
                inst("pay", "d", 7777),
            ]
        },
    )
    members = {
        n: sorted(
            e.endpoint.address.socket_address.port_value
            for e in decode(r, endpoint_pb2.ClusterLoadAssignment).endpoints[0].lb_endpoints
        )
        for n, r in g.all[EDS].items()
    }
    assert members == {
        "outbound|80||pay": [9000],
        "outbound|443||pay": [443, 9001],
        "outbound|7777||pay": [7777],
    }


def test_endpoints_envoy_would_reject_are_left_out_and_reported():
    g = Generator()
    good = inst("svc", "ok", 8080)
    g.update(
        {},
        {
            "svc": [
                good,
                Instance("svc", "named", "db.example", 8080),
                Instance("svc", "zero", "10.0.0.2", 0, service_port=8080),
            ]
        },
    )
    cla = decode(g.all[EDS]["outbound|8080||svc"], endpoint_pb2.ClusterLoadAssignment)
    assert [e.endpoint.address.socket_address.address for e in cla.endpoints[0].lb_endpoints] == [
        good.address
    ]
    assert g.skipped["bad_endpoint"] == 2
    assert any("db.example" in p for p in g.problems)
