"""envoy.filters.listener.tls_inspector and http_inspector: registered here; they run in
proxy/listener_chains.py (`parse_client_hello`, `parse_http`) while a connection's filter
chain is chosen (SNI, ALPN, transport protocol; HTTP/1.x or h2c as application protocol)."""

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
