"""What a bootstrap's `dynamic_resources` asks of the xDS client, read once at start-up.

Only what config validation lets through reaches here (config/support.py): an `ads_config`
of api_type GRPC (state of the world) or DELTA_GRPC with one `envoy_grpc` service naming a
static cluster, and `cds_config` / `lds_config` / EDS clusters' `eds_config` that say `ads`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sofamesh.proxy.errors import UnsupportedConfig

# Envoy's default initial_fetch_timeout for every subscription (config_source.proto)
DEFAULT_INITIAL_FETCH_TIMEOUT = 15.0
GRPC, DELTA_GRPC = 2, 3  # envoy.config.core.v3.ApiConfigSource.ApiType


def _seconds(d: Any) -> float:
    return d.seconds + d.nanos / 1e9


def initial_fetch_timeout(source: Any) -> float:
    """A ConfigSource's initial_fetch_timeout in seconds; 0 means wait for ever."""
    if source.HasField("initial_fetch_timeout"):
        return _seconds(source.initial_fetch_timeout)
    return DEFAULT_INITIAL_FETCH_TIMEOUT


@dataclass
class AdsSettings:
    target: str  # grpc target host:port
    cluster: str  # the static cluster it came from
    delta: bool
    node: Any  # envoy.config.core.v3.Node, sent as given plus the user agent (as Envoy)
    node_first_only: bool
    cds: bool  # cds_config is ads: subscribe to clusters
    lds: bool  # lds_config is ads: subscribe to listeners
    cds_timeout: float  # seconds, 0 = none
    lds_timeout: float

    @classmethod
    def from_bootstrap(cls, bootstrap: Any) -> AdsSettings:
        dyn = bootstrap.dynamic_resources
        path = "dynamic_resources.ads_config"
        ads = dyn.ads_config
        if ads.api_type not in (GRPC, DELTA_GRPC):
            raise UnsupportedConfig(f"{path}.api_type: only GRPC and DELTA_GRPC are implemented")
        if len(ads.grpc_services) != 1 or not ads.grpc_services[0].HasField("envoy_grpc"):
            raise UnsupportedConfig(
                f"{path}.grpc_services: exactly one envoy_grpc service is implemented"
            )
        name = ads.grpc_services[0].envoy_grpc.cluster_name
        target = None
        for c in bootstrap.static_resources.clusters:
            if c.name != name:
                continue
            for e in c.load_assignment.endpoints:
                for lbe in e.lb_endpoints:
                    sa = lbe.endpoint.address.socket_address
                    if sa.address:
                        host = f"[{sa.address}]" if ":" in sa.address else sa.address
                        target = f"{host}:{sa.port_value}"
                        break
                if target:
                    break
        if target is None:
            raise UnsupportedConfig(
                f"{path}.grpc_services[0].envoy_grpc.cluster_name: static cluster {name!r} "
                "with an endpoint address is required"
            )
        for key in ("cds_config", "lds_config"):
            src = getattr(dyn, key)
            if dyn.HasField(key) and src.WhichOneof("config_source_specifier") != "ads":
                raise UnsupportedConfig(f"dynamic_resources.{key}: only `ads: {{}}` is implemented")
        from sofamesh import __version__

        node = type(bootstrap.node)()
        node.CopyFrom(bootstrap.node)
        # as Envoy, which always names itself (envoy, its build version) in the node it sends
        node.user_agent_name = "sofamesh"
        node.user_agent_version = __version__
        return cls(
            target=target,
            cluster=name,
            delta=ads.api_type == DELTA_GRPC,
            node=node,
            node_first_only=ads.set_node_on_first_message_only,
            cds=dyn.HasField("cds_config"),
            lds=dyn.HasField("lds_config"),
            cds_timeout=initial_fetch_timeout(dyn.cds_config),
            lds_timeout=initial_fetch_timeout(dyn.lds_config),
        )
