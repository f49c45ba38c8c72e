"""Auto mTLS in the generated config: clusters of services with instances labelled
`tlsMode: istio` carry Istio's transport_socket_matches (TLS by the pilot's SDS identities,
the destination's SPIFFE ids checked), their endpoints the metadata that selects it; other
clusters are untouched, and the generated resources pass sofamesh's own validation."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from sofamesh.config.validate import validate_resource
from sofamesh.pilot.generate import build_service
from sofamesh.pilot.model import Instance, Port, Service

SVC = Service("hello", ports=(Port(8080, "http"),))


def _msg(res, cls):
    m = cls()
    res.message().Unpack(m)
    return m


def _inst(iid: str, labels: dict) -> Instance:
    return Instance(
        "hello", iid, "10.0.0.1", 8080, labels=tuple(sorted(labels.items())), service_port=8080
    )


def test_tls_mode_istio_instances_get_mtls_by_sds():
    out = build_service(
        SVC,
        [_inst("a", {"tlsMode": "istio", "serviceAccount": "web"}), _inst("b", {})],
        trust_domain="mesh.test",
    )
    (cl,) = [_msg(r, cluster_pb2.Cluster) for r in out.clusters.values()]
    assert [m.name for m in cl.transport_socket_matches] == ["tlsMode-istio", "tlsMode-disabled"]
    tls = cl.transport_socket_matches[0]
    assert dict(tls.match) == {"tlsMode": "istio"}
    from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

    up = tls_pb2.UpstreamTlsContext()
    tls.transport_socket.typed_config.Unpack(up)
    common = up.common_tls_context
    assert common.tls_certificate_sds_secret_configs[0].name == "default"
    assert common.combined_validation_context.validation_context_sds_secret_config.name == "ROOTCA"
    sans = common.combined_validation_context.default_validation_context
    assert [m.matcher.exact for m in sans.match_typed_subject_alt_names] == [
        "spiffe://mesh.test/ns/default/sa/web"
    ]
    assert validate_resource(cl) == []
    (cla,) = [_msg(r, endpoint_pb2.ClusterLoadAssignment) for r in out.endpoints.values()]
    eps = [e for loc in cla.endpoints for e in loc.lb_endpoints]
    md = [dict(e.metadata.filter_metadata.get("envoy.transport_socket_match", {})) for e in eps]
    assert sorted(map(str, md)) == sorted(map(str, [{"tlsMode": "istio"}, {}]))
    assert validate_resource(cla) == []


def test_without_tls_mode_or_ca_clusters_are_unchanged():
    plain = build_service(SVC, [_inst("b", {})], trust_domain="mesh.test")
    no_ca = build_service(SVC, [_inst("a", {"tlsMode": "istio"})])
    for out in (plain, no_ca):
        (cl,) = [_msg(r, cluster_pb2.Cluster) for r in out.clusters.values()]
        assert not cl.transport_socket_matches
