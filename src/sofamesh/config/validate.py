"""Checks a parsed Bootstrap as Envoy does at start-up, plus what sofamesh implements.

Three passes, every finding with its field path:
1. protoc-gen-validate constraints of Envoy's API (`pgv`): Envoy's own rejections.
2. References Envoy resolves at init: files (DataSource filenames, certs, Wasm code),
   config source paths, runtime directories, Lua modules required by inline code, and
   clusters named by static routes.
3. Support: each listener, network and HTTP filter must be registered in
   `sofamesh.filters.registry`; every other typed extension must be registered in
   `sofamesh.config.support`; core fields sofamesh lacks (`support.GAPS`) are refused.
   Istio's own filters (TypedStruct or istio protos) pass through and are reported.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message

from sofamesh.config import protos, support
from sofamesh.config.cluster_refs import _api_grpc_clusters, _cluster_refs, _pipe_only
from sofamesh.config.errors import ConfigError, Problem, join
from sofamesh.config.filter_kinds import NON_TERMINAL_NETWORK, TERMINAL, _ext_name
from sofamesh.config.lua_modules import missing_lua_modules
from sofamesh.config.pgv import validate_message
from sofamesh.config.re2 import re2_error

HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
# Messages naming an extension whose typed_config Envoy 1.40 requires.
_NAMED_EXTENSIONS = (
    "envoy.config.accesslog.v3.AccessLog",
    "envoy.config.trace.v3.Tracing.Http",
    "envoy.config.core.v3.TransportSocket",
)
_TLS_CONTEXTS = (
    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
    "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
)
_FILTER_KIND = {
    "envoy.config.listener.v3.ListenerFilter": "listener",
    "envoy.config.listener.v3.Filter": "network",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter": "http",
    "envoy.config.cluster.v3.Filter": "upstream",  # Cluster.filters
}


@dataclass
class Report:
    """A config that validated: what passes through untouched and what was warned about."""

    passthrough: list[tuple[str, str]] = field(default_factory=list)  # (path, filter name/type)
    warnings: list[str] = field(default_factory=list)


class _Checker:
    def __init__(self, base_dir: str) -> None:
        self.base_dir = base_dir
        self.problems: list[Problem] = []
        self.report = Report()
        self.static_clusters: set[str] = set()
        self.dynamic = False  # checking an xDS resource rather than a bootstrap
        self.has_ads = False  # the bootstrap has dynamic_resources.ads_config
        # static clusters the xDS gRPC client talks to (their HTTP/2 options are its own)
        self.grpc_cluster_paths: tuple[str, ...] = ()
        # where a pipe (Unix socket) address is implemented: static listeners, and the
        # endpoints of static clusters that only xDS/SDS gRPC streams dial (unix:<path>)
        self.pipe_paths: tuple[str, ...] = ()

    def unsupported(self, path: str, msg: str) -> None:
        self.problems.append(Problem(path, msg, "unsupported"))

    def reference(self, path: str, msg: str) -> None:
        self.problems.append(Problem(path, msg, "reference"))

    def _exists(self, p: str) -> bool:
        return os.path.exists(p if os.path.isabs(p) else os.path.join(self.base_dir, p))

    # -- the walk --------------------------------------------------------------------
    def walk(
        self, m: Message, path: str, support_on: bool, under: tuple[str, str] | None = None
    ) -> None:
        """`under`: the (parent message, field) m was reached through (its accepted fields
        may depend on it: support.IMPLEMENTED_UNDER)."""
        desc = m.DESCRIPTOR
        name = desc.full_name
        if name == "google.protobuf.Any":
            inner = protos.unpack_any(m)
            if inner is not None:
                if (
                    support_on
                    and m.type_url == support.UPSTREAM_HTTP_OPTIONS
                    and path.startswith(self.grpc_cluster_paths)
                    and support.grpc_http_options_ok(inner)
                ):
                    return  # the xDS gRPC client speaks HTTP/2 to its cluster anyway
                if support_on and not support.extension_supported(m.type_url):
                    self.unsupported(path, f"extension {m.type_url} is not implemented by sofamesh")
                    support_on = False
                self.walk(inner, path, support_on)
            return
        if name.startswith("google.protobuf."):
            return
        refused = self.check_fields(m, name, path, under) if support_on else ()
        self.check_message(m, name, path, support_on)
        kind = _FILTER_KIND.get(name)
        if kind is not None:
            support_on = self.check_filter(m, kind, path, support_on)
        outer = support_on
        for f, val in m.ListFields():
            if f.message_type is None:
                continue
            # below a refused field, only Envoy's own checks apply (one finding per field)
            support_on = (
                outer and f.name not in refused and (name, f.name) not in support.JUDGED_WHOLE
            )
            p = join(path, f.name)
            if f.message_type.GetOptions().map_entry:
                vt = f.message_type.fields_by_name["value"]
                if vt.message_type is None:
                    continue
                for k in val:
                    kp = f"{p}[{k!r}]"
                    if f.name == "typed_per_filter_config":
                        self.per_filter(k, val[k], kp, support_on)
                    else:
                        self.walk(val[k], kp, support_on)
            elif f.is_repeated:
                for i, v in enumerate(val):
                    self.walk(v, f"{p}[{i}]", support_on)
            elif kind is not None and f.name == "typed_config":
                self.walk_filter_config(val, p, support_on)
            else:
                self.walk(val, p, support_on, (name, f.name))

    def walk_filter_config(self, any_msg: Message, path: str, support_on: bool) -> None:
        # A filter's own config type is judged by the filter registry, not as an extension.
        inner = protos.unpack_any(any_msg)
        if inner is not None:
            self.walk(inner, path, support_on)

    def per_filter(self, key: str, any_msg: Message, path: str, support_on: bool) -> None:
        from sofamesh.filters import registry
        from sofamesh.filters.istio import istio_type

        istio = istio_type(any_msg)
        if istio is not None and registry.lookup("http", key) is None:
            self.report.passthrough.append((path, f"per-route config of {key} ({istio})"))
            return
        if support_on:
            url = any_msg.type_url
            if not (
                registry.lookup("http", key) is not None
                or registry.lookup("http", url) is not None
                or support.extension_supported(url)
                or any(
                    url in spec.extra.get("per_route_type_urls", ())
                    for spec in registry.registered("http")
                )
            ):
                self.unsupported(path, f"per-route config {url} is not implemented by sofamesh")
                support_on = False
        inner = protos.unpack_any(any_msg)
        if inner is not None:
            self.walk(inner, path, support_on)

    # -- filters ---------------------------------------------------------------------
    def check_filter(self, m: Message, kind: str, path: str, support_on: bool) -> bool:
        from sofamesh.filters import registry
        from sofamesh.filters.istio import implemented as istio_implemented
        from sofamesh.filters.istio import istio_type

        fname = m.name
        url = m.typed_config.type_url if m.HasField("typed_config") else ""
        istio = istio_type(m.typed_config) if url else None
        if istio is not None and kind != "upstream" and istio_implemented(kind, m.typed_config):
            return False  # implemented by sofamesh; its config has nothing to check
        if istio is not None and (kind == "upstream" or registry.lookup(kind, url) is None):
            # Istio's own filter, by its config type (filters/istio.py): a no-op, counted
            self.report.passthrough.append((path, f"{fname} ({istio})"))
            return False
        if kind == "upstream":  # a cluster's upstream network filters: Istio's only
            if support_on:
                self.unsupported(
                    join(path, "typed_config") if url else join(path, "name"),
                    f"upstream network filter {url or fname} is not implemented by sofamesh",
                )
            return False
        if url in support.TYPED_STRUCT_TYPES:
            inner = protos.unpack_any(m.typed_config)
            inner_url = inner.type_url if inner is not None else ""
            spec = registry.lookup(kind, inner_url) or registry.lookup(kind, fname)
            key = inner_url or url
        else:
            spec = registry.lookup(kind, url) if url else registry.lookup(kind, fname)
            key = url or fname
            if spec is None and not url and support.core_filter(kind, fname):
                return support_on
        if spec is None and support.core_filter(kind, key):
            return support_on
        if spec is None and getattr(m, "is_optional", False):
            # Envoy skips an optional filter it does not have; so does the Server.
            self.report.warnings.append(
                f"{path}: optional {kind} filter {key} is not implemented by sofamesh; skipped"
            )
            return False
        if spec is None:
            if support_on:
                self.unsupported(
                    join(path, "typed_config") if url else join(path, "name"),
                    f"{kind} filter {key} is not implemented by sofamesh",
                )
            return False
        if spec.passthrough:
            self.report.passthrough.append((path, fname or key))
        return support_on

    # -- per message type --------------------------------------------------------------
    def check_fields(
        self, m: Message, name: str, path: str, under: tuple[str, str] | None = None
    ) -> set[str]:
        """Refuses every set field of a field-by-field checked message type
        (`support.IMPLEMENTED`) that the proxy does not act on; returns their names."""
        allowed = support.allowed_fields(name, under)
        refused: set[str] = set()
        if allowed is None:
            return refused
        short = name.rsplit(".", 1)[-1]
        where = f" in {under[0].rsplit('.', 1)[-1]}.{under[1]}" if under else ""
        for fd, value in m.ListFields():
            if fd.name not in allowed:
                refused.add(fd.name)
                self.unsupported(
                    join(path, fd.name),
                    f"{short}.{fd.name} is not implemented by sofamesh"
                    + (where if under in support.IMPLEMENTED_UNDER else ""),
                )
                continue
            cond = support.ALLOWED_IF.get((name, fd.name))
            if self.dynamic and (name, fd.name) in support.STATIC_ONLY:
                cond = None
            if not self.dynamic and (name, fd.name) in support.DYNAMIC_ONLY:
                cond = None
            if cond is not None and not cond[0](value):
                refused.add(fd.name)
                shown = _show(fd, value)
                self.unsupported(
                    join(path, fd.name),
                    f"{short}.{fd.name} {shown} is not implemented by sofamesh: {cond[1]}",
                )
        return refused

    def check_max_requests(self, c: Message, path: str) -> None:
        """Envoy 1.40 refuses a cluster's max_requests_per_connection beside its
        HttpProtocolOptions' common_http_protocol_options.max_requests_per_connection."""
        for anycfg in c.typed_extension_protocol_options.values():  # type: ignore[attr-defined]
            if anycfg.type_url != support.UPSTREAM_HTTP_OPTIONS:
                continue
            opts = protos.unpack_any(anycfg)
            if opts is not None and opts.common_http_protocol_options.HasField(
                "max_requests_per_connection"
            ):
                self.reference(
                    join(path, "max_requests_per_connection"),
                    "Only one of max_requests_per_connection from Cluster or "
                    "HttpProtocolOptions can be specified",
                )

    def check_message(self, m: Message, name: str, path: str, support_on: bool) -> None:
        if support_on:
            for gap in support.gaps_for(name):
                fd = m.DESCRIPTOR.fields_by_name.get(gap.field)
                if fd is None:
                    continue
                if fd.is_repeated:
                    if len(getattr(m, gap.field)) == 0:
                        continue
                elif fd.has_presence and not m.HasField(gap.field):
                    continue
                v = getattr(m, gap.field)
                if gap.values:
                    ev = fd.enum_type.values_by_number.get(v) if fd.enum_type else None
                    vname = ev.name if ev is not None else v  # undefined: PGV reports it
                    if vname not in gap.values:
                        continue
                    self.unsupported(join(path, gap.field), f"{vname}: {gap.note}")
                elif fd.has_presence or fd.is_repeated or v:
                    self.unsupported(join(path, gap.field), gap.note)
        if name == HCM:
            seen_upgrades: set[str] = set()
            for i, u in enumerate(m.upgrade_configs):
                key = u.upgrade_type.lower()
                if key in seen_upgrades:
                    self.reference(
                        f"{path}.upgrade_configs[{i}]",
                        f"Error: multiple upgrade configs with the same name: '{u.upgrade_type}'",
                    )
                seen_upgrades.add(key)
        if name == "envoy.config.route.v3.RouteConfiguration":
            self.check_direct_bodies(m, path)
        if name == "envoy.config.cluster.v3.Cluster" and m.HasField("max_requests_per_connection"):
            self.check_max_requests(m, path)
        if name == "envoy.config.trace.v3.ZipkinConfig" and not (
            ("collector_service" in m.DESCRIPTOR.fields_by_name and m.HasField("collector_service"))
            or (m.collector_cluster and m.collector_endpoint)
        ):
            self.reference(
                path,
                "collector_cluster and collector_endpoint must be specified "
                "when not using collector_service",
            )
        if (
            name == "envoy.config.listener.v3.Listener"
            and len(m.filter_chains) > 1
            and not m.HasField("filter_chain_matcher")  # Envoy then ignores filter_chain_match
        ):
            seen_matchers: dict[bytes, int] = {}
            for i, ch in enumerate(m.filter_chains):
                key = ch.filter_chain_match.SerializeToString(deterministic=True)
                if key in seen_matchers:
                    sa = m.address.socket_address
                    self.reference(
                        f"{path}.filter_chains[{i}].filter_chain_match",
                        f"error adding listener '{sa.address}:{sa.port_value}': filter chain "
                        f"'{ch.name}' has the same matching rules defined as "
                        f"'{m.filter_chains[seen_matchers[key]].name}'",
                    )
                seen_matchers.setdefault(key, i)
        if (
            name == "envoy.config.core.v3.ApiConfigSource"
            and m.api_type in (2, 3, 5, 6)  # the gRPC types, plain and aggregated
            and not m.grpc_services
            and not m.cluster_names
        ):
            self.reference(
                path, "API configs must have either a gRPC service or a cluster name defined"
            )
        if name == "envoy.config.metrics.v3.StatsConfig":
            from sofamesh.admin.stats_config import StatsConfigError, StatsView

            try:
                StatsView(m)
            except (re.error, StatsConfigError) as e:
                self.reference(path, f"invalid stats_config: {e}")
        if (
            support_on
            and name == "envoy.config.core.v3.Address"
            and m.HasField("pipe")
            and not (self.pipe_paths and path.startswith(self.pipe_paths))
        ):
            self.unsupported(
                join(path, "pipe"),
                "unix domain socket (pipe) addresses are implemented for static listeners "
                "and clusters of pipes only (dialled by xDS/SDS gRPC streams): not "
                "implemented by sofamesh here",
            )
        if name == "envoy.config.bootstrap.v3.LayeredRuntime":
            seen_layers: set[str] = set()
            for i, layer in enumerate(m.layers):
                if layer.name in seen_layers:
                    self.reference(
                        f"{path}.layers[{i}].name", f"Duplicate layer name: {layer.name}"
                    )
                seen_layers.add(layer.name)
        if support_on and name == HCM and not m.http_filters:
            # what the Server (filters/network/http_connection_manager.py) cannot run yet
            self.unsupported(
                join(path, "http_filters"),
                "an HTTP filter chain without envoy.filters.http.router: "
                "not implemented by sofamesh",
            )
        if name in _TLS_CONTEXTS:
            self.check_tls(m, name, path)
        if (name in _FILTER_KIND or name in _NAMED_EXTENSIONS) and not (
            m.HasField("typed_config")
            or (
                "config_discovery" in m.DESCRIPTOR.fields_by_name and m.HasField("config_discovery")
            )
        ):
            self.reference(
                path, f"Didn't find a registered implementation for '{m.name}' with type URL: ''"
            )
        if (  # xDS channels are made at start-up from static clusters
            name == "envoy.config.core.v3.GrpcService.EnvoyGrpc"
            and path.startswith("dynamic_resources")
            and m.cluster_name not in self.static_clusters
        ):
            self.reference(
                join(path, "cluster_name"), f"Unknown gRPC client cluster '{m.cluster_name}'"
            )
        if (
            name.startswith("envoy.config.trace.")
            and "collector_cluster" in (m.DESCRIPTOR.fields_by_name)
            and m.collector_cluster
            and m.collector_cluster not in self.static_clusters
        ):
            self.reference(
                join(path, "collector_cluster"), f"tracer: unknown cluster '{m.collector_cluster}'"
            )
        if name == "envoy.type.matcher.v3.RegexMatcher":
            err = re2_error(m.regex)
            if err:
                self.reference(join(path, "regex"), err)
        elif name == "envoy.config.route.v3.WeightedCluster":
            total = sum(c.weight.value for c in m.clusters)
            if m.clusters and total == 0:
                self.reference(
                    path, "Sum of weights in the weighted_cluster must be greater than 0."
                )
        elif name == "envoy.config.listener.v3.Listener" and (
            m.HasField("address")
            and not m.filter_chains
            and not m.HasField("default_filter_chain")
            and not m.HasField("api_listener")
            and m.address.socket_address.protocol != 1  # UDP: listener filters only
            and not m.HasField("udp_listener_config")
        ):
            sa = m.address.socket_address
            self.reference(
                join(path, "filter_chains"),
                f"error adding listener '{sa.address}:{sa.port_value}': no filter chains specified",
            )
        if name == "envoy.config.core.v3.DataSource":
            if m.WhichOneof("specifier") == "filename" and not self._exists(m.filename):
                self.reference(join(path, "filename"), f"Invalid path: {m.filename}")
        elif name == "envoy.config.core.v3.ConfigSource":
            if support_on and m.HasField("ads") and not (self.has_ads or self.dynamic):
                # Envoy starts and skips what uses it, with a warning; sofamesh refuses it
                self.unsupported(
                    join(path, "ads"),
                    "ADS must be configured to support an ADS config source "
                    "(dynamic_resources.ads_config)",
                )
            p = None
            if m.HasField("path_config_source"):
                p = m.path_config_source.path
            elif m.WhichOneof("config_source_specifier") == "path":
                p = m.path
            if p is not None and not self._exists(p):
                self.reference(
                    path,
                    f"paths must refer to an existing path in the system: '{p}' does not exist",
                )
        elif name == "envoy.config.bootstrap.v3.RuntimeLayer.DiskLayer":
            root = m.symlink_root
            parent = os.path.dirname(root.rstrip("/")) or "."
            if root and not self._exists(parent):
                self.reference(
                    join(path, "symlink_root"),
                    f"unable to add filesystem watch for file {root}: No such file or directory",
                )
        elif name in (
            "envoy.extensions.filters.http.lua.v3.Lua",
            "envoy.extensions.filters.http.lua.v3.LuaPerRoute",
            "envoy.extensions.router.cluster_specifiers.lua.v3.LuaConfig",
        ):
            self.check_lua(m, path)

    def _data(self, ds: Message) -> bytes | None:
        """A DataSource's bytes (None when its file is missing: reported elsewhere)."""
        which = ds.WhichOneof("specifier")
        if which == "inline_string":
            return ds.inline_string.encode()
        if which == "inline_bytes":
            return bytes(ds.inline_bytes)
        if which == "filename":
            p = (
                ds.filename
                if os.path.isabs(ds.filename)
                else os.path.join(self.base_dir, ds.filename)
            )
            try:
                with open(p, "rb") as f:
                    return f.read()
            except OSError:
                return None
        return None

    def check_tls(self, m: Message, name: str, path: str) -> None:
        """What Envoy checks when it builds a TLS context: the PEM it can read, and that a
        server context has a certificate."""
        ctx = m.common_tls_context
        cpath = join(path, "common_tls_context")
        for i, cert in enumerate(ctx.tls_certificates):
            if cert.HasField("certificate_chain") and not cert.HasField("private_key"):
                self.reference(
                    f"{cpath}.tls_certificates[{i}]",
                    "Failed to load incomplete private key from path: ",
                )
            if cert.HasField("private_key") and not cert.HasField("certificate_chain"):
                self.reference(
                    f"{cpath}.tls_certificates[{i}]",
                    "Failed to load incomplete certificate from : certificate chain not set",
                )
            for field_name, marker, what in (
                ("certificate_chain", b"-----BEGIN CERTIFICATE-----", "certificate chain"),
                ("private_key", b"PRIVATE KEY-----", "private key"),
            ):
                if not cert.HasField(field_name):
                    continue
                ds = getattr(cert, field_name)
                data = self._data(ds)
                if data is not None and marker not in data:
                    where = ds.filename if ds.WhichOneof("specifier") == "filename" else "<inline>"
                    self.reference(
                        f"{cpath}.tls_certificates[{i}].{field_name}",
                        f"Failed to load {what} from {where}",
                    )
        providers = (
            "tls_certificate_provider_instance",
            "custom_tls_certificate_selector",
            "tls_certificate_certificate_provider",
            "tls_certificate_certificate_provider_instance",
        )
        if (
            name.endswith("DownstreamTlsContext")
            and not ctx.tls_certificates
            and not ctx.tls_certificate_sds_secret_configs
            and not any(p in ctx.DESCRIPTOR.fields_by_name and ctx.HasField(p) for p in providers)
        ):
            self.reference(cpath, "No TLS certificates found for server context")

    def check_lua(self, m: Message, path: str) -> None:
        sources: list[tuple[str, Message]] = []
        for fname in ("default_source_code", "source_code"):
            fd = m.DESCRIPTOR.fields_by_name.get(fname)
            if fd is not None and m.HasField(fname):
                sources.append((join(path, fname), getattr(m, fname)))
        codes: list[tuple[str, str]] = []
        if "inline_code" in m.DESCRIPTOR.fields_by_name and m.inline_code:
            codes.append((join(path, "inline_code"), m.inline_code))
        if "source_codes" in m.DESCRIPTOR.fields_by_name:
            for k in m.source_codes:
                sources.append((f"{path}.source_codes[{k!r}]", m.source_codes[k]))
        for p, ds in sources:
            if ds.WhichOneof("specifier") in ("inline_string", "inline_bytes"):
                text = ds.inline_string or ds.inline_bytes.decode("utf-8", "replace")
                codes.append((p, text))
        for p, code in codes:
            for mod in missing_lua_modules(code, self._exists):
                self.reference(p, f"script load error: module '{mod}' not found")

    # -- cross references ------------------------------------------------------------
    def check_route_clusters(self, bootstrap: Message) -> None:
        static = {c.name for c in bootstrap.static_resources.clusters}
        for li, lst in enumerate(bootstrap.static_resources.listeners):
            for ci, chain in enumerate(self._chains(lst)):
                self.check_terminal(
                    list(chain.filters),
                    "network",
                    f"static_resources.listeners[{li}].filter_chains[{ci}].filters",
                )
                for fi, flt in enumerate(chain.filters):
                    if flt.typed_config.type_url.rsplit("/", 1)[-1] != HCM:
                        continue
                    hcm = protos.unpack_any(flt.typed_config)
                    if hcm is None:
                        continue
                    hbase = (
                        f"static_resources.listeners[{li}].filter_chains[{ci}]"
                        f".filters[{fi}].typed_config"
                    )
                    self.check_terminal(list(hcm.http_filters), "http", f"{hbase}.http_filters")
                    if not hcm.HasField("route_config"):
                        continue
                    rc = hcm.route_config
                    self.check_domains(rc, f"{hbase}.route_config")
                    if rc.HasField("validate_clusters") and not rc.validate_clusters.value:
                        continue
                    base = (
                        f"static_resources.listeners[{li}]."
                        f"{f'filter_chains[{ci}]' if ci >= 0 else 'default_filter_chain'}"
                        f".filters[{fi}].typed_config.route_config"
                    )
                    for vi, vh in enumerate(rc.virtual_hosts):
                        for ri, r in enumerate(vh.routes):
                            if not r.HasField("route"):
                                continue
                            rp = f"{base}.virtual_hosts[{vi}].routes[{ri}].route"
                            a = r.route
                            spec = a.WhichOneof("cluster_specifier")
                            if spec == "cluster" and a.cluster not in static:
                                self.reference(
                                    join(rp, "cluster"), f"route: unknown cluster '{a.cluster}'"
                                )
                            elif spec == "weighted_clusters":
                                for wi, wc in enumerate(a.weighted_clusters.clusters):
                                    if wc.name and wc.name not in static:
                                        self.reference(
                                            f"{rp}.weighted_clusters.clusters[{wi}].name",
                                            f"route: unknown weighted cluster '{wc.name}'",
                                        )
                            for mi, mp in enumerate(a.request_mirror_policies):
                                if mp.cluster and mp.cluster not in static:
                                    self.reference(
                                        f"{rp}.request_mirror_policies[{mi}].cluster",
                                        f"route: unknown cluster '{mp.cluster}'",
                                    )

    def check_direct_bodies(self, rc: Message, path: str) -> None:
        """Envoy's limit on direct response bodies: max_direct_response_body_size_bytes,
        4096 when unset; a larger inline or file body is a config error."""
        limit = (
            rc.max_direct_response_body_size_bytes.value
            if rc.HasField("max_direct_response_body_size_bytes")
            else 4096
        )
        for vi, vh in enumerate(rc.virtual_hosts):
            for ri, r in enumerate(vh.routes):
                if r.WhichOneof("action") != "direct_response":
                    continue
                body = r.direct_response.body
                kind = body.WhichOneof("specifier")
                if kind in ("inline_string", "inline_bytes"):
                    size = len(getattr(body, kind))
                elif kind == "filename" and self._exists(body.filename):
                    fn = body.filename
                    size = os.path.getsize(
                        fn if os.path.isabs(fn) else os.path.join(self.base_dir, fn)
                    )
                else:
                    continue
                if size > limit:
                    self.reference(
                        f"{path}.virtual_hosts[{vi}].routes[{ri}].direct_response.body",
                        f"response body size is {size} bytes; maximum is {limit}",
                    )

    def check_terminal(self, filters: list, chain: str, path: str) -> None:
        """Envoy's rule: a terminal filter (router, http_connection_manager, tcp_proxy, ...)
        ends its chain, and a chain does not end with a known non-terminal filter."""
        n = len(filters)
        for i, f in enumerate(filters):
            ext = _ext_name(f)
            if ext in TERMINAL[chain] and i != n - 1:
                self.reference(
                    f"{path}[{i}]",
                    f"Error: terminal filter named {f.name} of type {ext} must be the last "
                    f"filter in a {chain} filter chain.",
                )
        if n:
            last = filters[-1]
            ext = _ext_name(last)
            known_non_terminal = (
                ext not in TERMINAL[chain] if chain == "http" else ext in NON_TERMINAL_NETWORK
            )
            if ext and known_non_terminal and not getattr(last, "is_optional", False):
                self.reference(
                    f"{path}[{n - 1}]",
                    f"Error: non-terminal filter named {last.name} of type {ext} is the last "
                    f"filter in a {chain} filter chain.",
                )

    def check_domains(self, rc: Message, path: str) -> None:
        seen: set[str] = set()
        for vi, vh in enumerate(rc.virtual_hosts):
            for di, d in enumerate(vh.domains):
                if d in seen:
                    self.reference(
                        f"{path}.virtual_hosts[{vi}].domains[{di}]",
                        "Only unique values for domains are permitted. Duplicate entry of "
                        f"domain {d} in route {rc.name}",
                    )
                seen.add(d)

    @staticmethod
    def _chains(lst: Message) -> list[Message]:
        chains = list(lst.filter_chains)
        return chains

    def check_names(self, bootstrap: Message) -> None:
        seen: dict[str, int] = {}
        for i, c in enumerate(bootstrap.static_resources.clusters):
            if c.name in seen:
                self.reference(
                    f"static_resources.clusters[{i}].name",
                    f"cluster manager: duplicate cluster '{c.name}'",
                )
            seen[c.name] = i
        local = bootstrap.cluster_manager.local_cluster_name  # zone-aware routing
        if local and local not in seen:
            self.reference(
                "cluster_manager.local_cluster_name", f"local cluster '{local}' must be defined"
            )
        for i, c in enumerate(bootstrap.static_resources.clusters):
            if c.WhichOneof("cluster_discovery_type") in ("type", None) and c.type == 0:  # STATIC
                for ei, e in enumerate(c.load_assignment.endpoints):
                    for hi, lbe in enumerate(e.lb_endpoints):
                        sa = lbe.endpoint.address.socket_address
                        if lbe.endpoint.address.WhichOneof("address") not in (
                            "socket_address",
                            None,
                        ):
                            continue  # pipe / internal: refused elsewhere if unsupported
                        if not sa.resolver_name and not _is_ip(sa.address):
                            self.reference(
                                f"static_resources.clusters[{i}].load_assignment.endpoints[{ei}]"
                                f".lb_endpoints[{hi}].endpoint.address.socket_address.address",
                                f"malformed IP address: {sa.address}. Consider setting "
                                "resolver_name or setting cluster type to 'STRICT_DNS' or "
                                "'LOGICAL_DNS'",
                            )
        bound = [("admin.address", bootstrap.admin.address)] if bootstrap.HasField("admin") else []
        bound += [
            (f"static_resources.listeners[{i}].address", lst.address)
            for i, lst in enumerate(bootstrap.static_resources.listeners)
        ]
        for p, addr in bound:
            sa = addr.socket_address
            if (
                addr.HasField("socket_address")
                and sa.address
                and not sa.resolver_name
                and not _is_ip(sa.address)
            ):
                self.reference(f"{p}.socket_address.address", f"malformed IP address: {sa.address}")
        dyn = bootstrap.dynamic_resources
        if (
            bootstrap.HasField("dynamic_resources")
            and dyn.HasField("ads_config")
            and not (bootstrap.node.id and bootstrap.node.cluster)
        ):
            self.reference(
                "node",
                "ads: node 'id' and 'cluster' are required. Set it either in "
                "'node' config or via --service-node and --service-cluster options.",
            )
        addrs: dict[tuple[str, int, int], str] = {}
        same = _identical_repeats(bootstrap.static_resources.listeners)
        for i, lst in enumerate(bootstrap.static_resources.listeners):
            if i in same:
                continue  # Envoy ignores a listener added twice with the same config
            sa = lst.address.socket_address
            if lst.address.HasField("socket_address") and sa.port_value:
                key = (sa.address, sa.port_value, sa.protocol)
                if key in addrs:
                    self.reference(
                        f"static_resources.listeners[{i}].address",
                        f"error adding listener: '{lst.name}' has duplicate address "
                        f"'{sa.address}:{sa.port_value}' as existing listener",
                    )
                addrs[key] = lst.name
        lseen: set[str] = set()
        for i, lst in enumerate(bootstrap.static_resources.listeners):
            if i in same:
                continue
            if lst.name and lst.name in lseen:
                self.reference(
                    f"static_resources.listeners[{i}].name",
                    f"error adding listener named '{lst.name}': "
                    "listener with same name already exists",
                )
            lseen.add(lst.name)
            if not (
                lst.HasField("address")
                or lst.HasField("api_listener")
                or lst.HasField("internal_listener")
            ):
                self.reference(
                    f"static_resources.listeners[{i}].address",
                    f"error adding listener named '{lst.name}': address is necessary",
                )


