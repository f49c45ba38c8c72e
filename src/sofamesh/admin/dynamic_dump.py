"""/config_dump's dynamic sections from sofamesh.proxy.dynamic.DynamicConfig, in the shapes
of Envoy 1.40 (envoy.admin.v3 ClustersConfigDump.dynamic_active_clusters /
dynamic_warming_clusters, ListenersConfigDump.dynamic_listeners with active_state /
warming_state, RoutesConfigDump.dynamic_route_configs,
EndpointsConfigDump.dynamic_endpoint_configs), each with its version and update time."""

from __future__ import annotations

from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from sofamesh.xds.client import CDS, LDS


def _ts(t: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(t * 1e9))
    return ts


def add_dynamic(dyn: Any, clusters: Any, listeners: Any, routes: Any) -> None:
    if CDS in dyn.type_versions:
        clusters.version_info = dyn.type_versions[CDS]
    for field, table in (
        ("dynamic_active_clusters", dyn.active_clusters),
        ("dynamic_warming_clusters", dyn.warming_clusters),
    ):
        for name in sorted(table):
            dc = table[name]
            item = getattr(clusters, field).add(version_info=dc.version)
            item.cluster.Pack(dc.config)
            item.last_updated.CopyFrom(_ts(dc.updated))
    if LDS in dyn.type_versions:
        listeners.version_info = dyn.type_versions[LDS]
    for name in sorted({*dyn.active_listeners, *dyn.warming_listeners}):
        item = listeners.dynamic_listeners.add(name=name)
        for field, table in (
            ("active_state", dyn.active_listeners),
            ("warming_state", dyn.warming_listeners),
        ):
            dl = table.get(name)
            if dl is None:
                continue
            state = getattr(item, field)
            state.version_info = dl.version
            state.listener.Pack(dl.config)
            state.last_updated.CopyFrom(_ts(dl.updated))
    for name in sorted(dyn.routes):
        held = dyn.routes[name]
        item = routes.dynamic_route_configs.add(version_info=held.version)
        item.route_config.Pack(held.msg)
        item.last_updated.CopyFrom(_ts(held.updated))


def add_dynamic_endpoints(dyn: Any, eds: Any) -> None:
    for name in sorted(dyn.endpoints):
        held = dyn.endpoints[name]
        item = eds.dynamic_endpoint_configs.add(version_info=held.version)
        item.endpoint_config.Pack(held.msg)
        item.last_updated.CopyFrom(_ts(held.updated))
