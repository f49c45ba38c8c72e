"""What a bootstrap's `dynamic_resources` asks of the xDS client, read once at start-up, and
where each subscription's config comes from (its ConfigSource).

Only what config validation lets through reaches here (config/support.py). A ConfigSource
(`cds_config`, `lds_config`, an EDS cluster's `eds_config`, an HCM's `rds.config_source`)
is one of:

    ads: {}                      the one ADS stream of `ads_config` (GRPC or DELTA_GRPC)
    api_config_source            a stream of its own per resource type (Envoy's
      (GRPC, DELTA_GRPC,           ClusterDiscoveryService/StreamClusters, DeltaClusters,
       one envoy_grpc cluster)     ...), to the static cluster's first endpoint
    path_config_source / path    a file holding a DiscoveryResponse, read again when a file
      (watched_directory)          is moved onto the path (or into the watched directory)

Each source is named by a key (`SourceSpec.key`), a string that describes it whole, so the
pool's main process can open a source a worker found in a CDS or LDS resource.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sofamesh.proxy.errors import UnsupportedConfig

# Envoy's default initial_fetch_timeout for every subscription (config_source.proto)
DEFAULT_INITIAL_FETCH_TIMEOUT = 15.0
GRPC, DELTA_GRPC = 2, 3  # envoy.config.core.v3.ApiConfigSource.ApiType
ADS_KEY = "ads"


def _seconds(d: Any) -> float:
    return d.seconds + d.nanos / 1e9


def initial_fetch_timeout(source: Any) -> float:
    """A ConfigSource's initial_fetch_timeout in seconds; 0 means wait for ever."""
    if source.HasField("initial_fetch_timeout"):
        return _seconds(source.initial_fetch_timeout)
    return DEFAULT_INITIAL_FETCH_TIMEOUT


@dataclass(frozen=True)
class SourceSpec:
    """One config source: `kind` "ads", "grpc" (a non-aggregated stream) or "path"."""

    kind: str
    target: str = ""  # grpc target host:port (ads, grpc)
    cluster: str = ""  # the static cluster it came from (ads, grpc)
    delta: bool = False
    node_first_only: bool = False
    path: str = ""  # path: the file
    watched_dir: str = ""  # path: a move into this directory reloads the file
    authority: str = ""  # grpc: envoy_grpc.authority, the stream's :authority when set

    @property
    def key(self) -> str:
        if self.kind == "ads":
            return ADS_KEY
        if self.kind == "grpc":
            return json.dumps(["grpc", self.cluster, self.target, self.delta, self.node_first_only])
        return json.dumps(["path", self.path, self.watched_dir])

    @classmethod
    def from_key(cls, key: str) -> SourceSpec:
        v = json.loads(key)
        if v[0] == "grpc":
            return cls("grpc", target=v[2], cluster=v[1], delta=v[3], node_first_only=v[4])
        return cls("path", path=v[1], watched_dir=v[2])


_TARGETS: list = [None, {}]  # the last bootstrap asked about, and its answer


def static_targets(bootstrap: Any) -> dict[str, str]:
    """Static cluster name -> gRPC target of its first endpoint with an address (a pipe is
    `unix:<path>`, or `unix-abstract:<name>` for `@name`: Istio's xds-grpc cluster is the
    pilot-agent's Unix socket).

    PERF(benchmarks/xds_scale.py): asked once per EDS cluster built; walking the bootstrap's
    static clusters each time was 80 ms of a 10k-service start. A bootstrap is not changed
    once loaded, so the answer for the last one asked about is kept."""
    if _TARGETS[0] is bootstrap:
        return _TARGETS[1]
    out: dict[str, str] = {}
    for c in bootstrap.static_resources.clusters:
        for e in c.load_assignment.endpoints:
            for lbe in e.lb_endpoints:
                addr = lbe.endpoint.address
                if addr.HasField("pipe") and c.name not in out:
                    p = addr.pipe.path
                    out[c.name] = f"unix-abstract:{p[1:]}" if p.startswith("@") else f"unix:{p}"
                    continue
                sa = lbe.endpoint.address.socket_address
                if sa.address and c.name not in out:
                    host = f"[{sa.address}]" if ":" in sa.address else sa.address
                    out[c.name] = f"{host}:{sa.port_value}"
    _TARGETS[0], _TARGETS[1] = bootstrap, out
    return out


