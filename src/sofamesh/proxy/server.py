"""The sidecar Server: builds listeners and clusters from an Envoy v3 Bootstrap and runs them.

Contract (docs/ARCHITECTURE.md, "Server contract"): Server(bootstrap, stats, options);
await start(); .listeners, .clusters, .health_failed; await drain_listeners(); await stop().
Config is compiled here (Python, once); per-request work happens in sofamesh._core.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any

from sofamesh._core.http_proxy import HcmConfig
from sofamesh._core.stats import Store
from sofamesh._core.upstream import Cluster
from sofamesh.proxy import (
    dns,
    hot_restart,
    internal_listener,
    localities,
    sds,
    upstream_bind,
    zone_aware,
)
from sofamesh.proxy.cluster_build import ClusterRuntime, build_cluster
from sofamesh.proxy.errors import UnsupportedConfig
from sofamesh.proxy.filter_state import ConnState
from sofamesh.proxy.routes import compile_route_config

log = logging.getLogger("sofamesh.proxy")


def _bump(c: Any) -> None:
    c.value += 1
    c.used = True


def _listener_name(lst: Any) -> str:
    """A listener's stats name when it has no stat_prefix: `<ip>_<port>`, or a pipe's path
    (Envoy: listener./run/x.sock.downstream_cx_total), or `envoy_internal_<name>` for an
    internal listener (proxy/internal_listener.py)."""
    if lst.HasField("internal_listener"):
        return internal_listener.stat_name(lst)
    if lst.address.HasField("pipe"):
        return lst.address.pipe.path
    sa = lst.address.socket_address
    return f"{sa.address}_{sa.port_value}"


def _listener_path(li: int | str) -> str:
    """A static listener's index, or the path an xDS listener's errors start with."""
    return li if isinstance(li, str) else f"static_resources.listeners[{li}]"


def _network_spec(registry: Any, f: Any) -> Any:
    """The registered network filter a listener's filter names (by type URL, else name;
    Istio's own filters by their config type: filters/istio.py)."""
    return registry.lookup_filter(
        "network", f.name, f.typed_config if f.HasField("typed_config") else None
    )


