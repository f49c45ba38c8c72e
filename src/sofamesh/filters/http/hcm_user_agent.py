"""HttpConnectionManager.add_user_agent, as Envoy 1.40's connection manager applies it: every
request gets `x-envoy-downstream-service-cluster` (the node's cluster, --service-cluster),
`user-agent` set to it when the request has none or an empty one, and
`x-envoy-downstream-service-node` (the node's id, --service-node) when that is not empty.

Not a configurable filter: the HCM builder (filters/network/http_connection_manager.py)
puts it first in the chain, so every filter and the upstream see the headers as they see
the connection manager's own in Envoy.
"""

from __future__ import annotations

from typing import Any

from sofamesh._core.http_proxy import FILTER_CONTINUE_, HttpFilter

CLUSTER = b"x-envoy-downstream-service-cluster"
NODE = b"x-envoy-downstream-service-node"


class AddUserAgent(HttpFilter):
    def __init__(self, node: Any) -> None:
        super().__init__("sofamesh.hcm.add_user_agent")
        self.cluster = node.cluster.encode("latin-1")
        self.node = node.id.encode("latin-1")

    def decode_headers(self, s: Any, end_stream: bool) -> int:
        s.remove_request_header(CLUSTER)
        s.add_request_header(CLUSTER, self.cluster)
        if not s.get_request_header(b"user-agent"):
            s.remove_request_header(b"user-agent")
            s.add_request_header(b"user-agent", self.cluster)
        if self.node:
            s.remove_request_header(NODE)
            s.add_request_header(NODE, self.node)
        return FILTER_CONTINUE_
