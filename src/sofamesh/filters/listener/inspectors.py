"""envoy.filters.listener.tls_inspector, http_inspector and original_dst: registered here;
they run in proxy/listener_chains.py (`parse_client_hello`, `parse_http`; original_dst's
`proxy/original_dst.restore`) while a connection's filter chain is chosen (SNI, ALPN,
transport protocol; HTTP/1.x or h2c as application protocol; the original destination)."""

from __future__ import annotations

from typing import Any

from sofamesh.filters.registry import FilterSpec, register


def _factory(config: Any, context: Any) -> None:
    return None  # proxy/listener_chains.py reads the listener's filters itself


register(
    FilterSpec(
        kind="listener",
        names=("envoy.filters.listener.tls_inspector", "envoy.listener.tls_inspector"),
        type_urls=(
            "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
        ),
        factory=_factory,
    )
)
register(
    FilterSpec(
        kind="listener",
        names=("envoy.filters.listener.http_inspector", "envoy.listener.http_inspector"),
        type_urls=(
            "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
        ),
        factory=_factory,
    )
)
register(
    FilterSpec(
        kind="listener",
        # runs in proxy/listener_chains.py: proxy/original_dst.py restore()
        names=("envoy.filters.listener.original_dst", "envoy.listener.original_dst"),
        type_urls=(
            "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst",
        ),
        factory=_factory,
    )
)