def _norm_ip(ip: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return ip


@dataclass
class ListenerInfo:
    name: str
    address: tuple[str, int]
    config: Any  # envoy.config.listener.v3.Listener
    hcm: Any = None  # HcmConfig
    server: Any = None  # asyncio.Server
    direction: str = "UNSPECIFIED"  # INBOUND / OUTBOUND / UNSPECIFIED
    draining: bool = False


class _Unbound:
    """A server with no socket: what Server.check's loop returns for create_server, and a
    listener with bind_to_port false."""

    def __init__(self, host: str, port: int) -> None:
        self.sockets = [self]
        self._name = (host, port)

    def getsockname(self) -> tuple[str, int]:
        return self._name

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass

    def is_serving(self) -> bool:
        return True

    async def start_serving(self) -> None:
        pass


class _NoBindLoop:
    """The running loop, except that create_server binds nothing (Server.check)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def create_server(self, factory: Any, host: Any, port: Any, **kw: Any) -> _Unbound:
        return _Unbound(host, port)


class Server:
    def __init__(self, bootstrap: Any, stats: Store | None = None, options: Any = None):
        from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
            http_connection_manager_pb2,
        )

        self.bootstrap = bootstrap
        self.stats = stats if stats is not None else Store()
        self.options = options
        self.listeners: list[ListenerInfo] = []
        self._by_address: tuple | None = None  # listener_for's index
        self.defer_serving = False  # a pool worker waiting for the pool's health (start)
        self.clusters: dict[str, Cluster] = {}
        self._health_failed = False
        self._rt: dict[str, ClusterRuntime] = {}
        # cluster shape (xds_wire) -> what building it decided, for shapes whose cluster is
        # nothing but a Cluster object (_build_cluster)
        self._cluster_recipes: dict[bytes, tuple[dict[str, Any], Any, bool, int]] = {}
        self._access_logs: list[Any] = []  # FileAccessLog | access_loggers' loggers
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        # listeners whose terminal filter is not the HCM (dubbo_proxy, bolt_proxy,
        # tcp_proxy, auto): closed with their connections in stop()
        self.network_chains: list[Any] = []
        self.dynamic: Any = None  # sofamesh.proxy.dynamic.DynamicConfig with dynamic_resources
        # set by proxy.workers in a pool's worker: the main process's ADS stream feeds it
        self.xds_feed: Any = None  # proxy.pool_xds.WorkerFeed
        # active health checking (proxy.health_check): a LocalLink made by the first checked
        # cluster, or a RemoteLink set by proxy.workers (the main process checks)
        self.health_link: Any = None
        self._outlier_log: Any = None  # proxy.outlier.EventLog
        # set by proxy.workers in a pool's worker: outlier detection decides in the main
        # process (proxy.outlier.WorkerLink)
        self.outlier_link: Any = None
        # internal listeners by name (proxy/internal_listener.py), made at the first one
        self.internal: Any = None  # internal_listener.Registry
        # cluster_manager.upstream_bind_config: every cluster's bind unless it has its own
        cm = bootstrap.cluster_manager
        self.upstream_bind = (
            upstream_bind.UpstreamBind.parse(
                cm.upstream_bind_config, "cluster_manager.upstream_bind_config"
            )
            if cm.HasField("upstream_bind_config")
            else None
        )

    # ---------------------------------------------------------------- build
    def _build_clusters(self) -> None:
        for i, c in enumerate(self.bootstrap.static_resources.clusters):
            path = f"static_resources.clusters[{i}]"
            if c.name in self.clusters:
                raise UnsupportedConfig(f"{path}.name: duplicate cluster {c.name!r}")
            rt = self._build_cluster(c, path)
            self.clusters[c.name] = rt.cluster
            self._rt[c.name] = rt
        zone_aware.link(self)  # each cluster's zone routing watches the local cluster

    def _build_cluster(self, c: Any, path: str, shape: bytes | None = None) -> ClusterRuntime:
        """One cluster, not yet in `self.clusters` (proxy/cluster_build.py)."""
        return build_cluster(self, c, path, shape)

    def _per_filter(self, name: str, anycfg: Any, path: str) -> Any:
        from sofamesh.filters import registry

        spec = registry.lookup("http", name) or registry.lookup_filter("http", name, anycfg)
        if spec is not None and spec.extra.get("istio"):
            return None  # Istio's own per-route config: passed through (filters/istio.py)
        if spec is None:
            raise UnsupportedConfig(f"{path}: unknown HTTP filter {name!r}")
        compile_route = spec.extra.get("route_config")
        if compile_route is None:
            raise UnsupportedConfig(f"{path}: filter {name!r} has no per-route config")
        return compile_route(anycfg, {"stats": self.stats, "loop": self._loop, "path": path})

    # ---------------------------------------------------------------- check
    @classmethod
    def check(cls, bootstrap: Any, options: Any = None) -> None:
        """`--mode validate` (docs/ARCHITECTURE.md, optional Server hooks): runs start()'s
        build of clusters, route tables, filters and access logs without binding a socket
        or resolving DNS, and raises the UnsupportedConfig start() would raise."""

        def run() -> None:
            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(cls(bootstrap, Store(), options)._check())
            finally:
                loop.close()

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            run()
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as ex:  # inside a running loop: build on a thread
            ex.submit(run).result()

    async def _check(self) -> None:
        self._started = True
        self._loop = _NoBindLoop(asyncio.get_running_loop())  # type: ignore[assignment]
        try:
            self._build_clusters()
            if self.bootstrap.cluster_manager.HasField("load_stats_config"):
                from sofamesh.proxy.load_stats import check_config

                check_config(self.bootstrap)  # the reporter runs beside the workers
            for li, lst in enumerate(self.bootstrap.static_resources.listeners):
                await self._start_listener(li, lst, False)
        finally:
            await self.stop()

    # ---------------------------------------------------------------- run
    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._build_clusters()
        for rt in self._rt.values():
            if rt.dns_targets:
                await self._resolve(rt)
                rate = dns.refresh_rate(rt.cluster.config)
                rt.dns_task = self._loop.create_task(self._dns_loop(rt, rate))
        if self.health_link is None and self.bootstrap.HasField("dynamic_resources"):
            from sofamesh.proxy.health_check import LocalLink

            self.health_link = LocalLink(self.stats)  # for CDS clusters with health checks
        if self.health_link is not None:  # Envoy: clusters initialize after their first checks
            await self.health_link.start(
                [c.name for c in self.bootstrap.static_resources.clusters if c.health_checks]
            )
        from sofamesh.proxy import overload
        from sofamesh.proxy.overload_actions import OverloadActions

        # the overload manager's global connection limit (None: none to enforce)
        self.global_cx = overload.from_bootstrap(self.bootstrap, self.options)
        if self.global_cx is not None:
            self.global_cx.start(self._loop)
        # fixed_heap and its actions (stop_accepting_requests, disable_http_keepalive, ...)
        self.heap = OverloadActions.from_bootstrap(self, self.bootstrap)
        reuse_port = int(getattr(self.options, "concurrency", 1) or 1) > 1
        # a pool's worker serves only once it has the pool's current xDS config, and with
        # health-checked clusters the pool's current health (serve_all, by proxy.workers)
        serve = self.xds_feed is None or not self.bootstrap.HasField("dynamic_resources")
        self.defer_serving = bool(getattr(self.health_link, "clusters", None)) and hasattr(
            self.health_link, "current_flags"
        )
        for li, lst in enumerate(self.bootstrap.static_resources.listeners):
            await self._start_listener(li, lst, reuse_port, serve and not self.defer_serving)
        if self.bootstrap.HasField("dynamic_resources") or sds.needed(self):
            await self._start_xds()  # (SDS secrets of static listeners/clusters: proxy/sds.py)
        if self.heap is not None:
            self.heap.start(self._loop)
        if not serve and not self.defer_serving:
            await self.serve_all()

    async def serve_all(self) -> None:
        """Starts serving the listeners not yet serving."""
        for info in self.listeners:
            if info.server is not None and not info.server.is_serving():
                await info.server.start_serving()

    async def _start_xds(self) -> None:
        """dynamic_resources: the ADS client (sofamesh.xds) feeds sofamesh.proxy.dynamic.
        Returns once the initial fetch is done or timed out (Envoy's init: /ready and
        server.state stay INITIALIZING until then)."""
        from sofamesh.proxy.dynamic import DynamicConfig

        if (
            int(getattr(self.options, "concurrency", 1) or 1) > 1
            and self.xds_feed is None
            and self.bootstrap.HasField("dynamic_resources")
        ):  # (without dynamic_resources, each worker reads its SDS files / streams itself)
            raise UnsupportedConfig(
                "dynamic_resources: with --concurrency N > 1 the worker pool's main process "
                "holds the one xDS stream (sofamesh.proxy.workers); this Server has no feed"
            )
        self.dynamic = DynamicConfig(self)
        await self.dynamic.start()

    async def _start_listener(
        self, li: int, lst: Any, reuse_port: bool, serve: bool = True
    ) -> None:
        """Binds listener `lst` (see _listener_view for what its chain may hold)."""
        from envoy.config.core.v3 import base_pb2

        sa = lst.address.socket_address
        view = self._listener_view(li, lst)
        assert self._loop is not None
        srv: Any
        if lst.HasField("internal_listener"):  # reached by internal addresses only
            srv = await internal_listener.serve(
                self, lst.name, self.admit(view.protocol_factory, lst), _listener_path(li), serve
            )
            bound = srv.getsockname()
        elif lst.HasField("bind_to_port") and not lst.bind_to_port.value:
            # built, listed and counted, but no socket: a use_original_dst listener hands
            # it the connections to its address (Server.listener_for), as in Envoy
            srv = _Unbound(sa.address, sa.port_value)
            bound = (sa.address, sa.port_value)
        elif lst.address.HasField("pipe"):
            srv = await self._start_pipe(lst.address.pipe, view, serve, lst)
            bound = (lst.address.pipe.path, 0)
        else:
            srv = await hot_restart.listen(  # (on the previous epoch's socket, if any)
                self._loop,
                self.admit(view.protocol_factory, lst),
                lst.name or _listener_name(lst),
                sa.address,
                sa.port_value,
                reuse_port,
                serve,
            )
            bound = srv.sockets[0].getsockname()
        info = ListenerInfo(
            name=lst.name or _listener_name(lst),
            address=(bound[0], bound[1]),
            config=lst,
            hcm=view,
            server=srv,
            direction=base_pb2.TrafficDirection.Name(lst.traffic_direction),
        )
        self.listeners.append(info)
        g = self.stats.gauge("listener_manager.total_listeners_active")
        g.value = len(self.listeners)
        g.used = True

    async def _start_pipe(self, pipe: Any, view: Any, serve: bool, lst: Any) -> Any:
        """A Unix socket listener, as Envoy binds one: a file at the path is replaced,
        `@name` is in the abstract namespace, `mode` (when set) is the file's permissions.
        With several workers each binds its own socket, which the last one owns."""
        import os

        assert self._loop is not None
        path = pipe.path
        if path.startswith("@"):
            path = "\0" + path[1:]
        elif not isinstance(self._loop, _NoBindLoop):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        if isinstance(self._loop, _NoBindLoop):
            return _Unbound(pipe.path, 0)
        srv = await self._loop.create_unix_server(
            self.admit(view.protocol_factory, lst), path, backlog=1024, start_serving=serve
        )
        if pipe.mode and not path.startswith("\0"):
            os.chmod(path, pipe.mode)
        return srv

    def listener_for(self, addr: tuple[str, int]) -> Any:
        """The view of the listener at `addr` (a connection's original destination, for
        Listener.use_original_dst): the one on that IP and port, else one on 0.0.0.0 / ::
        and that port, else None (Envoy's findActiveListenerByAddress)."""
        idx = self._by_address
        if idx is None or idx[0] != len(self.listeners):
            exact: dict[tuple[str, int], Any] = {}
            wild: dict[int, Any] = {}
            for info in self.listeners:
                if info.hcm is None or not isinstance(info.address[1], int):
                    continue
                ip, port = info.address[0], info.address[1]
                if ip in ("0.0.0.0", "::"):
                    wild.setdefault(port, info.hcm)
                else:
                    exact.setdefault((_norm_ip(ip), port), info.hcm)
            idx = self._by_address = (len(self.listeners), exact, wild)
        view = idx[1].get((_norm_ip(addr[0]), addr[1]))
        return view if view is not None else idx[2].get(addr[1])

    def adopt(self, name: str, sock: Any) -> bool:
        """Hot restart: serve a connection the previous epoch handed over (proxy/hot_restart),
        as if listener `name` had just accepted it. False: no such listener here."""
        for li in self.listeners:
            if li.name == name and li.server is not None and not li.draining:
                factory = self.admit(li.hcm.protocol_factory, li.config)
                assert self._loop is not None
                self._loop.create_task(self._loop.connect_accepted_socket(factory, sock))
                return True
        log.warning("hot restart: a connection of listener %s: no such listener here", name)
        return False

    def adopt_tcp(self, name: str, ds: Any, up: Any, cluster: str, host: tuple) -> bool:
        """Hot restart: a tcp_proxy connection of listener `name` and its upstream connection,
        handed over together (proxy/hot_restart.py). False: not adopted (sockets closed)."""
        from sofamesh._core.rpc_tcp import TcpProxyConfig

        for li in self.listeners:
            if li.name == name and li.server is not None and not li.draining:
                for part in getattr(li.hcm, "parts", ()):
                    if isinstance(part, TcpProxyConfig):
                        return bool(part.adopt(ds, up, cluster, host))
        log.warning("hot restart: a tcp_proxy connection of listener %s: no such listener", name)
        ds.close()
        up.close()
        return False

    def admit(self, factory: Any, lst: Any) -> Any:
        """Listener `lst`'s protocol factory under the global connection limit, then the
        overload manager's reject_incoming_connections, if any (proxy/overload*.py), in
        the order Envoy's listener checks them."""
        name = lst.stat_prefix or _listener_name(lst)
        acts = getattr(self, "heap", None)
        if acts is not None and acts.rejects_connections():
            reject = self.stats.counter(f"listener.{name}.downstream_cx_overload_reject")
            factory = acts.reject_gate(factory, reject)
        gc = getattr(self, "global_cx", None)
        if gc is None:
            return factory
        overflow = self.stats.counter(f"listener.{name}.downstream_global_cx_overflow")
        return factory if lst.ignore_global_conn_limit else gc.wrap(factory, overflow)

    def _listener_view(self, li: int | str, lst: Any) -> Any:
        """What a listener's socket serves: its one plain filter chain, or, with several
        chains, TLS or listener filters, a `listener_chains.ListenerChains` that picks a
        chain per connection. Network chains are added to `network_chains` (closed in stop())."""
        from sofamesh.proxy import listener_chains

        path = _listener_path(li)
        sa = lst.address.socket_address
        if not sa.address and not (
            lst.address.HasField("pipe") or lst.HasField("internal_listener")
        ):
            raise UnsupportedConfig(f"{path}.address: only socket and pipe addresses are supported")
        if listener_chains.needs_chains(lst):
            stat_name = lst.stat_prefix or _listener_name(lst)
            view = listener_chains.build(self, li, lst, path, stat_name)
            self.network_chains.append(view)
            return view
        return self._chain_view(li, lst, 0, lst.filter_chains[0], f"{path}.filter_chains[0]")

    def _chain_view(self, li: int | str, lst: Any, ci: int, chain: Any, cpath: str) -> Any:
        """One filter chain: its last filter is a terminal network filter
        (http_connection_manager, or one from the filter registry: dubbo_proxy, bolt_proxy,
        tcp_proxy, auto); filters before it may only be pass-through ones."""
        from sofamesh._core.rpc_tcp import TcpProxyConfig
        from sofamesh.filters import registry
        from sofamesh.filters.network.sniff import Chain

        fpath = f"{cpath}.filters"
        if not chain.filters:
            raise UnsupportedConfig(f"{fpath}: no terminal network filter")
        last = len(chain.filters) - 1
        gates = []  # filters that check a connection before the terminal one (network rbac)
        # what filters set on each connection (set_filter_state, istio_authn), read by the
        # chain's RBAC filter_state rules; every setter has run before the first byte
        # (an internal listener's connections start with what their dialler shared)
        conn_state = ConnState(inherit=internal_listener.is_internal(lst))
        for fi, f in enumerate(chain.filters[:last]):
            spec = _network_spec(registry, f)
            if spec is not None and spec.extra.get("conn_state"):
                for key, get, read_only, skip, share in spec.factory(
                    f.typed_config, {"path": f"{fpath}[{fi}]"}
                ):
                    conn_state.add(key, get, read_only, skip, share)
                continue
            if spec is not None and spec.extra.get("wraps"):
                gates.append(
                    (
                        fi,
                        spec.factory(
                            f.typed_config,
                            {
                                "stats": self.stats,
                                "loop": self._loop,
                                "path": f"{fpath}[{fi}]",
                                "server": self,
                            },
                        ),
                    )
                )
                continue
            if spec is None or not spec.passthrough:
                raise UnsupportedConfig(
                    f"{fpath}[{fi}]: network filter {f.name!r} is not supported (one terminal "
                    "network filter per chain; list several under sofamesh.filters.network.auto "
                    "to sniff the protocol)"
                )
        stat_name = lst.stat_prefix or _listener_name(lst)
        _, built = self._build_terminal(
            li, lst, last, chain.filters[last], stat_name, f"{fpath}[{last}]"
        )
        if isinstance(built, HcmConfig):
            if gates:
                raise UnsupportedConfig(
                    f"{fpath}[{gates[0][0]}]: network filter {chain.filters[gates[0][0]].name!r} "
                    "in front of an http_connection_manager is not implemented by sofamesh"
                )
            view: Any = built
            built.conn_state = conn_state or None
        else:
            view = built if isinstance(built, Chain) else Chain([built])
            view.gates = [g for _, g in gates]
            for _, g in gates:
                g.conn_state = conn_state or None
            if isinstance(built, TcpProxyConfig):  # shares with its upstream connections
                built.conn_state = conn_state if conn_state.sharing else None
            self.network_chains.append(view)
        return view

    def _build_terminal(
        self, li: int | str, lst: Any, fi: int, f: Any, stat_name: str, fpath: str = ""
    ) -> tuple[str, Any]:
        """(sniff kind, built filter) for a terminal network filter. Filters that nest
        others (auto) build them through ctx["build_terminal"](filter, path)."""
        from sofamesh.filters import registry

        fpath = fpath or f"{_listener_path(li)}.filter_chains[0].filters[{fi}]"
        spec = _network_spec(registry, f)
        if spec is None or not spec.extra.get("terminal"):
            raise UnsupportedConfig(f"{fpath}: network filter {f.name!r} is not supported")
        built = spec.factory(
            f.typed_config,
            {
                "stats": self.stats,
                "loop": self._loop,
                "clusters": self.clusters,
                "path": fpath,
                "server": self,  # the HCM compiles against the whole server
                "listener": lst,
                "stat_name": stat_name,
                "build_terminal": lambda inner, ipath: self._build_terminal(
                    li, lst, fi, inner, stat_name, ipath
                ),
            },
        )
        return spec.extra.get("sniff", "tcp"), built

    async def _resolve(self, rt: ClusterRuntime) -> None:
        assert self._loop is not None
        hosts = []
        cfg = rt.cluster.config
        logical = cfg is not None and cfg.type == 2  # LOGICAL_DNS: first address only
        ttls = []
        for name, port, w, attrs in rt.dns_targets:
            try:
                if rt.dns_cfg is not None:  # its own resolvers, or TTLs wanted (proxy/dns.py)
                    answer = await dns.resolve(name, rt.dns_cfg)
                    ttls += [t for _, t in answer]
                    ips = [a for a, _ in answer]
                else:
                    infos = await self._loop.getaddrinfo(
                        name, port, type=socket.SOCK_STREAM, family=socket.AF_INET
                    )
                    ips = [str(info[4][0]) for info in infos]
            except (OSError, dns.DnsError) as e:
                log.warning("cluster %s: DNS resolution of %s failed: %s", rt.cluster.name, name, e)
                _bump(self.stats.counter(f"cluster.{rt.cluster.name}.update_failure"))
                return
            seen = set()
            for ip in ips:
                if ip not in seen:
                    seen.add(ip)
                    hosts.append(localities.make_host(ip, port, w, attrs, name))
                    if logical:
                        break
        rt.dns_ttl = float(min(ttls)) if ttls else 0.0
        _bump(self.stats.counter(f"cluster.{rt.cluster.name}.update_success"))
        rt.cluster.set_hosts(hosts)

    async def _dns_loop(self, rt: ClusterRuntime, rate: float) -> None:
        """Resolves again every `rate` (dns_refresh_rate), or, with respect_dns_ttl, when
        the last answer's TTL runs out (Envoy's; an answer without a TTL: the rate)."""
        respect = rt.cluster.config is not None and rt.cluster.config.respect_dns_ttl
        while True:
            await asyncio.sleep(rt.dns_ttl if respect and rt.dns_ttl > 0 else rate)
            await self._resolve(rt)

    # ---------------------------------------------------------------- live updates
    def set_route_config(self, listener: str, route_config: Any) -> None:
        """Compiles an envoy.config.route.v3.RouteConfiguration and swaps it into the named
        listener's HTTP connection manager (what RDS does). Requests already routed keep
        their route; the next request on any connection uses the new table. Routes to
        clusters that do not exist answer 503 (`http.<prefix>.no_cluster`), as with RDS."""
        for li in self.listeners:
            if li.name == listener:
                li.hcm.routes = compile_route_config(
                    route_config,
                    per_filter=self._per_filter,
                    path=f"route_config[{route_config.name or listener}]",
                    stats=self.stats,
                )
                return
        raise KeyError(f"no listener named {listener!r}")

    def set_endpoints(self, cluster: str, load_assignment: Any) -> None:
        """Replaces a cluster's hosts from an envoy.config.endpoint.v3.ClusterLoadAssignment
        (what EDS does). Hosts that stay keep their connection pools; removed hosts' idle
        connections close. Endpoints marked UNHEALTHY, DRAINING or TIMEOUT are kept but
        not chosen."""
        cl = self.clusters[cluster]
        hosts = []
        for e in load_assignment.endpoints:
            for lbe in e.lb_endpoints:
                sa = lbe.endpoint.address.socket_address
                w = lbe.load_balancing_weight.value if lbe.HasField("load_balancing_weight") else 1
                addr = internal_listener.host_address(lbe.endpoint.address)
                address, port = addr if addr is not None else (sa.address, sa.port_value)
                h = localities.make_host(address, port, w, localities.endpoint_attrs(e, lbe))
                h.healthy = lbe.health_status not in (2, 3, 4)  # UNHEALTHY, DRAINING, TIMEOUT
                hosts.append(h)
        internal_listener.adopt_hosts(self, cl, hosts)
        localities.set_assignment(cl, load_assignment, hosts)
        if cl.tls is not None:
            cl.tls.learn(load_assignment)

    @property
    def health_failed(self) -> bool:
        return self._health_failed

    @health_failed.setter
    def health_failed(self, failed: bool) -> None:
        """admin /healthcheck/fail and /ok. While failed, as Envoy's drain manager says
        for every listener (drain_type DEFAULT): connections close after their next
        response (`connection: close`, HTTP/2 GOAWAY), as when listeners drain."""
        self._health_failed = failed
        for li in self.listeners:
            if li.hcm is not None:
                li.hcm.draining = failed or li.draining

    async def drain_listeners(self, inbound_only: bool = False, graceful: bool = False) -> None:
        """Stops accepting; graceful: existing connections get `connection: close` on their
        next response and close after it."""
        for li in self.listeners:
            if inbound_only and li.direction != "INBOUND":
                continue
            li.draining = True
            li.hcm.draining = True
            if li.server is not None:
                li.server.close()
            if not graceful and isinstance(li.hcm, HcmConfig):
                for c in list(li.hcm.conns):
                    # idle connections close now; busy ones close after their response
                    if not c.busy():
                        c.close()

    def reopen_logs(self) -> None:
        """Reopens every access log file (admin POST /reopen_logs, SIGUSR1)."""
        for al in self._access_logs:
            al.reopen()

    async def stop(self) -> None:
        heap = getattr(self, "heap", None)
        if heap is not None:
            heap.stop()
        global_cx = getattr(self, "global_cx", None)
        if global_cx is not None:
            global_cx.stop()
        if self.dynamic is not None:
            await self.dynamic.stop()
        if self.health_link is not None:
            self.health_link.stop()
        for rt in self._rt.values():
            if rt.dns_task is not None:
                rt.dns_task.cancel()
        for li in self.listeners:
            li.hcm.draining = True
            if li.server is not None:
                li.server.close()
        for view in self.network_chains:
            view.close_all()
        for li in self.listeners:
            if isinstance(li.hcm, HcmConfig):
                for c in list(li.hcm.conns):
                    c.close()
        for cl in self.clusters.values():
            if cl.outlier is not None:
                cl.outlier.stop()
            for h in cl.hosts:
                for c in list(h.idle):
                    c.close()
        if self._outlier_log is not None:
            self._outlier_log.close()
        for al in self._access_logs:
            al.close()
        self._access_logs = []
        for li in self.listeners:
            if li.server is not None:
                try:
                    await asyncio.wait_for(li.server.wait_closed(), 1.0)
                except TimeoutError:
                    log.debug("listener %s: connections still closing after 1 s", li.name)
        await asyncio.sleep(0)
