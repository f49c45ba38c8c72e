"""Envoy's admin endpoints over a Backend (see backend.py), with Envoy's JSON shapes.

JSON bodies are built as `envoy.admin.v3` messages and printed with protobuf's JSON
mapping (indent 1, proto field names), so shapes follow Envoy's by construction.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from google.protobuf import json_format
from google.protobuf.any_pb2 import Any as AnyPb
from google.protobuf.timestamp_pb2 import Timestamp

from sofamesh.admin import stats_format
from sofamesh.admin.backend import HOST_GAUGES, Backend, apply_log_levels

log = logging.getLogger("sofamesh.admin")

STATE_LIVE, STATE_DRAINING, STATE_PRE_INITIALIZING, STATE_INITIALIZING = 0, 1, 2, 3
STATE_NAMES = {0: "LIVE", 1: "DRAINING", 2: "PRE_INITIALIZING", 3: "INITIALIZING"}
TEXT = "text/plain; charset=UTF-8"
JSON = "application/json"
HTML = "text/html; charset=UTF-8"
DEFAULT_THRESHOLDS = {
    "max_connections": 1024,
    "max_pending_requests": 1024,
    "max_requests": 1024,
    "max_retries": 3,
}


@dataclass
class Response:
    status: int
    body: bytes | str
    content_type: str = TEXT
    headers: dict[str, str] = field(default_factory=dict)

    def data(self) -> bytes:
        return self.body.encode() if isinstance(self.body, str) else self.body


def _to_json(msg: Any, *, defaults: bool = False) -> str:
    return (
        json_format.MessageToJson(
            msg,
            indent=1,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=defaults,
        )
        + "\n"
    )


def _ts(t: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(t * 1e9))
    return ts


def _pack(msg: Any) -> AnyPb:
    a = AnyPb()
    a.Pack(msg)
    return a


def _flag(q: dict[str, str], name: str) -> bool:
    return name in q and q[name].lower() not in ("false", "0")


class AdminState:
    """Everything the endpoints read: config, options, backend, lifecycle state."""

    def __init__(self, bootstrap: Any, options: Any, backend: Backend) -> None:
        from sofamesh._core.stats import Store

        self.bootstrap = bootstrap
        self.options = options
        self.backend = backend
        self.started = time.time()
        self.started_all = self.started  # hot restart: when the first epoch started
        self.config_time = time.time()
        self.state = STATE_INITIALIZING
        self.health_failed = False
        self.draining = False
        self.quit = asyncio.Event()
        self.admin_stats = Store()  # the admin listener's own http.admin.* stats
        self.overrides: dict[str, str] = {}
        self.reopen_hooks: list[Callable[[], None]] = []
        self.stats_view: Any = None  # admin.stats_config.StatsView, made on first use

    async def reopen_logs(self) -> None:
        for hook in self.reopen_hooks:
            hook()
        await self.backend.reopen_logs()

    # ---- stats ----------------------------------------------------------------------
    def server_state(self) -> int:
        # As in Envoy, /drain_listeners does not change server.state or /ready.
        return self.state

    async def snapshot(self) -> dict:
        from sofamesh.logs import version_string  # noqa: F401 - keeps imports light

        worker_snap, top = await asyncio.gather(self.backend.snapshot(), self.backend.topology())
        snap = stats_format.merge([worker_snap, self.admin_stats.snapshot()])
        g = snap["gauges"]
        state = self.server_state()
        dyn = self.dynamic()
        counts = dyn.counts() if dyn is not None else {}
        own = {
            "server.state": state,
            "server.live": int(state == STATE_LIVE and not self.health_failed),
            "server.uptime": int(time.time() - self.started),
            "server.concurrency": self.options.concurrency,
            "server.hot_restart_epoch": self.options.restart_epoch,
            "server.version": 0,
            "server.memory_allocated": _rss_bytes(),
            "listener_manager.workers_started": self.backend.live_workers()
            if state in (STATE_LIVE, STATE_DRAINING)
            else 0,
            "listener_manager.total_listeners_active": len(top["listeners"]),
            "listener_manager.total_listeners_warming": counts.get("warming_listeners", 0),
            "listener_manager.total_listeners_draining": counts.get("draining_listeners", 0),
            "cluster_manager.active_clusters": len(top["clusters"]),
            "cluster_manager.warming_clusters": counts.get("warming_clusters", 0),
        }
        for mon in self.bootstrap.overload_manager.resource_monitors:
            # global_downstream_max_connections (proxy/overload.py): proactive, as in
            # Envoy its pressure stays 0
            own[f"overload.{mon.name}.pressure"] = 0
            snap["counters"].setdefault(f"overload.{mon.name}.failed_updates", 0)
        g.update(own)
        for c in top["clusters"]:
            healthy = sum(1 for h in c["hosts"] if h["healthy"])
            g[f"cluster.{c['name']}.membership_total"] = len(c["hosts"])
            g[f"cluster.{c['name']}.membership_healthy"] = healthy
            for b in c.get("breakers", ()):  # track_remaining (admin/backend.py)
                p = f"cluster.{c['name']}.circuit_breakers.{b[0]}.remaining_"
                for i, what in enumerate(("cx", "pending", "rq", "retries", "cx_pools")):
                    g[p + what] = max(b[1 + i] - b[6 + i], 0)
        snap["used"] |= set(own)
        if self.stats_view is None:
            from sofamesh.admin.stats_config import from_bootstrap

            self.stats_view = from_bootstrap(self.bootstrap)
        alt = {c["name"]: c.get("alt_stat_name", "") for c in top["clusters"]}
        return self.stats_view.apply(snap, alt)

    def dynamic(self) -> Any:
        """The xDS-fed resources (sofamesh.proxy.dynamic.DynamicConfig) when the Server runs
        in this process with dynamic_resources; with workers, the main process's copy of what
        they all accepted (sofamesh.proxy.pool_xds.PoolApplier); else None."""
        pooled = getattr(self.backend, "dynamic", None)
        if pooled is not None:
            return pooled
        server = getattr(self.backend, "server", None)
        return getattr(server, "dynamic", None)

    # ---- config dump -----------------------------------------------------------------
    def config_dumps(self, include_eds: bool) -> list[Any]:
        from envoy.admin.v3 import config_dump_pb2 as cd
        from envoy.admin.v3 import config_dump_shared_pb2 as cds

        from sofamesh.config import protos

        b = self.bootstrap
        when = _ts(self.config_time)
        boot = cd.BootstrapConfigDump(last_updated=when)
        boot.bootstrap.CopyFrom(b)
        clusters = cds.ClustersConfigDump()
        for c in b.static_resources.clusters:
            sc = clusters.static_clusters.add(last_updated=when)
            sc.cluster.Pack(c)
        listeners = cds.ListenersConfigDump()
        routes = cds.RoutesConfigDump()
        for lst in b.static_resources.listeners:
            sl = listeners.static_listeners.add(last_updated=when)
            sl.listener.Pack(lst)
            for chain in [*lst.filter_chains] + (
                [lst.default_filter_chain] if lst.HasField("default_filter_chain") else []
            ):
                for flt in chain.filters:
                    if not flt.typed_config.type_url.endswith(".HttpConnectionManager"):
                        continue
                    hcm = protos.unpack_any(flt.typed_config)
                    if hcm is not None and hcm.HasField("route_config"):
                        sr = routes.static_route_configs.add(last_updated=when)
                        sr.route_config.Pack(hcm.route_config)
        dyn = self.dynamic()
        if dyn is not None:
            from sofamesh.admin.dynamic_dump import add_dynamic

            add_dynamic(dyn, clusters, listeners, routes)
        dumps: list[Any] = [
            boot,
            clusters,
            listeners,
            cds.ScopedRoutesConfigDump(),
            routes,
            cd.SecretsConfigDump(),
        ]
        if include_eds:
            eds = cds.EndpointsConfigDump()
            for c in b.static_resources.clusters:
                if c.HasField("load_assignment"):
                    se = eds.static_endpoint_configs.add(last_updated=when)
                    la = type(c.load_assignment)()
                    la.CopyFrom(c.load_assignment)
                    if not la.cluster_name:
                        la.cluster_name = c.name
                    se.endpoint_config.Pack(la)
            if dyn is not None:
                from sofamesh.admin.dynamic_dump import add_dynamic_endpoints

                add_dynamic_endpoints(dyn, eds)
            dumps.insert(2, eds)
        return dumps


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


Handler = Callable[[AdminState, dict[str, str], str], Awaitable[Response]]
# path -> (handler, method it needs or None for GET, help)
ROUTES: dict[str, tuple[Handler, str | None, str]] = {}


def route(path: str, help_text: str, method: str | None = None):
    def deco(fn: Handler) -> Handler:
        ROUTES[path] = (fn, method, help_text)
        return fn

    return deco


@route("/", "Admin home page")
async def home(st: AdminState, q: dict[str, str], method: str) -> Response:
    return Response(200, _usage(), TEXT)


def _usage() -> str:
    lines = ["admin commands are:"]
    for path, (_, method, text) in sorted(ROUTES.items()):
        lines.append(f"  {path}{' (POST)' if method == 'POST' else ''}: {text}")
    return "\n".join(lines) + "\n"


@route("/help", "print out list of admin commands")
async def help_(st: AdminState, q: dict[str, str], method: str) -> Response:
    return Response(200, _usage())


@route("/ready", "print server state, return 200 if LIVE, otherwise return 503")
async def ready(st: AdminState, q: dict[str, str], method: str) -> Response:
    state = st.server_state()
    if st.health_failed and state == STATE_LIVE:
        state = STATE_DRAINING
    return Response(200 if state == STATE_LIVE else 503, STATE_NAMES[state] + "\n")


@route("/server_info", "print server version/status information")
async def server_info(st: AdminState, q: dict[str, str], method: str) -> Response:
    from envoy.admin.v3 import server_info_pb2

    from sofamesh.logs import version_string

    info = server_info_pb2.ServerInfo()
    info.version = version_string()
    state = st.server_state()
    if st.health_failed and state == STATE_LIVE:
        state = STATE_DRAINING
    info.state = state
    up = int(time.time() - st.started)
    info.uptime_current_epoch.seconds = up
    info.uptime_all_epochs.seconds = int(time.time() - st.started_all)
    # proxy/hot_restart.py's protocol (Envoy: its shared memory layout's version)
    from sofamesh.proxy.hot_restart import VERSION

    info.hot_restart_version = "disabled" if st.options.disable_hot_restart else VERSION
    json_format.ParseDict(
        st.options.command_line_options(),
        info.command_line_options,
        ignore_unknown_fields=True,
    )
    info.node.CopyFrom(st.bootstrap.node)
    body = json.loads(_to_json(info, defaults=True))
    body["hot_restart_initializing"] = False  # Envoy 1.40 field newer than xds-protos' proto
    clo = st.options.command_line_options()
    for k, v in clo.items():  # options newer than xds-protos' CommandLineOptions
        body["command_line_options"].setdefault(k, v)

    return Response(200, json.dumps(body, indent=1) + "\n", JSON)


async def _stats(st: AdminState, q: dict[str, str], fmt: str | None = None) -> Response:
    fmt = fmt or q.get("format", "text")
    rx = None
    if q.get("filter"):
        try:
            rx = re.compile(q["filter"])
        except re.error as e:
            return Response(400, f"Invalid re2 regex: {e}\n")
    usedonly = "usedonly" in q
    snap = await st.snapshot()
    kind = q.get("type", "All")
    keep = {
        "All": ("counters", "gauges", "histograms", "text_readouts"),
        "Counters": ("counters",),
        "Gauges": ("gauges",),
        "Histograms": ("histograms",),
        "TextReadouts": ("text_readouts",),
    }.get(kind)
    if keep is None:
        return Response(400, f"invalid type={kind}\n")
    for k in ("counters", "gauges", "histograms", "text_readouts"):
        if k not in keep:
            snap[k] = {}
    from sofamesh._core.stats import DEFAULT_BOUNDS

    if fmt == "json":
        return Response(200, stats_format.as_json(snap, rx, usedonly, DEFAULT_BOUNDS), JSON)
    if fmt == "prometheus":
        return Response(
            200,
            stats_format.prometheus(
                snap, rx, usedonly, DEFAULT_BOUNDS, "text_readouts" in q, view=st.stats_view
            ),
            TEXT,
        )
    if fmt in ("text", ""):
        return Response(200, stats_format.text(snap, rx, usedonly, DEFAULT_BOUNDS), TEXT)
    return Response(400, "usage: /stats?format=(html|active-html|json|prometheus|text)\n")


@route("/stats", "print server stats")
async def stats(st: AdminState, q: dict[str, str], method: str) -> Response:
    return await _stats(st, q)


@route("/stats/prometheus", "print server stats in prometheus format")
async def stats_prometheus(st: AdminState, q: dict[str, str], method: str) -> Response:
    return await _stats(st, q, "prometheus")


def _thresholds(cluster_cfg: Any | None) -> list[dict[str, Any]]:
    out = []
    for prio in ("DEFAULT", "HIGH"):
        t = dict(DEFAULT_THRESHOLDS)
        if cluster_cfg is not None:
            for th in cluster_cfg.circuit_breakers.thresholds:
                from envoy.config.core.v3 import base_pb2

                if base_pb2.RoutingPriority.Name(th.priority) == prio:
                    for k in DEFAULT_THRESHOLDS:
                        if th.HasField(k):
                            t[k] = getattr(th, k).value
        out.append({"priority": prio, **t})
    return out


def _cluster_cfgs(st: AdminState) -> dict[str, Any]:
    cfgs = {c.name: c for c in st.bootstrap.static_resources.clusters}
    dyn = st.dynamic()
    if dyn is not None:
        cfgs.update({n: dc.config for n, dc in dyn.active_clusters.items()})
    return cfgs


def _health_status(hs: Any, h: dict) -> None:
    """envoy.admin.v3.HostHealthStatus from a topology host (proxy.health_check flags)."""
    from sofamesh.proxy import health_check as hc

    f = h.get("hc_flags", 0)
    hs.eds_health_status = 1 if h.get("eds_healthy", h["healthy"]) else 2
    if f & hc.FAILED_ACTIVE_HC:
        hs.failed_active_health_check = True
    if h.get("outlier"):
        hs.failed_outlier_check = True
    if f & hc.DEGRADED_ACTIVE_HC:
        hs.failed_active_degraded_check = True
    if f & hc.PENDING_ACTIVE_HC:
        hs.pending_active_hc = True
    if f & hc.EXCLUDED_VIA_IMMEDIATE_HC_FAIL:
        hs.excluded_via_immediate_hc_fail = True
    if f & hc.ACTIVE_HC_TIMEOUT:
        hs.active_hc_timeout = True


def _rate(v: float) -> str:
    """A success rate as Envoy's /clusters prints a double (-1 when not computed)."""
    return "-1" if v < 0 else f"{v:g}"


