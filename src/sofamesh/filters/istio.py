"""Istio's own filters, recognised by their config type and passed through as a no-op.

Istio sends filters that only Istio's Envoy build has (istio/proxy): `istio.stats`,
`istio.metadata_exchange`, `istio.alpn`, `istio_authn`, `waypoint_*_peer_metadata`,
`connect_authority`, `set_dst_address`, ... Their configs arrive as istio protos that
xds-protos lacks (the config loader turns those into TypedStruct), as TypedStructs naming an
istio type, or, for Istio <= 1.18, as a Wasm filter on the null VM naming an Istio plugin
(`envoy.wasm.metadata_exchange`). What makes a filter Istio's is that config type, never its
name alone: Istio names its filters freely.

sofamesh implements `istio_authn` (network: the peer's SPIFFE identity as the filter state
`io.istio.peer_principal` that istiod's RBAC principals match; filters/network/
set_filter_state.py). It does not implement the others' effect (peer metadata headers,
Istio's standard metrics): the Server skips them in any chain (network, HTTP, listener, a cluster's upstream filters,
per-route configs), `--mode validate` and start-up log a warning naming each one, and the
gauge `server.passthrough_filters` counts them. They never fail a chain.
"""

from __future__ import annotations

from typing import Any

from sofamesh.filters.registry import FilterSpec, register

# Type-URL namespaces of Istio's own extension protos (istio/proxy, istio/api).
ISTIO_TYPE_PREFIXES = ("istio.", "io.istio.", "stats.", "envoy.tcp.metadataexchange.")
TYPED_STRUCTS = (
    "type.googleapis.com/xds.type.v3.TypedStruct",
    "type.googleapis.com/udpa.type.v1.TypedStruct",
)
WASM = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
NETWORK_WASM = "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm"
NULL_VM = "envoy.wasm.runtime.null"
# Istio's plugins compiled into its Envoy for the null VM (Istio <= 1.18).
NULL_VM_PLUGINS = ("envoy.wasm.metadata_exchange", "envoy.wasm.stats", "envoy.wasm.attributegen")


def _type_name(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def istio_type(typed_config: Any) -> str | None:
    """The Istio extension a typed_config (google.protobuf.Any) carries, or None: an istio
    proto, a TypedStruct naming one, or a Wasm filter running an Istio null-VM plugin."""
    url = typed_config.type_url
    if url in TYPED_STRUCTS:
        from xds.type.v3 import typed_struct_pb2

        ts = typed_struct_pb2.TypedStruct()  # udpa's has the same fields and numbers
        ts.ParseFromString(typed_config.value)
        url = ts.type_url
    name = _type_name(url)
    if name.startswith(ISTIO_TYPE_PREFIXES):
        return name
    if url in (WASM, NETWORK_WASM):
        from envoy.extensions.filters.http.wasm.v3 import wasm_pb2

        w = wasm_pb2.Wasm()  # the network Wasm message has the same `config` field
        try:
            w.ParseFromString(typed_config.value)
        except Exception:  # noqa: BLE001 - not a Wasm config after all: not Istio's
            return None
        vm = w.config.vm_config
        code = vm.code.local.inline_string
        if vm.runtime == NULL_VM and code in NULL_VM_PLUGINS:
            return f"{code} (Wasm null VM)"
    return None


def _none(typed_config: Any, context: Any) -> None:
    return None


def implemented(kind: str, typed_config: Any) -> FilterSpec | None:
    """The spec of an Istio filter sofamesh implements (by kind and Istio config type)."""
    name = istio_type(typed_config)
    if kind == "network" and name == "io.istio.network.authn.Config":
        from sofamesh.filters.network.set_filter_state import ISTIO_AUTHN_SPEC

        return ISTIO_AUTHN_SPEC
    return None


# Specs for the registry's fallback (registry.lookup_filter): any kind, no names.
SPECS = {
    kind: register(FilterSpec(kind, (), (), factory=_none, passthrough=True, extra={"istio": True}))
    for kind in ("http", "network", "listener")
}