def _grpc_spec(api: Any, path: str, targets: dict[str, str], kind: str) -> SourceSpec:
    if api.api_type not in (GRPC, DELTA_GRPC):
        raise UnsupportedConfig(f"{path}.api_type: only GRPC and DELTA_GRPC are implemented")
    if len(api.grpc_services) != 1 or not api.grpc_services[0].HasField("envoy_grpc"):
        raise UnsupportedConfig(
            f"{path}.grpc_services: exactly one envoy_grpc service is implemented"
        )
    name = api.grpc_services[0].envoy_grpc.cluster_name
    target = targets.get(name)
    if target is None:
        raise UnsupportedConfig(
            f"{path}.grpc_services[0].envoy_grpc.cluster_name: static cluster {name!r} "
            "with an endpoint address is required"
        )
    return SourceSpec(
        kind,
        target=target,
        cluster=name,
        delta=api.api_type == DELTA_GRPC,
        node_first_only=api.set_node_on_first_message_only,
        authority=api.grpc_services[0].envoy_grpc.authority,
    )


def source_spec(src: Any, path: str, targets: dict[str, str]) -> SourceSpec:
    """The SourceSpec of ConfigSource `src` (at config path `path`), else UnsupportedConfig
    naming the field."""
    which = src.WhichOneof("config_source_specifier")
    if which == "ads":
        return SourceSpec("ads")
    if which == "api_config_source":
        return _grpc_spec(src.api_config_source, f"{path}.api_config_source", targets, "grpc")
    if which == "path_config_source":
        pcs = src.path_config_source
        wd = pcs.watched_directory.path if pcs.HasField("watched_directory") else ""
        return SourceSpec("path", path=pcs.path, watched_dir=wd)
    if which == "path":
        return SourceSpec("path", path=src.path)
    raise UnsupportedConfig(
        f"{path}: only `ads`, `api_config_source` (GRPC, DELTA_GRPC) and "
        "`path_config_source` are implemented"
    )


@dataclass
class AdsSettings:
    ads: SourceSpec | None  # ads_config, when the bootstrap has one
    node: Any  # envoy.config.core.v3.Node, sent as given plus the user agent (as Envoy)
    cds: str | None  # cds_config's source key: subscribe to clusters
    lds: str | None  # lds_config's source key: subscribe to listeners
    cds_timeout: float  # seconds, 0 = none
    lds_timeout: float
    targets: dict[str, str]  # static cluster -> gRPC target (api_config_source)
    bootstrap: Any = None  # for the gRPC clusters' TLS (channel_tls)

    def channel_tls(self, cluster: str) -> tuple | None:
        """(CA, key, chain, SNI) when static cluster `cluster` talks TLS (proxy/tls.py)."""
        if self.bootstrap is None:
            return None
        from sofamesh.proxy.tls import grpc_channel_tls

        return grpc_channel_tls(self.bootstrap, cluster)

    @property
    def target(self) -> str:  # for log lines: the ADS server, else the first gRPC source
        return self.ads.target if self.ads is not None else ""

    def spec(self, key: str) -> SourceSpec | None:
        """The source of `key`; None for `ads` when the bootstrap has no ads_config."""
        if key == ADS_KEY:
            return self.ads
        return SourceSpec.from_key(key)

    def key_of(self, src: Any, path: str) -> str:
        """The source key of ConfigSource `src`, checked (UnsupportedConfig names the field)."""
        spec = source_spec(src, path, self.targets)
        if spec.kind == "ads" and self.ads is None:
            raise UnsupportedConfig(
                f"{path}.ads: ADS must be configured to support an ADS config source "
                "(dynamic_resources.ads_config)"
            )
        return spec.key

    @classmethod
    def from_bootstrap(cls, bootstrap: Any) -> AdsSettings:
        dyn = bootstrap.dynamic_resources
        targets = static_targets(bootstrap)
        ads = None
        if dyn.HasField("ads_config"):
            ads = _grpc_spec(dyn.ads_config, "dynamic_resources.ads_config", targets, "ads")
        from sofamesh import __version__

        node = type(bootstrap.node)()
        node.CopyFrom(bootstrap.node)
        # as Envoy, which always names itself (envoy, its build version) in the node it sends
        node.user_agent_name = "sofamesh"
        node.user_agent_version = __version__
        st = cls(
            ads=ads,
            node=node,
            cds=None,
            lds=None,
            cds_timeout=initial_fetch_timeout(dyn.cds_config),
            lds_timeout=initial_fetch_timeout(dyn.lds_config),
            targets=targets,
            bootstrap=bootstrap,
        )
        if ads is not None:
            st.channel_tls(ads.cluster)  # unusable TLS on the ADS cluster: refused at start
        if dyn.HasField("cds_config"):
            st.cds = st.key_of(dyn.cds_config, "dynamic_resources.cds_config")
        if dyn.HasField("lds_config"):
            st.lds = st.key_of(dyn.lds_config, "dynamic_resources.lds_config")
        return st
