"""The pilot's inbound listeners (pilot/inbound.py): which instances a sidecar's stream takes
calls for, what it is sent (strict or permissive mTLS, plaintext without CA or tlsMode, RBAC
by identity or address), that it passes sofamesh's own validation, and how the ADS server
serves these per-stream resources beside the shared ones, SotW and Delta, changed and
removed; and the traffic-capture form (pilot/capture.py), `virtualInbound` for a node whose
metadata says INTERCEPTION_MODE: REDIRECT."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_http
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.service.discovery.v3 import discovery_pb2

from sofamesh.config.validate import validate_resource
from sofamesh.pilot.generate import CDS, LDS, Generator
from sofamesh.pilot.inbound import APP_PORT, InboundBuilder
from sofamesh.pilot.model import Instance, Port, Service
from sofamesh.pilot.policy import Resolved
from sofamesh.pilot.server import AdsServer, Connection, parse_node_id

TD = "mesh.test"
NODE = "sidecar~10.0.0.1~b-0.default~default.svc.cluster.local"


def _inst(iid: str, addr: str = "10.0.0.1", port: int = 8080, **labels: str) -> Instance:
    return Instance(
        "b", iid, addr, port, labels=tuple(sorted(labels.items())), protocol="http", weight=1
    )


LABELS = {APP_PORT: "18080", "tlsMode": "istio"}


class _Node:
    def __init__(self, node_id: str = NODE, cluster: str = "b", metadata: dict | None = None):
        self.node_info = parse_node_id(node_id)
        self.node_cluster = cluster
        self.metadata = metadata or {}


def _gen(insts: list[Instance], td: str = TD, policies: dict | None = None) -> Generator:
    gen = Generator(listener_address="127.0.0.1")
    gen.trust_domain = td
    if policies:
        gen.policy_source = lambda _instances: policies
    gen.update({"b": Service("b", ports=(Port(8080, "http"),))}, {"b": insts})
    return gen


def _unpack(res, cls):
    m = cls()
    res.message().Unpack(m)
    return m


def _hcm(fc) -> hcm_pb2.HttpConnectionManager:
    hcm = hcm_pb2.HttpConnectionManager()
    fc.filters[0].typed_config.Unpack(hcm)
    return hcm


def test_strict_inbound_for_the_sidecars_own_instance():
    gen = _gen([_inst("b-0", **LABELS), _inst("b-1", addr="10.0.0.2", **LABELS)])
    out = InboundBuilder(gen).resources(_Node())
    (lr,) = out[LDS].values()
    (cr,) = out[CDS].values()
    lst = _unpack(lr, listener_pb2.Listener)
    cl = _unpack(cr, cluster_pb2.Cluster)
    assert lst.name == "inbound_10.0.0.1_8080"
    assert (lst.address.socket_address.address, lst.address.socket_address.port_value) == (
        "10.0.0.1",
        8080,
    )
    assert cl.name == "inbound|8080||" and cl.type == cluster_pb2.Cluster.STATIC
    sa = cl.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (sa.address, sa.port_value) == ("127.0.0.1", 18080)
    (fc,) = lst.filter_chains  # strict: TLS only
    ctx = tls_pb2.DownstreamTlsContext()
    fc.transport_socket.typed_config.Unpack(ctx)
    assert ctx.require_client_certificate.value
    common = ctx.common_tls_context
    assert common.tls_certificate_sds_secret_configs[0].name == "default"
    cvc = common.combined_validation_context
    assert cvc.validation_context_sds_secret_config.name == "ROOTCA"
    (m,) = cvc.default_validation_context.match_typed_subject_alt_names
    assert m.matcher.prefix == f"spiffe://{TD}/"
    hcm = _hcm(fc)
    assert hcm.forward_client_cert_details == hcm_pb2.HttpConnectionManager.SANITIZE_SET
    assert [f.name for f in hcm.http_filters] == ["envoy.filters.http.router"]
    assert hcm.route_config.virtual_hosts[0].routes[0].route.cluster == "inbound|8080||"
    assert validate_resource(lst) == [] and validate_resource(cl) == []


def test_permissive_plaintext_and_no_ca():
    gen = _gen([_inst("b-0", **LABELS)])
    lst = _unpack(
        next(iter(InboundBuilder(gen, "permissive").resources(_Node())[LDS].values())),
        listener_pb2.Listener,
    )
    assert [f.name for f in lst.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    assert [fc.filter_chain_match.transport_protocol for fc in lst.filter_chains] == [
        "tls",
        "raw_buffer",
    ]
    assert lst.filter_chains[0].HasField("transport_socket")
    assert not lst.filter_chains[1].HasField("transport_socket")
    assert validate_resource(lst) == []
    for gen in (_gen([_inst("b-0", **LABELS)], td=""), _gen([_inst("b-0", **{APP_PORT: "18080"})])):
        # no CA, or no tlsMode label (callers send plaintext): plaintext only
        lst = _unpack(
            next(iter(InboundBuilder(gen).resources(_Node())[LDS].values())), listener_pb2.Listener
        )
        (fc,) = lst.filter_chains
        assert not fc.HasField("transport_socket") and not lst.listener_filters


def test_which_instances_are_the_streams():
    insts = [
        _inst("b-0", **LABELS),
        _inst("b-1", port=8081, **{**LABELS, APP_PORT: "18081"}),
        _inst("b-0:9090", port=9090, **{**LABELS, APP_PORT: "19090"}),
        _inst("b-2", addr="10.0.0.2", **LABELS),
        _inst("b-3", addr="10.0.0.3", **{APP_PORT: "nope"}),
        _inst("b-4", addr="10.0.0.4", tlsMode="istio"),
    ]
    ib = InboundBuilder(_gen(insts))

    def names(node_id: str, cluster: str = "b") -> list[str]:
        return sorted(ib.resources(_Node(node_id, cluster)).get(LDS, {}))

    # the pod's own instances when some are named after it, else every instance at its IP
    assert names(NODE) == ["inbound_10.0.0.1_8080", "inbound_10.0.0.1_9090"]  # b-0, b-0:9090
    assert names("sidecar~10.0.0.1~b-1.default~x") == ["inbound_10.0.0.1_8081"]
    assert names("sidecar~10.0.0.1~b-7.default~x") == [
        "inbound_10.0.0.1_8080",
        "inbound_10.0.0.1_8081",
        "inbound_10.0.0.1_9090",
    ]
    assert names("sidecar~10.0.0.2~x.default~x", "b.default") == ["inbound_10.0.0.2_8080"]
    assert names("sidecar~10.0.0.2~x.prod~x", "b.default") == []  # not its namespace
    assert names("sidecar~10.0.0.3~x.default~x") == []  # app port not a port
    assert names("sidecar~10.0.0.4~x.default~x") == []  # no app port: no inbound
    assert names("router~10.0.0.1~b-0.default~x") == []  # an edge takes no inbound
    assert names(NODE, "other") == []
    assert ib.resources(type("N", (), {"node_info": None, "node_cluster": "b"})()) == {}


def test_access_policy_by_identity_on_tls_and_by_address_on_plaintext():
    pol = Resolved(allow_ips=("10.0.0.9",), allow_from=("a", "c"))
    gen = _gen([_inst("b-0", **LABELS)], policies={"b": pol})
    gen.update(
        {"b": Service("b", ports=(Port(8080, "http"),))},
        {
            "b": [_inst("b-0", **LABELS)],
            "a": [Instance("a", "a-0", "10.0.0.9", 80, namespace="web")],
        },
    )
    lst = _unpack(
        next(iter(InboundBuilder(gen, "permissive").resources(_Node())[LDS].values())),
        listener_pb2.Listener,
    )
    tls, plain = lst.filter_chains

    def principals(fc) -> list:
        hcm = _hcm(fc)
        assert [f.name for f in hcm.http_filters] == [
            "envoy.filters.http.rbac",
            "envoy.filters.http.router",
        ]
        cfg = rbac_http.RBAC()
        hcm.http_filters[0].typed_config.Unpack(cfg)
        assert cfg.rules.action == rbac_pb2.RBAC.ALLOW
        (p,) = cfg.rules.policies.values()
        return [
            pr.authenticated.principal_name.exact or pr.direct_remote_ip.address_prefix
            for pr in p.principals
        ]

    # a has an instance (namespace web); c has none: the identity its sidecar is issued
    assert principals(tls) == [
        f"spiffe://{TD}/ns/default/sa/c",
        f"spiffe://{TD}/ns/web/sa/a",
    ]
    assert principals(plain) == ["10.0.0.9"]
    assert validate_resource(lst) == []


# --- the ADS server: per-stream resources beside the shared ones ---------------------------


def _server(insts: list[Instance]) -> tuple[AdsServer, Generator]:
    gen = _gen(insts)
    ads = AdsServer(gen)
    ads.inbound = InboundBuilder(gen)
    return ads, gen


def _names(msgs: list[bytes], delta: bool, t: str) -> tuple[set[str], set[str]]:
    got, removed = set(), set()
    for raw in msgs:
        if delta:
            r = discovery_pb2.DeltaDiscoveryResponse.FromString(raw)
            if r.type_url == t:
                got |= {x.name for x in r.resources}
                removed |= set(r.removed_resources)
        else:
            r = discovery_pb2.DiscoveryResponse.FromString(raw)
            if r.type_url == t:
                got |= {_any_name(a, t) for a in r.resources}
    return got, removed


def _any_name(a, t: str) -> str:
    m = listener_pb2.Listener() if t == LDS else cluster_pb2.Cluster()
    a.Unpack(m)
    return m.name


def _subscribe(conn: Connection, t: str) -> None:
    if conn.delta:
        req = discovery_pb2.DeltaDiscoveryRequest(type_url=t)
        req.node.id, req.node.cluster = NODE, "b"
        conn.on_delta_request(req)
    else:
        req2 = discovery_pb2.DiscoveryRequest(type_url=t)
        req2.node.id, req2.node.cluster = NODE, "b"
        conn.on_sotw_request(req2)


def _check_stream(delta: bool) -> None:
    ads, gen = _server([_inst("b-0", **LABELS)])
    conn = Connection(ads, "peer", delta)
    ads.connections[conn.id] = conn
    _subscribe(conn, CDS)
    _subscribe(conn, LDS)
    msgs = conn.build_responses()
    lds, _ = _names(msgs, delta, LDS)
    cds, _ = _names(msgs, delta, CDS)
    assert {"inbound_10.0.0.1_8080", "127.0.0.1_15001"} <= lds
    assert {"inbound|8080||", "outbound|8080||b"} <= cds
    # the app port moves: only this stream's own resources change
    svc = {"b": Service("b", ports=(Port(8080, "http"),))}
    moved = [_inst("b-0", **{**LABELS, APP_PORT: "18081"})]
    assert ads.push(gen.update(svc, {"b": moved})) == 1
    msgs = conn.build_responses()
    assert "inbound|8080||" in _names(msgs, delta, CDS)[0]
    # the instance goes: its listener and cluster are withdrawn
    ads.push(gen.update(svc, {"b": [_inst("b-0", addr="10.0.0.5", **LABELS)]}))
    msgs = conn.build_responses()
    lds, lds_gone = _names(msgs, delta, LDS)
    if delta:
        assert "inbound_10.0.0.1_8080" in lds_gone
        assert "inbound|8080||" in _names(msgs, delta, CDS)[1]
    else:  # SotW: the last response of each type lacks them
        last = [
            discovery_pb2.DiscoveryResponse.FromString(m)
            for m in msgs
            if discovery_pb2.DiscoveryResponse.FromString(m).type_url == LDS
        ][-1]
        assert "inbound_10.0.0.1_8080" not in {_any_name(a, LDS) for a in last.resources}
    assert conn.extra == {}


def test_served_changed_and_withdrawn_over_sotw():
    _check_stream(delta=False)


def test_served_changed_and_withdrawn_over_delta():
    _check_stream(delta=True)


def test_tcp_and_rpc_ports_get_tcp_proxy_with_network_rbac():
    from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as rbac_net
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

    dubbo = Instance(
        "b", "b-0", "10.0.0.1", 20880, protocol="dubbo",
        labels=tuple(sorted({APP_PORT: "20881", "tlsMode": "istio"}.items())),
    )  # fmt: skip
    pol = Resolved(allow_ips=(), allow_from=("a",))
    gen = Generator(listener_address="127.0.0.1")
    gen.trust_domain = TD
    gen.policy_source = lambda _instances: {"b": pol}
    gen.update({}, {"b": [dubbo]})
    lst = _unpack(
        next(iter(InboundBuilder(gen).resources(_Node())[LDS].values())), listener_pb2.Listener
    )
    (fc,) = lst.filter_chains
    assert [f.name for f in fc.filters] == [
        "envoy.filters.network.rbac",
        "envoy.filters.network.tcp_proxy",
    ]
    rb = rbac_net.RBAC()
    fc.filters[0].typed_config.Unpack(rb)
    (p,) = rb.rules.policies.values()
    assert [pr.authenticated.principal_name.exact for pr in p.principals] == [
        f"spiffe://{TD}/ns/default/sa/a"
    ]
    tp = tcp_proxy_pb2.TcpProxy()
    fc.filters[1].typed_config.Unpack(tp)
    assert tp.cluster == "inbound|20880||"
    ctx = tls_pb2.DownstreamTlsContext()
    fc.transport_socket.typed_config.Unpack(ctx)
    assert list(ctx.common_tls_context.alpn_protocols) == []  # no ALPN on TCP/RPC ports
    assert validate_resource(lst) == []


# --- traffic capture: virtualInbound on 15006 ----------------------------------------------

CAPTURE = {"INTERCEPTION_MODE": "REDIRECT"}


def _capture(insts: list[Instance], mode: str = "strict", **kw) -> dict:
    gen = _gen(insts, **kw)
    return InboundBuilder(gen, mode).resources(_Node(metadata=CAPTURE))


def _ports_chains(lst) -> list[tuple[str, int | None, str, bool]]:
    return [
        (
            fc.name,
            fc.filter_chain_match.destination_port.value
            if fc.filter_chain_match.HasField("destination_port")
            else None,
            fc.filter_chain_match.transport_protocol,
            fc.HasField("transport_socket"),
        )
        for fc in lst.filter_chains
    ]


def _all_valid(out: dict) -> None:
    for t, cls in ((LDS, listener_pb2.Listener), (CDS, cluster_pb2.Cluster)):
        for name, res in out[t].items():
            msg = _unpack(res, cls)
            assert msg.name == name
            assert validate_resource(msg) == [], (name, validate_resource(msg))


def test_capture_node_gets_one_virtual_inbound():
    insts = [
        _inst("b-0", **LABELS),  # app port 18080 by its label
        Instance(  # no app-port label: under capture the app keeps its own port
            "b", "b-0:9090", "10.0.0.1", 9090, protocol="grpc",
            labels=(("tlsMode", "istio"),),
        ),
        Instance("b", "b-0:20880", "10.0.0.1", 20880, protocol="dubbo"),  # no tlsMode
        _inst("b-1", addr="10.0.0.2", **LABELS),  # another pod's
    ]  # fmt: skip
    out = _capture(insts)
    assert list(out[LDS]) == ["virtualInbound"]  # no per-address listener
    lst = _unpack(out[LDS]["virtualInbound"], listener_pb2.Listener)
    sa = lst.address.socket_address
    assert (sa.address, sa.port_value) == ("0.0.0.0", 15006)
    assert lst.traffic_direction == base_pb2.INBOUND
    assert [f.name for f in lst.listener_filters] == ["envoy.filters.listener.original_dst"]
    assert _ports_chains(lst) == [
        ("virtualInbound-blackhole", 15006, "", False),
        ("inbound|8080||tls", 8080, "", True),
        ("inbound|9090||tls", 9090, "", True),
        ("inbound|20880||plaintext", 20880, "", False),
        ("virtualInbound-passthrough-tls", None, "", True),
    ]
    # the shared chains: HCM with XFCC on HTTP ports (by the capture listener's stat prefix)
    hcm = _hcm(lst.filter_chains[1])
    assert hcm.stat_prefix == "inbound_0.0.0.0_8080"
    assert hcm.forward_client_cert_details == hcm_pb2.HttpConnectionManager.SANITIZE_SET
    assert hcm.route_config.virtual_hosts[0].routes[0].route.cluster == "inbound|8080||"
    assert [f.name for f in lst.filter_chains[3].filters] == ["envoy.filters.network.tcp_proxy"]
    ctx = tls_pb2.DownstreamTlsContext()
    lst.filter_chains[2].transport_socket.typed_config.Unpack(ctx)
    assert ctx.require_client_certificate.value
    assert list(ctx.common_tls_context.alpn_protocols) == ["h2", "http/1.1"]
    # the clusters: the app at 127.0.0.1 on its app port, passthrough and black hole
    assert sorted(out[CDS]) == [
        "BlackHoleCluster",
        "InboundPassthroughCluster",
        "inbound|20880||",
        "inbound|8080||",
        "inbound|9090||",
    ]

    def endpoint(name: str) -> tuple[str, int]:
        cl = _unpack(out[CDS][name], cluster_pb2.Cluster)
        a = cl.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
        return a.address, a.port_value

    assert endpoint("inbound|8080||") == ("127.0.0.1", 18080)
    assert endpoint("inbound|9090||") == ("127.0.0.1", 9090)
    assert endpoint("inbound|20880||") == ("127.0.0.1", 20880)
    pt = _unpack(out[CDS]["InboundPassthroughCluster"], cluster_pb2.Cluster)
    assert pt.type == cluster_pb2.Cluster.ORIGINAL_DST
    assert pt.lb_policy == cluster_pb2.Cluster.CLUSTER_PROVIDED
    bh = _unpack(out[CDS]["BlackHoleCluster"], cluster_pb2.Cluster)
    assert bh.type == cluster_pb2.Cluster.STATIC and not bh.load_assignment.endpoints
    _all_valid(out)


def test_capture_permissive_inspects_tls_and_keeps_policies():
    pol = Resolved(allow_ips=("10.0.0.9",), allow_from=("a",))
    out = _capture([_inst("b-0", **LABELS)], "permissive", policies={"b": pol})
    lst = _unpack(out[LDS]["virtualInbound"], listener_pb2.Listener)
    assert [f.name for f in lst.listener_filters] == [
        "envoy.filters.listener.original_dst",
        "envoy.filters.listener.tls_inspector",
    ]
    assert _ports_chains(lst) == [
        ("virtualInbound-blackhole", 15006, "", False),
        ("inbound|8080||tls", 8080, "tls", True),
        ("inbound|8080||plaintext", 8080, "raw_buffer", False),
        ("virtualInbound-passthrough-tls", None, "tls", True),
        ("virtualInbound-passthrough-plaintext", None, "raw_buffer", False),
    ]
    # RBAC: by identity on TLS, by address on plaintext; the passthrough too (network RBAC)
    hcm = _hcm(lst.filter_chains[1])
    assert [f.name for f in hcm.http_filters] == [
        "envoy.filters.http.rbac",
        "envoy.filters.http.router",
    ]
    from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as rbac_net

    def net_principals(fc) -> list[str]:
        assert [f.name for f in fc.filters] == [
            "envoy.filters.network.rbac",
            "envoy.filters.network.tcp_proxy",
        ]
        rb = rbac_net.RBAC()
        fc.filters[0].typed_config.Unpack(rb)
        (p,) = rb.rules.policies.values()
        return [
            pr.authenticated.principal_name.exact or pr.direct_remote_ip.address_prefix
            for pr in p.principals
        ]

    assert net_principals(lst.filter_chains[3]) == [f"spiffe://{TD}/ns/default/sa/a"]
    assert net_principals(lst.filter_chains[4]) == ["10.0.0.9"]
    _all_valid(out)


def test_capture_without_ca_or_instances():
    # no CA: plaintext everywhere, no inspector
    out = _capture([_inst("b-0", **LABELS)], td="")
    lst = _unpack(out[LDS]["virtualInbound"], listener_pb2.Listener)
    assert [c[3] for c in _ports_chains(lst)] == [False, False, False]
    assert [f.name for f in lst.listener_filters] == ["envoy.filters.listener.original_dst"]
    # a captured sidecar whose workload has no instance yet: the redirect still lands on
    # 15006, which passes calls through with the mesh's mTLS
    gen = _gen([_inst("b-0", **LABELS)])
    out = InboundBuilder(gen).resources(
        _Node("sidecar~10.0.0.7~x-0.default~x", "x", metadata=CAPTURE)
    )
    lst = _unpack(out[LDS]["virtualInbound"], listener_pb2.Listener)
    assert _ports_chains(lst) == [
        ("virtualInbound-blackhole", 15006, "", False),
        ("virtualInbound-passthrough-tls", None, "", True),
    ]
    assert sorted(out[CDS]) == ["BlackHoleCluster", "InboundPassthroughCluster"]
    _all_valid(out)
    # an instance on the capture port itself gets no chain (it would shadow the black hole)
    out = _capture([_inst("b-0", **LABELS), _inst("b-0:15006", port=15006, tlsMode="istio")])
    lst = _unpack(out[LDS]["virtualInbound"], listener_pb2.Listener)
    assert [c[1] for c in _ports_chains(lst)] == [15006, 8080, None]
    # a router (edge) node takes no inbound, captured or not
    out = InboundBuilder(gen).resources(_Node("router~10.0.0.1~b-0.default~x", metadata=CAPTURE))
    assert out == {}


def test_without_interception_mode_nothing_changes():
    insts = [_inst("b-0", **LABELS), _inst("b-0:9090", port=9090, tlsMode="istio")]
    gen = _gen(insts)
    ib = InboundBuilder(gen)

    def served(metadata: dict) -> dict:
        out = ib.resources(_Node(metadata=metadata))
        return {t: {n: r.any for n, r in rs.items()} for t, rs in out.items()}

    today = served({})
    # the per-address listener of the labelled instance only (9090 has no app port)
    assert sorted(today[LDS]) == ["inbound_10.0.0.1_8080"]
    assert sorted(today[CDS]) == ["inbound|8080||"]
    for md in (
        {"INTERCEPTION_MODE": "NONE"},
        {"INTERCEPTION_MODE": "TPROXY"},  # not implemented: the form without capture
        {"INTERCEPTION_MODE": "redirect"},  # Istio's values are upper case
        {"NAMESPACE": "default"},
    ):
        assert served(md) == today, md
    assert sorted(served(CAPTURE)[LDS]) == ["virtualInbound"]


def _check_capture_stream(delta: bool) -> None:
    ads, gen = _server([_inst("b-0", **LABELS)])
    conn = Connection(ads, "peer", delta)
    ads.connections[conn.id] = conn
    for t in (CDS, LDS):
        if delta:
            req = discovery_pb2.DeltaDiscoveryRequest(type_url=t)
        else:
            req = discovery_pb2.DiscoveryRequest(type_url=t)  # type: ignore[assignment]
        req.node.id, req.node.cluster = NODE, "b"
        req.node.metadata.update(CAPTURE)
        (conn.on_delta_request if delta else conn.on_sotw_request)(req)  # type: ignore[operator]
    msgs = conn.build_responses()
    lds, _ = _names(msgs, delta, LDS)
    cds, _ = _names(msgs, delta, CDS)
    assert "virtualInbound" in lds and "inbound_10.0.0.1_8080" not in lds
    assert {"inbound|8080||", "InboundPassthroughCluster", "BlackHoleCluster"} <= cds
    # a second port registered: only virtualInbound and the new cluster are sent again
    svc = {"b": Service("b", ports=(Port(8080, "http"),))}
    more = [_inst("b-0", **LABELS), _inst("b-0:9090", port=9090, tlsMode="istio")]
    assert ads.push(gen.update(svc, {"b": more})) == 1
    msgs = conn.build_responses()
    if delta:
        assert _names(msgs, delta, LDS)[0] == {"virtualInbound"}
        assert _names(msgs, delta, CDS)[0] == {"inbound|9090||"}
    else:
        assert "virtualInbound" in _names(msgs, delta, LDS)[0]
        assert "inbound|9090||" in _names(msgs, delta, CDS)[0]


def test_capture_served_over_sotw():
    _check_capture_stream(delta=False)


def test_capture_served_over_delta():
    _check_capture_stream(delta=True)
