"""envoy.filters.http.health_check: the proxy answers load balancers' health probes, as
Envoy 1.40 does.

A request whose headers match every `headers` matcher is a health check. While the proxy's
health is failed (admin POST /healthcheck/fail) it is answered 503 locally. Otherwise, with
`pass_through_mode` false, it is answered locally: 200, or 503 when a cluster of
`cluster_min_healthy_percentages` is missing, empty (unless its minimum is 0) or has fewer
healthy hosts than its minimum percent; with `pass_through_mode` true it goes on upstream.
Every answer to a health check carries x-envoy-upstream-healthchecked-cluster (the node's
cluster); while the proxy's health is failed every answer carries
x-envoy-immediate-health-check-fail: true (and, as in Envoy, connections close after their
response: Server.health_failed).
Refused at start-up, by path: `cache_time` (caching pass-through answers).
"""

from __future__ import annotations

from typing import Any

from sofamesh._core.http_proxy import FILTER_CONTINUE_, FILTER_STOP_, HttpFilter
from sofamesh.filters.registry import FilterSpec, register

NAME = "envoy.filters.http.health_check"
TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck"


class HealthCheckFilter(HttpFilter):
    def __init__(
        self,
        matchers: list,
        pass_through: bool,
        min_healthy: dict[str, int],
        server: Any,
        local_cluster: str,
        name: str = NAME,
    ) -> None:
        super().__init__(name, wants_encode=True)
        self.matchers = matchers  # [(header name, router.HeaderMatcher)]
        self.pass_through = pass_through
        self.min_healthy = min_healthy
        self.server = server
        self.local_cluster = local_cluster.encode()

    def _matches(self, s: Any) -> bool:
        from sofamesh._core.headers import HeaderList

        h = s.request_head
        for name, m in self.matchers:
            if name.startswith(b":") or name == b"host":
                # pseudo-headers are the stream's, not entries of the header map
                v = {
                    b":path": s.path,
                    b":method": s.method,
                    b":authority": s.authority,
                    b"host": s.authority,
                }.get(name)
                one = HeaderList([(name, v)] if v is not None else ())
                if not m.test(one):
                    return False
            elif not m.test(h):
                return False
        return True

    def _status(self) -> int:
        clusters = self.server.clusters
        for name, pct in self.min_healthy.items():
            cl = clusters.get(name)
            if cl is None:
                return 503  # no such cluster: unhealthy
            hosts = cl.hosts
            if not hosts:
                if pct == 0:
                    continue
                return 503
            healthy = sum(1 for h in hosts if h.healthy)
            if 100 * healthy < len(hosts) * pct:
                return 503
        return 200

    def decode_headers(self, s: Any, end_stream: bool) -> int:
        if not self._matches(s):
            return FILTER_CONTINUE_
        if s.filter_state is None:
            s.filter_state = {}
        s.filter_state[self.name] = True
        if self.server.health_failed:
            s.send_local_reply(503, b"", flags="LH")
            return FILTER_STOP_
        if self.pass_through:
            return FILTER_CONTINUE_
        s.send_local_reply(self._status(), b"")
        return FILTER_STOP_

    def encode_headers(self, s: Any, status: int, end_stream: bool) -> int:
        st = s.filter_state
        if st and st.get(self.name):
            s.set_response_header(b"x-envoy-upstream-healthchecked-cluster", self.local_cluster)
        if self.server.health_failed:
            # every answer tells the caller at once that this proxy is going away
            s.set_response_header(b"x-envoy-immediate-health-check-fail", b"true")
        return FILTER_CONTINUE_


def factory(typed_config: Any, context: dict) -> HealthCheckFilter:
    from envoy.extensions.filters.http.health_check.v3 import health_check_pb2

    from sofamesh.proxy.errors import UnsupportedConfig
    from sofamesh.proxy.routes import header_matcher

    path = context.get("path", "")
    msg = health_check_pb2.HealthCheck()
    if not typed_config.Unpack(msg):
        raise UnsupportedConfig(f"{path}.typed_config: expected {TYPE_URL}")
    if msg.HasField("cache_time"):
        raise UnsupportedConfig(f"{path}.typed_config.cache_time is not implemented by sofamesh")
    server = context.get("server")
    if server is None:
        raise UnsupportedConfig(f"{path}: the health check filter needs the proxy's server")
    matchers = [
        (h.name.lower().encode(), header_matcher(h, f"{path}.typed_config.headers[{i}]"))
        for i, h in enumerate(msg.headers)
    ]
    min_healthy = {k: int(v.value) for k, v in msg.cluster_min_healthy_percentages.items()}
    opts = getattr(server, "options", None)
    local = getattr(opts, "service_cluster", "") or context.get("local_cluster", "")
    return HealthCheckFilter(
        matchers,
        msg.pass_through_mode.value,
        min_healthy,
        server,
        local,
        context.get("name") or NAME,
    )


SPEC = register(FilterSpec(kind="http", names=(NAME,), type_urls=(TYPE_URL,), factory=factory))
