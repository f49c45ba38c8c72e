"""The load reporting client (`cluster_manager.load_stats_config`, Envoy's LRS client:
`envoy.service.load_stats.v3.LoadReportingService/StreamLoadStats`), as Envoy 1.40 reports.

It runs once per proxy, in the process that serves admin (beside the workers, whose host
counters it reads through the admin backend's `topology()`, summed over workers):

    open the stream -> LoadStatsRequest{node (+ client feature
        envoy.lrs.supports_send_all_clusters)}, no cluster_stats
    <- LoadStatsResponse{clusters | send_all_clusters, load_reporting_interval,
       report_endpoint_granularity}: the report period starts (counters latched)
    every load_reporting_interval -> LoadStatsRequest{node, cluster_stats: per cluster
       named (and existing): per priority and locality with requests issued in the period
       or in progress (the LRS stream itself is one on its cluster, as in Envoy),
       total_successful_requests (non-5xx answers), total_error_requests (5xx), total_issued_
       requests, total_requests_in_progress (now); per endpoint with
       report_endpoint_granularity; total_dropped_requests 0; load_report_interval: the
       time since the last report}
    a new LoadStatsResponse restarts the period with its clusters and interval.

A failed stream is counted (`load_reporter.errors`) and reopened after a delay
(`load_reporter.retries`). Stats as Envoy names them: `load_reporter.requests` counts the
server's LoadStatsResponses, `load_reporter.responses` the reports sent (Envoy's names).
A host's locality and priority are its LocalityLbEndpoints' in the bootstrap's static
clusters (by endpoint address, or DNS name for DNS clusters); hosts of EDS clusters report
under the empty locality, priority 0.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from sofamesh.proxy.errors import UnsupportedConfig

log = logging.getLogger("sofamesh.load_stats")

METHOD = "/envoy.service.load_stats.v3.LoadReportingService/StreamLoadStats"
SEND_ALL_FEATURE = "envoy.lrs.supports_send_all_clusters"
RETRY_DELAY_S = 5.0  # Envoy's retry delay once a stream failed
MIN_INTERVAL_S = 0.1


def check_config(bootstrap: Any, path: str = "cluster_manager.load_stats_config") -> str:
    """The gRPC target of load_stats_config's cluster; UnsupportedConfig for what is not
    implemented (an API other than GRPC, a service other than one envoy_grpc)."""
    from sofamesh.xds.settings import static_targets

    api = bootstrap.cluster_manager.load_stats_config
    if api.api_type != 2:  # GRPC
        raise UnsupportedConfig(f"{path}.api_type: only GRPC is implemented by sofamesh")
    if len(api.grpc_services) != 1 or not api.grpc_services[0].HasField("envoy_grpc"):
        raise UnsupportedConfig(
            f"{path}.grpc_services: exactly one envoy_grpc service is implemented by sofamesh"
        )
    name = api.grpc_services[0].envoy_grpc.cluster_name
    target = static_targets(bootstrap).get(name)
    if target is None:
        raise UnsupportedConfig(
            f"{path}.grpc_services[0].envoy_grpc.cluster_name: static cluster {name!r} with "
            "an endpoint address is required"
        )
    return target


def _localities(bootstrap: Any) -> dict[str, dict[tuple[str, int], tuple[int, tuple, Any]]]:
    """cluster -> (endpoint address or DNS name, port) -> (priority, sort key, Locality)."""
    out: dict[str, dict[tuple[str, int], tuple[int, tuple, Any]]] = {}
    for c in bootstrap.static_resources.clusters:
        m = out.setdefault(c.name, {})
        for lle in c.load_assignment.endpoints:
            loc = lle.locality
            key = (loc.region, loc.zone, loc.sub_zone)
            for lbe in lle.lb_endpoints:
                sa = lbe.endpoint.address.socket_address
                m[(sa.address, sa.port_value)] = (lle.priority, key, loc)
    return out


class LoadStatsReporter:
    def __init__(self, bootstrap: Any, backend: Any, store: Any, node: Any) -> None:
        from envoy.service.load_stats.v3 import lrs_pb2

        self.target = check_config(bootstrap)
        eg = bootstrap.cluster_manager.load_stats_config.grpc_services[0].envoy_grpc
        self.cluster = eg.cluster_name
        # envoy_grpc.authority: the stream's :authority when set
        self.channel_options = [("grpc.default_authority", eg.authority)] if eg.authority else []
        self.backend = backend
        self.node = node
        self.node.client_features.append(SEND_ALL_FEATURE)
        self.localities = _localities(bootstrap)
        self.lrs_pb2 = lrs_pb2
        self.requests = store.counter("load_reporter.requests")
        self.responses = store.counter("load_reporter.responses")
        self.errors = store.counter("load_reporter.errors")
        self.retries = store.counter("load_reporter.retries")
        for c in (self.requests, self.responses, self.errors, self.retries):
            c.used = True
        self._task: asyncio.Task | None = None
        # the period: clusters reported on (name -> when its last report was made)
        self.clusters: dict[str, float] = {}
        self.send_all = False
        self.interval = 0.0
        self.endpoints = False
        self.latched: dict[tuple[str, str, int], tuple[int, int, int]] = {}

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    @staticmethod
    def _inc(c: Any) -> None:
        c.value += 1

    async def _run(self) -> None:
        first = True
        while True:
            if not first:
                self._inc(self.retries)
                await asyncio.sleep(RETRY_DELAY_S)
            first = False
            try:
                await self._stream()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - any stream failure: counted, reopened
                log.debug("load reporting stream to %s: %r", self.target, e)
            self._inc(self.errors)

    async def _stream(self) -> None:
        import grpc

        pb = self.lrs_pb2
        async with grpc.aio.insecure_channel(self.target, options=self.channel_options) as channel:
            call = channel.stream_stream(
                METHOD,
                request_serializer=pb.LoadStatsRequest.SerializeToString,
                response_deserializer=pb.LoadStatsResponse.FromString,
            )()
            self.clusters = {}
            self.interval = 0.0
            await self._send(call, pb.LoadStatsRequest(node=self.node))
            timer: asyncio.Task | None = None
            try:
                while True:
                    msg = await call.read()
                    if msg is grpc.aio.EOF:
                        raise ConnectionError("stream ended by the server")
                    self._inc(self.requests)
                    await self._start_period(msg)
                    if timer is not None:
                        timer.cancel()
                    timer = asyncio.get_running_loop().create_task(self._report_loop(call))
            finally:
                if timer is not None:
                    timer.cancel()
                call.cancel()

    async def _send(self, call: Any, req: Any) -> None:
        await call.write(req)
        self._inc(self.responses)

    async def _start_period(self, msg: Any) -> None:
        self.send_all = msg.send_all_clusters
        self.endpoints = msg.report_endpoint_granularity
        # a server's 0 (or negative) interval would spin the reporter: at least MIN_INTERVAL_S
        self.interval = max(msg.load_reporting_interval.ToNanoseconds() / 1e9, MIN_INTERVAL_S)
        top = await self.backend.topology()
        names = [c["name"] for c in top["clusters"]]
        now = time.monotonic()
        wanted = names if self.send_all else [n for n in msg.clusters if n in names]
        self.clusters = {n: now for n in wanted}
        self._latch(top, set(wanted))  # the period starts from here

    def _is_target(self, h: dict) -> bool:
        host, _, port = self.target.rpartition(":")
        return str(h["port"]) == port and host.strip("[]") in (h["address"], h.get("hostname"))

    def _latch(self, top: dict, names: set[str]) -> dict[tuple[str, str, int], tuple]:
        """Per host in `names`: (successes, errors, issued) since the last latch, and
        the active requests now."""
        out = {}
        for c in top["clusters"]:
            if c["name"] not in names:
                continue
            for h in c["hosts"]:
                st = h["stats"]
                key = (c["name"], h["address"], h["port"])
                now = (st.get("rq_success", 0), st.get("rq_error", 0), st.get("rq_total", 0))
                prev = self.latched.get(key, (0, 0, 0))
                # a restarted worker or reset counters: what is there now is new
                delta = tuple(a - b if a >= b else a for a, b in zip(now, prev, strict=True))
                self.latched[key] = now
                active = st.get("rq_active", 0)
                if c["name"] == self.cluster and self._is_target(h):
                    active += 1  # this stream: a request in progress on the LRS cluster
                out[key] = (*delta, active, h)
        return out

    async def _report_loop(self, call: Any) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._send(call, await self._report())

    async def _report(self) -> Any:
        pb = self.lrs_pb2
        top = await self.backend.topology()
        present = {c["name"] for c in top["clusters"]}
        latched = self._latch(top, set(self.clusters))
        req = pb.LoadStatsRequest(node=self.node)
        now = time.monotonic()
        for name, since in list(self.clusters.items()):
            if name not in present:
                continue
            cs = req.cluster_stats.add(cluster_name=name)
            groups: dict[tuple[int, tuple], list] = {}
            locs = self.localities.get(name, {})
            for (cname, _, port), val in latched.items():
                if cname != name:
                    continue
                h = val[4]
                prio, key, loc = locs.get(
                    (h.get("hostname") or h["address"], port),
                    locs.get((h["address"], port), (0, ("", "", ""), None)),
                )
                groups.setdefault((prio, key), []).append((loc, val))
            for prio, key in sorted(groups):
                members = groups[(prio, key)]
                ok = sum(v[0] for _, v in members)
                err = sum(v[1] for _, v in members)
                issued = sum(v[2] for _, v in members)
                active = sum(v[3] for _, v in members)
                if issued == 0 and active == 0:
                    continue
                ls = cs.upstream_locality_stats.add(
                    priority=prio,
                    total_successful_requests=ok,
                    total_error_requests=err,
                    total_issued_requests=issued,
                    total_requests_in_progress=active,
                )
                loc = members[0][0]
                ls.locality.SetInParent()
                if loc is not None:
                    ls.locality.CopyFrom(loc)
                if self.endpoints:
                    for _, v in members:
                        h = v[4]
                        es = ls.upstream_endpoint_stats.add(
                            total_successful_requests=v[0],
                            total_error_requests=v[1],
                            total_issued_requests=v[2],
                            total_requests_in_progress=v[3],
                        )
                        es.address.socket_address.address = h["address"]
                        es.address.socket_address.port_value = h["port"]
            cs.total_dropped_requests = 0
            cs.load_report_interval.FromNanoseconds(int((now - since) * 1e9))
            self.clusters[name] = now
        return req


def start(bootstrap: Any, backend: Any, store: Any, opts: Any = None) -> LoadStatsReporter | None:
    """The reporter of a bootstrap with cluster_manager.load_stats_config, started; None
    without one."""
    if not bootstrap.cluster_manager.HasField("load_stats_config"):
        return None
    from sofamesh import __version__

    node = type(bootstrap.node)()
    node.CopyFrom(bootstrap.node)
    if opts is not None:
        node.id = getattr(opts, "service_node", "") or node.id
        node.cluster = getattr(opts, "service_cluster", "") or node.cluster
    node.user_agent_name = "sofamesh"
    node.user_agent_version = __version__
    rep = LoadStatsReporter(bootstrap, backend, store, node)
    rep.start()
    return rep