@route("/clusters", "upstream cluster status")
async def clusters(st: AdminState, q: dict[str, str], method: str) -> Response:
    from sofamesh.proxy.health_check import health_flags_text

    top = await st.backend.topology()
    cfgs = _cluster_cfgs(st)
    if q.get("format") == "json":
        from envoy.admin.v3 import clusters_pb2

        msg = clusters_pb2.Clusters()
        for c in top["clusters"]:
            cs = msg.cluster_statuses.add(name=c["name"], observability_name=c["name"])
            dyn = st.dynamic()
            cs.added_via_api = dyn is not None and c["name"] in dyn.active_clusters
            for t in _thresholds(cfgs.get(c["name"])):
                th = cs.circuit_breakers.thresholds.add()
                th.priority = 1 if t["priority"] == "HIGH" else 0
                for k in DEFAULT_THRESHOLDS:
                    getattr(th, k).value = t[k]
            for h in c["hosts"]:
                hs = cs.host_statuses.add()
                hs.address.socket_address.address = h["address"]
                hs.address.socket_address.port_value = h["port"]
                for name, v in sorted(
                    h["stats"].items(), key=lambda kv: (kv[0] in HOST_GAUGES, kv[0])
                ):
                    s = hs.stats.add(name=name, value=v)
                    if name in HOST_GAUGES:
                        s.type = 1  # GAUGE
                _health_status(hs.health_status, h)
                for k in ("success_rate", "local_origin_success_rate"):  # outlier detection
                    if h.get(k, -1.0) >= 0:
                        getattr(hs, k).value = h[k]
                hs.weight = h["weight"]
                hs.hostname = h.get("hostname", "")
                hs.locality.SetInParent()
                region, zone, sub_zone = _locality(h)
                hs.locality.region, hs.locality.zone, hs.locality.sub_zone = region, zone, sub_zone
                hs.priority = h.get("priority", 0)
        return Response(200, _to_json(msg), JSON)
    lines = []
    for c in top["clusters"]:
        n = c["name"]
        lines.append(f"{n}::observability_name::{n}")
        for t in _thresholds(cfgs.get(n)):
            p = "default_priority" if t["priority"] == "DEFAULT" else "high_priority"
            for k in DEFAULT_THRESHOLDS:
                lines.append(f"{n}::{p}::{k}::{t[k]}")
        dyn = st.dynamic()
        via_api = dyn is not None and n in dyn.active_clusters
        lines.append(f"{n}::added_via_api::{'true' if via_api else 'false'}")
        for h in c["hosts"]:
            hp = f"{n}::{h['address']}:{h['port']}"
            for k, v in sorted(h["stats"].items()):
                lines.append(f"{hp}::{k}::{v}")
            lines.append(f"{hp}::hostname::{h.get('hostname', '')}")
            lines.append(
                f"{hp}::health_flags::"
                + health_flags_text(
                    h.get("hc_flags", 0),
                    h.get("eds_healthy", h["healthy"]),
                    h.get("outlier", False),
                )
            )
            lines.append(f"{hp}::weight::{h['weight']}")
            for k, v in zip(("region", "zone", "sub_zone"), _locality(h)):
                lines.append(f"{hp}::{k}::{v}")
            lines.append(f"{hp}::canary::false")
            lines.append(f"{hp}::priority::{h.get('priority', 0)}")
            lines.append(f"{hp}::success_rate::{_rate(h.get('success_rate', -1.0))}")
            lines.append(
                f"{hp}::local_origin_success_rate::"
                f"{_rate(h.get('local_origin_success_rate', -1.0))}"
            )
    return Response(200, "\n".join(lines) + ("\n" if lines else ""))


