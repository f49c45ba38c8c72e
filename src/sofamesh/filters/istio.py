"""Istio's own filters, accepted as pass-through so an Istio listener is never rejected.

Istio sends `istio.metadata_exchange`, `istio.stats`, `istio.alpn`, ... as TypedStruct or
as Anys of istio protos that xds-protos lacks (the config loader turns those into
TypedStruct). sofamesh does not implement their effect (peer metadata headers, Istio's
standard metrics): the Server skips them, config validation reports each one, and the
gauge `server.passthrough_filters` counts them.
"""

from __future__ import annotations

from typing import Any

from sofamesh.filters.registry import FilterSpec, register

HTTP_NAMES = ("istio.metadata_exchange", "istio.stats", "istio.alpn", "istio.peer_metadata")
NETWORK_NAMES = ("istio.metadata_exchange", "istio.stats")


def _none(typed_config: Any, context: Any) -> None:
    return None


HTTP = register(FilterSpec("http", HTTP_NAMES, (), factory=_none, passthrough=True))
NETWORK = register(FilterSpec("network", NETWORK_NAMES, (), factory=_none, passthrough=True))