def _show(fd: Any, value: Any) -> str:
    if fd.enum_type is not None:
        ev = fd.enum_type.values_by_number.get(value)
        return ev.name if ev is not None else str(value)
    if fd.message_type is not None and fd.message_type.full_name == "google.protobuf.Duration":
        return f"{value.seconds + value.nanos / 1e9:g}s"
    return str(getattr(value, "value", value)).lower() if fd.message_type else str(value)


def _identical_repeats(items: Any) -> set[int]:
    """Indexes of named items that repeat an earlier item exactly."""
    seen: set[bytes] = set()
    out = set()
    for i, it in enumerate(items):
        key = it.SerializeToString(deterministic=True)
        if key in seen and it.name:  # unnamed ones get distinct generated names
            out.add(i)
        seen.add(key)
    return out


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def validate_bootstrap(bootstrap: Message, *, base_dir: str | None = None) -> Report:
    """Validates a Bootstrap; returns a Report or raises ConfigError listing every problem
    (Envoy's rejections first, then what sofamesh does not implement)."""
    checker = _Checker(base_dir or os.getcwd())
    checker.static_clusters = {c.name for c in bootstrap.static_resources.clusters}
    dyn = bootstrap.dynamic_resources
    checker.has_ads = bootstrap.HasField("dynamic_resources") and dyn.HasField("ads_config")
    grpc_clusters = {g.envoy_grpc.cluster_name for g in dyn.ads_config.grpc_services}
    checker.grpc_cluster_paths = tuple(
        f"static_resources.clusters[{i}].typed_extension_protocol_options"
        for i, c in enumerate(bootstrap.static_resources.clusters)
        if c.name in grpc_clusters
    )
    api_clusters = _api_grpc_clusters(bootstrap)
    pipe_only = {c.name for c in bootstrap.static_resources.clusters if _pipe_only(c)}
    checker.pipe_paths = tuple(
        f"static_resources.listeners[{i}].address"
        for i in range(len(bootstrap.static_resources.listeners))
    ) + tuple(
        f"static_resources.clusters[{i}]."
        for i, c in enumerate(bootstrap.static_resources.clusters)
        if c.name in api_clusters or c.name in pipe_only
    )
    for path, name in _cluster_refs(bootstrap.static_resources, "static_resources"):
        if name in pipe_only:  # the HTTP and TCP pools dial host:port only
            checker.unsupported(
                path,
                f"traffic to cluster '{name}', whose endpoints are pipes (Unix sockets), is "
                "not implemented by sofamesh (only xDS/SDS gRPC streams dial them)",
            )
    problems = validate_message(bootstrap)
    checker.walk(bootstrap, "", True)
    checker.check_route_clusters(bootstrap)
    checker.check_names(bootstrap)
    if bootstrap.stats_sinks:
        from sofamesh.proxy.metrics_sink import check_config as check_sinks

        for p, msg in check_sinks(bootstrap):
            checker.unsupported(p, msg)
    for i, layer in enumerate(bootstrap.layered_runtime.layers):
        if layer.HasField("static_layer") and layer.static_layer.fields:
            keys = ", ".join(sorted(layer.static_layer.fields))
            checker.report.warnings.append(
                f"layered_runtime.layers[{i}].static_layer: runtime values are served by "
                f"/runtime but sofamesh acts on none of them ({keys})"
            )
    problems += checker.problems
    if problems:
        order = {"parse": 0, "unknown_type": 0, "constraint": 1, "reference": 2, "unsupported": 3}
        problems.sort(key=lambda p: order.get(p.kind, 4))
        raise ConfigError(problems)
    return checker.report