def _locality(h: dict) -> tuple[str, str, str]:
    """A host's (region, zone, sub_zone) from backend's "region/zone/sub_zone"."""
    parts = (h.get("locality") or "//").split("/", 2)
    parts += [""] * (3 - len(parts))
    return parts[0], parts[1], parts[2]


def _is_pipe(address: list) -> bool:
    """A listener's [path, 0] (a Unix socket, as Server._start_pipe binds it)."""
    return address[1] == 0 and str(address[0]).startswith(("/", "@", "."))


@route("/listeners", "print listener info")
async def listeners(st: AdminState, q: dict[str, str], method: str) -> Response:
    top = await st.backend.topology()
    if q.get("format") == "json":
        from envoy.admin.v3 import listeners_pb2

        msg = listeners_pb2.Listeners()
        for li in top["listeners"]:
            ls = msg.listener_statuses.add(name=li["name"])
            if _is_pipe(li["address"]):
                ls.local_address.pipe.path = li["address"][0]
                continue
            ls.local_address.socket_address.address = li["address"][0]
            ls.local_address.socket_address.port_value = li["address"][1]
        return Response(200, _to_json(msg), JSON)
    body = "".join(
        f"{li['name']}::{li['address'][0]}\n"
        if _is_pipe(li["address"])
        else f"{li['name']}::{li['address'][0]}:{li['address'][1]}\n"
        for li in top["listeners"]
    )
    return Response(200, body)


