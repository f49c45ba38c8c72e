"""The mixer process: gRPC services on one address; on another, its web page (`/`, the service
graph and quota use, polling `/api/graph`), Prometheus `/metrics` and `/healthz`.

mixer = Mixer(policy)
grpc_port, http_port = await mixer.start(("127.0.0.1", 15030), ("127.0.0.1", 15031))
...
await mixer.stop()
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from importlib import resources

import grpc
from aiohttp import web
from envoy.service.accesslog.v3 import als_pb2_grpc
from envoy.service.rate_limit_quota.v3 import rlqs_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2_grpc

from sofamesh.mixer.graph import TrafficGraph
from sofamesh.mixer.metrics import RequestMetrics, _labels
from sofamesh.mixer.metrics_service import MetricsReports, MetricsService
from sofamesh.mixer.policy import Policy
from sofamesh.mixer.quota import QuotaState
from sofamesh.mixer.quota_store import EtcdQuotaStore, QuotaStoreError, default_origin
from sofamesh.mixer.ratelimit import RateLimiter
from sofamesh.mixer.services import AccessLogService, QuotaService, RateLimitService

log = logging.getLogger("sofamesh.mixer")


class AddressInUse(OSError):
    pass


def page() -> bytes:
    """The web page, shipped as package data (src/sofamesh/mixer/web/index.html)."""
    return resources.files("sofamesh.mixer").joinpath("web/index.html").read_bytes()


class Mixer:
    def __init__(
        self,
        policy: Policy,
        quota_ttl: float = 15.0,
        store: str | None = None,
        origin: str | None = None,
        metrics_deltas: bool = False,  # --metrics-counters delta
    ):
        self.policy = policy
        self.quota = QuotaState(policy, time.monotonic, ttl=quota_ttl)
        self.limiter = RateLimiter(policy, time.time)
        self.metrics = RequestMetrics()
        self.reports = MetricsReports(self.metrics, metrics_deltas)
        self.quota_service = QuotaService(self.quota)
        self.graph = TrafficGraph(self.metrics, self.quota, time.monotonic)
        self.store_spec = store
        self.origin = origin
        self.store: EtcdQuotaStore | None = None
        self._page = page()
        self._grpc: grpc.aio.Server | None = None
        self._http: web.AppRunner | None = None
        self._sampler: asyncio.Task | None = None

    async def start(
        self, grpc_address: tuple[str, int], http_address: tuple[str, int]
    ) -> tuple[int, int]:
        # SO_REUSEPORT off: a second mixer on the same port must fail, not share the port
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        rlqs_pb2_grpc.add_RateLimitQuotaServiceServicer_to_server(self.quota_service, server)
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(RateLimitService(self.limiter), server)
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(AccessLogService(self.metrics), server)
        server.add_generic_rpc_handlers((MetricsService(self.reports).handler(),))
        host, port = grpc_address
        try:
            grpc_port = server.add_insecure_port(f"{host}:{port}")
        except RuntimeError as e:
            raise AddressInUse(f"--grpc-address {host}:{port}: {e}") from None
        if grpc_port == 0:
            raise AddressInUse(f"--grpc-address {host}:{port}: cannot bind")
        await server.start()
        self._grpc = server
        if self.store_spec:
            self.store = EtcdQuotaStore(
                self.store_spec,
                self.quota,
                self.quota_service.push,
                self.origin or default_origin(grpc_port),
            )
            try:
                await self.store.open()
            except QuotaStoreError:
                self.store = None
                await self.stop()
                raise
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_get("/api/graph", self._api_graph)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/metrics/reported", self._reported)
        app.router.add_get("/healthz", self._healthz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, http_address[0], http_address[1], reuse_port=False)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            await self.stop()
            raise AddressInUse(f"--http-address {http_address[0]}:{http_address[1]}: {e}") from e
        self._http = runner
        http_port = runner.addresses[0][1]
        self.graph.sample()
        self._sampler = asyncio.ensure_future(self._sample_loop())
        return grpc_port, http_port

    async def _sample_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.graph.sample()

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            self._sampler = None
        if self.store is not None:
            await self.store.close()
            self.store = None
        if self._http is not None:
            await self._http.cleanup()
            self._http = None
        if self._grpc is not None:
            await self._grpc.stop(grace=0.5)
            self._grpc = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self._page,
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-cache"},
        )

    async def _api_graph(self, request: web.Request) -> web.Response:
        doc = self.graph.graph()
        doc["mixer"] = {
            "origin": self.quota.origin or None,
            "store": self.store.kind if self.store is not None else None,
            "quota_reports": self.quota_service.reports,
        }
        return web.Response(
            text=json.dumps(doc, allow_nan=False),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            text="\n".join(self.render()) + "\n", content_type="text/plain", charset="utf-8"
        )

    async def _reported(self, request: web.Request) -> web.Response:
        text = "\n".join(self.reports.render_reported()) + "\n"
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    def render(self) -> list[str]:
        out = self.metrics.render()
        rep = self.reports
        out += [
            "# TYPE sofamesh_mixer_metrics_messages_total counter",
            f"sofamesh_mixer_metrics_messages_total {rep.messages}",
            "# TYPE sofamesh_mixer_metrics_families_total counter",
            f"sofamesh_mixer_metrics_families_total {rep.families}",
            "# TYPE sofamesh_mixer_metrics_streams_total counter",
            f"sofamesh_mixer_metrics_streams_total {rep.streams}",
            "# TYPE sofamesh_mixer_metrics_rejected_total counter",
            f"sofamesh_mixer_metrics_rejected_total {rep.rejected}",
            "# TYPE sofamesh_mixer_access_log_entries_skipped_total counter",
            f"sofamesh_mixer_access_log_entries_skipped_total {self.metrics.entries_skipped}",
        ]
        out += [
            "# TYPE sofamesh_mixer_access_log_entries_total counter",
            f"sofamesh_mixer_access_log_entries_total {self.metrics.entries}",
            "# TYPE sofamesh_mixer_access_log_streams_total counter",
            f"sofamesh_mixer_access_log_streams_total {self.metrics.streams}",
            "# TYPE sofamesh_mixer_ratelimit_checks_total counter",
            f'sofamesh_mixer_ratelimit_checks_total{{code="OK"}} {self.limiter.ok}',
            f'sofamesh_mixer_ratelimit_checks_total{{code="OVER_LIMIT"}} {self.limiter.over_limit}',
            "# TYPE sofamesh_mixer_quota_reports_total counter",
            f"sofamesh_mixer_quota_reports_total {self.quota_service.reports}",
        ]
        if self.store is not None:
            remote = sum(len(r) for m in self.quota.remote.values() for r in m.values())
            out += [
                "# TYPE sofamesh_mixer_store_writes_total counter",
                f"sofamesh_mixer_store_writes_total {self.store.writes}",
                "# TYPE sofamesh_mixer_store_errors_total counter",
                f"sofamesh_mixer_store_errors_total {self.store.errors}",
                "# TYPE sofamesh_mixer_quota_remote_clients gauge",
                f"sofamesh_mixer_quota_remote_clients {remote}",
            ]
        rows = self.quota.snapshot()
        names = ("domain", "bucket", "client")
        for metric, key, kind in (
            ("sofamesh_mixer_quota_limit", "limit", "gauge"),
            ("sofamesh_mixer_quota_demand", "demand", "gauge"),
            ("sofamesh_mixer_quota_assigned", "assigned", "gauge"),
            ("sofamesh_mixer_quota_allowed_total", "allowed", "counter"),
            ("sofamesh_mixer_quota_denied_total", "denied", "counter"),
        ):
            out.append(f"# TYPE {metric} {kind}")
            for r in rows:
                lab = _labels(names, (r["domain"], r["bucket"], r["client"]))
                v = r[key]
                out.append(f"{metric}{lab} {'+Inf' if v == float('inf') else format(v, 'g')}")
        return out
