"""Network filters: dubbo_proxy (Envoy's config), bolt_proxy (sofamesh's BoltProxy), tcp_proxy.

Contract for a network filter registered with kind "network": `spec.factory(typed_config,
ctx)` with ctx = {"stats": Store, "loop": loop, "clusters": dict[str, Cluster], "path": str}
returns a listener-level object with `protocol_factory()` (an asyncio Protocol per accepted
connection), `conns` (live downstream connections, each with `close()` and `busy()`),
`draining` and `close_all()`. `spec.extra["terminal"]` is True for filters that own the
connection's bytes (all three here).
"""