# `?resource=` field -> the item type Envoy reports for it.
_RESOURCE_ITEM = {
    "static_clusters": "envoy.admin.v3.ClustersConfigDump.StaticCluster",
    "dynamic_active_clusters": "envoy.admin.v3.ClustersConfigDump.DynamicCluster",
    "dynamic_warming_clusters": "envoy.admin.v3.ClustersConfigDump.DynamicCluster",
    "static_listeners": "envoy.admin.v3.ListenersConfigDump.StaticListener",
    "dynamic_listeners": "envoy.admin.v3.ListenersConfigDump.DynamicListener",
    "static_route_configs": "envoy.admin.v3.RoutesConfigDump.StaticRouteConfig",
    "dynamic_route_configs": "envoy.admin.v3.RoutesConfigDump.DynamicRouteConfig",
    "static_endpoint_configs": "envoy.admin.v3.EndpointsConfigDump.StaticEndpointConfig",
    "dynamic_endpoint_configs": "envoy.admin.v3.EndpointsConfigDump.DynamicEndpointConfig",
    "static_secrets": "envoy.admin.v3.SecretsConfigDump.StaticSecret",
    "dynamic_active_secrets": "envoy.admin.v3.SecretsConfigDump.DynamicSecret",
}


@route("/config_dump", "dump current Envoy configs (experimental)")
async def config_dump(st: AdminState, q: dict[str, str], method: str) -> Response:
    from envoy.admin.v3 import config_dump_pb2

    dumps = st.config_dumps(include_eds=_flag(q, "include_eds"))
    out = config_dump_pb2.ConfigDump()
    resource_name = q.get("resource")
    rx = None
    if q.get("name_regex"):
        try:
            rx = re.compile(q["name_regex"])
        except re.error:
            return Response(400, f"Error while parsing name_regex from {q['name_regex']}\n")
    if resource_name:
        found = False
        for d in dumps:
            fd = d.DESCRIPTOR.fields_by_name.get(resource_name)
            if fd is None or not fd.is_repeated or fd.message_type is None:
                continue
            found = True
            for item in getattr(d, resource_name):
                if rx is not None and not rx.search(json_format.MessageToJson(item)):
                    continue
                out.configs.append(_pack(item))
        if not found:
            return Response(404, f"{resource_name} not found in config dump\n")
        if not out.configs:
            return Response(200, "{}\n", JSON)
        return Response(200, _to_json(out), JSON)
    for d in dumps:
        out.configs.append(_pack(d))
    return Response(200, _to_json(out), JSON)


