"""envoy.filters.network.set_filter_state: filter state set on each new connection
(`on_new_connection`), as Envoy's; and Istio's `istio_authn` network filter, which sets
`io.istio.peer_principal` from the peer certificate (proxy/filter_state.py).

Neither touches the bytes: the chain keeps its terminal filter, and what they set is read
by RBAC `filter_state` rules, in the network RBAC filter after them and in the HTTP
connection manager's RBAC filters (HcmConfig.conn_state). Values are string objects
(`envoy.string` and the like) and the original_dst addresses; a factory with another effect
(a tcp_proxy cluster, an upstream SNI, ...) is refused by path. `shared_with_upstream`
values reach the upstream connection when it goes to an internal listener
(proxy/internal_listener.py).
"""

from __future__ import annotations

from typing import Any

from sofamesh.filters.registry import FilterSpec, register
from sofamesh.proxy.errors import UnsupportedConfig

NAME = "envoy.filters.network.set_filter_state"
TYPE_URL = "type.googleapis.com/envoy.extensions.filters.network.set_filter_state.v3.Config"
ISTIO_AUTHN = "io.istio.network.authn.Config"


def factory(typed_config: Any, context: dict) -> list:
    """[(key, getter(transport), read_only, skip_if_empty, shared_with_upstream)] for the
    chain's ConnState."""
    from envoy.extensions.filters.network.set_filter_state.v3 import set_filter_state_pb2

    from sofamesh.proxy.filter_state import compile_values

    path = context.get("path", NAME)
    msg = set_filter_state_pb2.Config()
    if not typed_config.Unpack(msg):
        raise UnsupportedConfig(f"{path}.typed_config: expected {TYPE_URL}")
    return compile_values(
        msg.on_new_connection, f"{path}.typed_config.on_new_connection", http=False
    )


def istio_authn(typed_config: Any, context: dict) -> list:
    """Istio's istio_authn: the peer's SPIFFE identity as `io.istio.peer_principal`."""
    from sofamesh.proxy.filter_state import PEER_PRINCIPAL, istio_peer_principal

    return [(PEER_PRINCIPAL, istio_peer_principal, True, False, 0)]


SPEC = register(
    FilterSpec(
        kind="network",
        names=(NAME,),
        type_urls=(TYPE_URL,),
        factory=factory,
        extra={"conn_state": True},
    )
)
ISTIO_AUTHN_SPEC = FilterSpec(
    kind="network", names=(), type_urls=(), factory=istio_authn, extra={"conn_state": True}
)
