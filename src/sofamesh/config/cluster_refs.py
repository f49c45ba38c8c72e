"""The clusters a config names: by routes, mirrors and tcp_proxy, by xDS/SDS API config sources,
and clusters made only of pipes (config validation resolves them as Envoy does at init)."""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message

from sofamesh.config import protos
from sofamesh.config.errors import join


def _pipe_only(c: Message) -> bool:
    """A cluster whose endpoints are all pipes (Istio's sds-grpc and xds-grpc)."""
    eps = [lbe.endpoint.address for e in c.load_assignment.endpoints for lbe in e.lb_endpoints]
    return bool(eps) and all(a.HasField("pipe") for a in eps)


_REF_FIELDS = {
    "envoy.config.route.v3.RouteAction": "cluster",
    "envoy.config.route.v3.RouteAction.RequestMirrorPolicy": "cluster",
    "envoy.config.route.v3.WeightedCluster.ClusterWeight": "name",
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy": "cluster",
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight": (
        "name"
    ),
}


def _cluster_refs(m: Message, path: str) -> Any:
    """(field path, cluster name) of every route, mirror and tcp_proxy cluster in `m`."""
    ref = _REF_FIELDS.get(m.DESCRIPTOR.full_name)
    if ref is not None and getattr(m, ref):
        yield join(path, ref), getattr(m, ref)
    for f, val in m.ListFields():
        if f.message_type is None:
            continue
        p = join(path, f.name)
        if f.message_type.GetOptions().map_entry:
            if f.message_type.fields_by_name["value"].message_type is None:
                continue
            items = [(f"{p}[{k!r}]", v) for k, v in val.items()]
        elif f.is_repeated:
            items = [(f"{p}[{i}]", v) for i, v in enumerate(val)]
        else:
            items = [(p, val)]
        for ip, v in items:
            if v.DESCRIPTOR.full_name == "google.protobuf.Any":
                v = protos.unpack_any(v)
                if v is None:
                    continue
            yield from _cluster_refs(v, ip)


def _api_grpc_clusters(m: Message) -> set[str]:
    """Clusters named by an ApiConfigSource's envoy_grpc services anywhere in `m` (the xDS
    and SDS streams, which dial a static cluster's first endpoint: xds/settings.py)."""
    out: set[str] = set()
    if m.DESCRIPTOR.full_name == "envoy.config.core.v3.ApiConfigSource":
        out.update(g.envoy_grpc.cluster_name for g in m.grpc_services if g.HasField("envoy_grpc"))
    for f, val in m.ListFields():
        if f.message_type is None:
            continue
        if f.message_type.GetOptions().map_entry:
            vals = list(val.values()) if f.message_type.fields_by_name["value"].message_type else []
        else:
            vals = list(val) if f.is_repeated else [val]
        for v in vals:
            if v.DESCRIPTOR.full_name == "google.protobuf.Any":
                v = protos.unpack_any(v)
                if v is None:
                    continue
            out |= _api_grpc_clusters(v)
    return out