@route("/runtime", "print runtime values")
async def runtime(st: AdminState, q: dict[str, str], method: str) -> Response:
    layers = []
    entries: dict[str, dict[str, Any]] = {}
    rt = st.bootstrap.layered_runtime
    values_by_layer: list[dict[str, Any]] = []
    for layer in rt.layers:
        layers.append(layer.name)
        vals: dict[str, Any] = {}
        if layer.HasField("static_layer"):
            vals = _flatten(json_format.MessageToDict(layer.static_layer))
        elif layer.HasField("admin_layer"):
            vals = dict(st.overrides)
        values_by_layer.append(vals)
    for i, vals in enumerate(values_by_layer):
        for k, v in vals.items():
            e = entries.setdefault(k, {"layer_values": [""] * len(layers), "final_value": ""})
            e["layer_values"][i] = str(v)
            e["final_value"] = str(v)
    body = json.dumps({"layers": layers, "entries": entries}, indent=1) + "\n"
    return Response(200, body, JSON)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            if v is True or v is False:
                out[key] = "true" if v else "false"
            elif isinstance(v, float) and v.is_integer():
                out[key] = str(int(v))
            else:
                out[key] = str(v)
    return out


@route("/runtime_modify", "Adds or modifies runtime values", "POST")
async def runtime_modify(st: AdminState, q: dict[str, str], method: str) -> Response:
    has_admin = any(layer.HasField("admin_layer") for layer in st.bootstrap.layered_runtime.layers)
    if not has_admin:
        return Response(503, "No admin layer specified\n")
    st.overrides.update(q)
    return Response(200, "OK\n")


