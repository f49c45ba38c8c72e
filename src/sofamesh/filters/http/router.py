"""envoy.filters.http.router: built into the proxy core, always the last HTTP filter.

Registering it lets config validation accept it by name and type URL; the Server checks it
is last and does not instantiate anything for it.
"""

from sofamesh.filters.registry import FilterSpec, register


def _factory(typed_config, context):
    return None  # the router is the proxy core itself


SPEC = register(
    FilterSpec(
        kind="http",
        names=("envoy.filters.http.router", "envoy.router"),
        type_urls=("type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",),
        factory=_factory,
    )
)