def check(bootstrap: Message, **kw: Any) -> list[Problem]:
    """Every problem with a Bootstrap, as a list (empty when valid)."""
    try:
        validate_bootstrap(bootstrap, **kw)
    except ConfigError as e:
        return e.problems
    return []


_RESOURCE_TYPES = {
    "envoy.config.cluster.v3.Cluster",
    "envoy.config.endpoint.v3.ClusterLoadAssignment",
    "envoy.config.listener.v3.Listener",
    "envoy.config.route.v3.RouteConfiguration",
    "envoy.extensions.transport_sockets.tls.v3.Secret",  # SDS (proxy/sds.py)
}


def validate_resource(resource: Message, *, path: str = "") -> list[Problem]:
    """Every problem with one xDS resource (Cluster, ClusterLoadAssignment, Listener,
    RouteConfiguration), with field paths relative to it: Envoy's constraints, then what
    sofamesh does not implement, as for a bootstrap. The xDS client NACKs with these."""
    name = resource.DESCRIPTOR.full_name
    if name not in _RESOURCE_TYPES:
        raise ValueError(f"not an xDS resource type: {name}")
    checker = _Checker(os.getcwd())
    checker.dynamic = True
    problems = validate_message(resource, path)
    checker.walk(resource, path, True)
    if name == "envoy.config.route.v3.RouteConfiguration":
        checker.check_domains(resource, path)
    elif name == "envoy.config.listener.v3.Listener":
        for ci, chain in enumerate(resource.filter_chains):
            fpath = join(path, f"filter_chains[{ci}].filters")
            checker.check_terminal(list(chain.filters), "network", fpath)
            for fi, flt in enumerate(chain.filters):
                if flt.typed_config.type_url.rsplit("/", 1)[-1] != HCM:
                    continue
                hcm = protos.unpack_any(flt.typed_config)
                if hcm is None:
                    continue
                hpath = f"{fpath}[{fi}].typed_config"
                checker.check_terminal(list(hcm.http_filters), "http", f"{hpath}.http_filters")
                if hcm.HasField("route_config"):
                    checker.check_domains(hcm.route_config, f"{hpath}.route_config")
    problems += checker.problems
    order = {"parse": 0, "unknown_type": 0, "constraint": 1, "reference": 2, "unsupported": 3}
    problems.sort(key=lambda p: order.get(p.kind, 4))
    _warn_passthrough(resource, checker.report.passthrough)
    return problems


_WARNED: set[tuple[str, str, str]] = set()


def _warn_passthrough(resource: Message, found: list[tuple[str, str]]) -> None:
    """Istio's filters in an xDS resource: a warning naming each, once per resource and
    filter (istiod resends resources often), as the bootstrap's are warned about at start."""
    if not found:
        return
    import logging

    name = getattr(resource, "name", "") or getattr(resource, "cluster_name", "")
    for path, what in found:
        key = (name, path, what)
        if key in _WARNED or len(_WARNED) >= 65536:
            continue
        _WARNED.add(key)
        logging.getLogger("sofamesh.config").warning(
            "%s %s: %s: filter %s is passed through (not implemented by sofamesh)",
            resource.DESCRIPTOR.name,
            name,
            path,
            what,
        )