@route("/certs", "print certs on machine")
async def certs(st: AdminState, q: dict[str, str], method: str) -> Response:
    # every TLS context's CA and certificate chain, as Envoy's envoy.admin.v3.Certificates
    certs = (await st.backend.topology()).get("certs", [])
    return Response(200, json.dumps({"certificates": certs}, indent=1) + "\n", JSON)


@route("/memory", "print current allocation/heap usage")
async def memory(st: AdminState, q: dict[str, str], method: str) -> Response:
    from envoy.admin.v3 import memory_pb2

    rss = _rss_bytes()
    m = memory_pb2.Memory(allocated=rss, heap_size=rss, total_physical_bytes=rss)
    return Response(200, _to_json(m, defaults=True), JSON)


@route("/healthcheck/fail", "cause the server to fail health checks", "POST")
async def hc_fail(st: AdminState, q: dict[str, str], method: str) -> Response:
    st.health_failed = True
    await st.backend.set_health_failed(True)
    return Response(200, "OK\n")


@route("/healthcheck/ok", "cause the server to pass health checks", "POST")
async def hc_ok(st: AdminState, q: dict[str, str], method: str) -> Response:
    st.health_failed = False
    await st.backend.set_health_failed(False)
    return Response(200, "OK\n")


@route("/drain_listeners", "drain listeners", "POST")
async def drain(st: AdminState, q: dict[str, str], method: str) -> Response:
    inbound = "inboundonly" in q
    graceful = "graceful" in q
    st.draining = st.draining or not inbound
    await st.backend.drain_listeners(inbound, graceful)
    return Response(200, "OK\n")


@route("/reset_counters", "reset all counters to zero", "POST")
async def reset(st: AdminState, q: dict[str, str], method: str) -> Response:
    await st.backend.reset_counters()
    st.admin_stats.reset_counters()
    return Response(200, "OK\n")


_COMPONENTS = (
    "admin",
    "config",
    "connection",
    "conn_handler",
    "filter",
    "http",
    "main",
    "pool",
    "router",
    "runtime",
    "upstream",
    "misc",
)


@route("/logging", "query/change logging levels", "POST")
async def logging_(st: AdminState, q: dict[str, str], method: str) -> Response:
    from sofamesh.logs import LOG_LEVELS

    levels: dict[str, str] = {}
    if "level" in q:
        lvl = q["level"].lower()
        if lvl not in LOG_LEVELS:
            return Response(400, _logging_usage())
        levels["*"] = lvl
        levels.update({c: lvl for c in _COMPONENTS})
    elif "paths" in q:
        for spec in q["paths"].split(","):
            comp, _, lvl = spec.partition(":")
            if comp not in _COMPONENTS or lvl.lower() not in LOG_LEVELS:
                return Response(400, _logging_usage())
            levels[comp] = lvl.lower()
    else:
        for k, v in q.items():
            if k in _COMPONENTS and v.lower() in LOG_LEVELS:
                levels[k] = v.lower()
            elif k in _COMPONENTS and not v:
                return Response(400, _logging_usage())
        if q and not levels:
            return Response(400, _logging_usage())
    if levels:
        apply_log_levels(levels)
        await st.backend.set_log_levels(levels)
    return Response(200, _active_loggers())


def _logging_usage() -> str:
    return (
        "error: unknown logger level\n\n"
        "usage: /logging?<name>=<level> (change single level)\n"
        "usage: /logging?paths=name1:level1,name2:level2,... (change multiple levels)\n"
        "usage: /logging?level=<level> (change all levels)\n"
        "levels: trace debug info warning error critical off\n" + _active_loggers()
    )


def _active_loggers() -> str:
    from sofamesh.logs import EnvoyFormatter as _EnvoyFormatter

    lines = ["active loggers:"]
    for c in _COMPONENTS:
        lvl = logging.getLogger(f"sofamesh.{c}").getEffectiveLevel()
        lines.append(f"  {c}: {_EnvoyFormatter._LEVEL.get(lvl, 'off')}")
    return "\n".join(lines) + "\n"


@route("/reopen_logs", "reopen access logs", "POST")
async def reopen_logs(st: AdminState, q: dict[str, str], method: str) -> Response:
    await st.reopen_logs()
    return Response(200, "OK\n")


@route("/quitquitquit", "exit the server", "POST")
async def quit_(st: AdminState, q: dict[str, str], method: str) -> Response:
    st.quit.set()
    return Response(200, "OK\n")


async def dispatch(st: AdminState, method: str, target: str) -> Response:
    path, _, query = target.partition("?")
    q = dict(parse_qsl(query, keep_blank_values=True))
    entry = ROUTES.get(path)
    if entry is None:
        return Response(404, "invalid path. " + _usage())
    fn, need, _ = entry
    if need == "POST" and method != "POST":
        return Response(405, f"Method {method} not allowed, POST required.")
    if method not in ("GET", "HEAD", "POST"):
        return Response(405, "Method Not Allowed\n")
    try:
        return await fn(st, q, method)
    except Exception:  # an admin bug must not take the process down
        log.exception("admin %s failed", path)
        return Response(500, "internal error\n")
