"""Dynamic clusters, endpoints, listeners and routes: what the xDS client applies to a Server.

The `Applier` of sofamesh.xds.client. Each resource is validated as a bootstrap is
(`config.validate.validate_resource`, then the Server's own build), and either applied or
reported by name (the client NACKs with it) while its last good version keeps serving.
Nothing live is mutated: a new cluster, route table or listener view is built aside and
swapped in by one reference, so requests in flight finish on what they started with and
no connection is dropped:

    CDS  -> Server._build_cluster -> warming (EDS: until its endpoints, DNS: until the first
            resolution) -> server.clusters[name] = cluster   (looked up by name per request)
    EDS  -> Cluster.set_hosts (hosts that stay keep their pools)
    LDS  -> Server._listener_view -> warming (HCM rds: until the route config of every
            chain's HCM has arrived) -> the listening
            socket's _Acceptor.view = view (same address: the socket stays; else a new
            socket starts serving and the old one closes); the old view drains
    RDS  -> compile_route_config -> HcmConfig.routes = table, in each chain whose HCM names
            that route config (chains of one listener may name different ones, as in
            Envoy: one subscription a name, whoever names it)
    SRDS -> scopes (xds/scoped.py); RDS of each scope's route config -> its virtual hosts;
            HCMs with scoped_routes get one table of every scope's hosts

A draining view gets no new connection; its HTTP/1 connections close after their next
response (`connection: close`), and whatever is left closes after --drain-time-s, as
Envoy's listener drain.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

from sofamesh._core import xds_wire
from sofamesh._core.http_proxy import HcmConfig
from sofamesh.proxy import hot_restart, internal_listener, localities, sds, zone_aware
from sofamesh.proxy.dynamic_state import (
    _ATTEMPT,
    _CLUSTER_UNSHAPED,
    _EDS_STATS,
    _EMPTY,
    _NO_REBUILD,
    _RC_BARE,
    _RDS_STATS,
    _REJECTED,
    _SUCCESS,
    _Acceptor,
    _bump,
    _chain_view,
    _cluster_tls,
    _DynCluster,
    _DynListener,
    _eds_bump,
    _Held,
    _problems_text,
    _release_free_memory,
    _tls_pending,
    _view_tls,
    _warm,
)
from sofamesh.proxy.errors import UnsupportedConfig
from sofamesh.proxy.routes import compile_route_config, compile_vhosts
from sofamesh.proxy.xds_shapes import (
    _scoped_of,
    hosts_from_assignment,
    nested_rds_path,
    rds_chains,
    single_hcm,
)
from sofamesh.xds.checks import ResourceChecks
from sofamesh.xds.client import CDS, EDS, LDS, RDS, SDS, SRDS, AdsClient, Update, gc_paused
from sofamesh.xds.scoped import Scopes, check_domains

log = logging.getLogger("sofamesh.xds")


class DynamicConfig:
    """Dynamic resources of one Server; `start()` runs the ADS client until initialized."""

    def __init__(self, server: Any) -> None:
        from sofamesh.xds.settings import AdsSettings

        self.server = server
        self.stats = server.stats
        self.settings = AdsSettings.from_bootstrap(server.bootstrap)
        self.static_clusters = {c.name for c in server.bootstrap.static_resources.clusters}
        self.static_listeners = {li.name for li in server.listeners}
        self.active_clusters: dict[str, _DynCluster] = {}
        self.warming_clusters: dict[str, _DynCluster] = {}
        self.endpoints: dict[str, _Held] = {}
        self.active_listeners: dict[str, _DynListener] = {}
        self.warming_listeners: dict[str, _DynListener] = {}
        self.draining: list[Any] = []  # views still finishing their connections
        self.routes: dict[str, _Held] = {}
        self.type_versions: dict[str, str] = {}
        # PERF(benchmarks/xds_scale.py): the clusters of each EDS name, and the names EDS
        # asks for, kept as clusters come and go: finding them by scanning every cluster
        # made each endpoint update O(clusters) and a 10k-service start O(clusters^2)
        # (40% of it).
        self._eds_index: dict[str, set[str]] = {}  # EDS name -> cluster names
        self._names: dict[str, frozenset[str]] = {}  # names(type), cleared on any change
        self._sources: dict[str, dict[str, str]] = {}  # sources(type), cleared with _names
        self.checks = ResourceChecks()
        self._eds_sources: dict[bytes, str] = {}  # cluster shape -> its EDS source's key
        self._compiled_vhosts: dict[str, dict[bytes, tuple]] = {}  # route config -> reuse
        self.static_rds: list[tuple[Any, Any, str]] = []  # (chain's HcmConfig, hcm proto, name)
        self.static_rds_sources: dict[str, str] = {}  # route config name -> source key
        self.static_scoped: list[tuple[Any, Any]] = []  # (ListenerInfo, hcm proto)
        self.scopes = Scopes()
        # a worker of a pool is fed by the main process's stream (proxy.pool_xds.WorkerFeed)
        feed = getattr(server, "xds_feed", None)
        self.client: Any = (
            feed.bind(self) if feed is not None else AdsClient(self.settings, self, self.stats)
        )
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        for li in self.server.listeners:  # static listeners whose HCMs use rds
            for index, name, hcm, path in rds_chains(li.config):
                self.static_rds.append((_chain_view(li.hcm, index), hcm, name))
                key = self.settings.key_of(
                    hcm.rds.config_source, f"{path}.typed_config.rds.config_source"
                )
                if key != "ads":
                    self.static_rds_sources[name] = key
            hcm = single_hcm(li.config)
            if _scoped_of(hcm):
                self.static_scoped.append((li, hcm))
        self.client.start()
        await self.client.initialized.wait()
        self._gauges()
        _release_free_memory()
        gc.freeze()  # the initial config is long-lived: collections skip it (gc_paused)

    async def stop(self) -> None:
        await self.client.stop()
        for t in list(self._tasks):
            t.cancel()
        for dc in [*self.active_clusters.values(), *self.warming_clusters.values()]:
            self._cancel_dns(dc)
        for dl in self.warming_listeners.values():
            if dl.server is not None and (
                dl.name not in self.active_listeners
                or self.active_listeners[dl.name].server is not dl.server
            ):
                dl.server.close()
        for view in self.draining:
            self._close_view(view)

    # ------------------------------------------------------------ Applier protocol
    def names(self, type_url: str) -> frozenset[str]:
        # PERF(benchmarks/xds_scale.py): the client asks after every response; at 10,000
        # services recomputing them cost ~3 ms of each endpoint update
        got = self._names.get(type_url)
        if got is None:
            got = self._names[type_url] = frozenset(self._compute_names(type_url))
        return got

    def sources(self, type_url: str) -> dict[str, str]:
        """{name: source key} of the EDS / RDS names that do not come over ADS (a cluster's
        eds_config, an HCM's rds.config_source naming api_config_source or a path)."""
        got = self._sources.get(type_url)
        if got is None:
            got = self._sources[type_url] = self._compute_sources(type_url)
        return got

    def stat_scopes(self, type_url: str, name: str) -> list[str]:
        """Stat scopes of EDS / RDS resource `name` (its clusters, its HCMs' rds scopes)."""
        if type_url == EDS:
            return [f"cluster.{dc.name}" for dc in self._eds_users(name)]
        prefixes = dict.fromkeys(prefix for _, _, prefix in self._rds_users(name))
        return [f"http.{prefix}.rds.{name}" for prefix in prefixes]

    def _compute_sources(self, type_url: str) -> dict[str, str]:
        out: dict[str, str] = {}
        if type_url == SDS:  # secrets named by TLS contexts (proxy/sds.py)
            return sds.manager(self.server).sources()
        if type_url == EDS:
            for dc in [*self.active_clusters.values(), *self.warming_clusters.values()]:
                if dc.eds_name and dc.eds_source != "ads":
                    out[dc.eds_name] = dc.eds_source
        elif type_url == RDS:
            out.update(self.static_rds_sources)
            for dl in [*self.active_listeners.values(), *self.warming_listeners.values()]:
                out.update((n, k) for n, k in dl.rds_sources.items() if k != "ads")
        return out

    def _compute_names(self, type_url: str) -> set[str]:
        if type_url == SDS:
            return sds.manager(self.server).names()
        if type_url == EDS:
            return {
                dc.eds_name
                for dc in [*self.active_clusters.values(), *self.warming_clusters.values()]
                if dc.eds_name
            }
        scoped = bool(self._scoped_users())
        if type_url == SRDS:
            return {"*"} if scoped else set()
        names = {n for _, _, n in self.static_rds}
        for dl in [*self.active_listeners.values(), *self.warming_listeners.values()]:
            names.update(n for n, _, _ in dl.rds)
        if scoped:
            names.update(self.scopes.route_keys())
        return names

    def warming(self, kind: str) -> int:
        # TLS contexts waiting for an SDS secret hold the initial fetch as warming
        # clusters / listeners do (Envoy's init waits for their secrets)
        tls_waiting = sds.manager(self.server).pending(server_side=kind != "clusters")
        if kind == "clusters":
            return len(self.warming_clusters) + tls_waiting
        static_waiting = sum(1 for _, _, n in self.static_rds if n not in self.routes)
        if not self.scopes.ready():
            static_waiting += len(self.static_scoped)
        return len(self.warming_listeners) + static_waiting + tls_waiting

    def end_warming(self, kind: str) -> None:
        if kind == "clusters":
            for dc in list(self.warming_clusters.values()):
                self._activate_cluster(dc, force=True)
        else:
            for dl in list(self.warming_listeners.values()):
                # (one still waiting for its SDS secrets stays warming: _activate_listener)
                t = asyncio.get_running_loop().create_task(self._activate_listener(dl))
                self._keep(t)
        self._gauges()

    async def apply(self, up: Update) -> dict[str, str]:
        # a pool's worker is handed updates here, not through AdsClient.apply
        with gc_paused(up.big):
            return await self._apply(up)

    async def _apply(self, up: Update) -> dict[str, str]:
        self.type_versions[up.type_url] = up.version
        if up.type_url != EDS:  # listeners, scopes and clusters decide the names
            self._names.clear()
            self._sources.clear()
        if up.type_url == CDS:
            errors = self._apply_clusters(up)
        elif up.type_url == EDS:
            errors = self._apply_endpoints(up)
        elif up.type_url == LDS:
            errors = await self._apply_listeners(up)
        elif up.type_url == SDS:
            errors = sds.manager(self.server).apply(up)
            await self._secrets_arrived()
        elif up.type_url == SRDS:
            errors = self.scopes.apply(up, _Held)
            await self._refresh_scoped()
        else:
            errors = await self._apply_routes(up)
        self._gauges()
        return errors

    # ------------------------------------------------------------ clusters (CDS)
    def _apply_clusters(self, up: Update) -> dict[str, str]:
        errors = {}
        for name, (version, c) in up.resources.items():
            try:
                if name in self.static_clusters:
                    raise UnsupportedConfig(
                        f"'{name}' is a static cluster and cannot be added or updated by CDS"
                    )
                raw = c.SerializeToString(deterministic=True)
                cur = self.warming_clusters.get(name) or self.active_clusters.get(name)
                if cur is not None and cur.raw == raw:
                    continue  # unchanged: no rebuild, its version stays (Envoy)
                # without the values no rule and no decision reads (checks.py, _build_cluster)
                wire = up.wire.get(name)
                shape = None
                if wire is not None and c.name:
                    shape = xds_wire.strip_fields(wire, _CLUSTER_UNSHAPED)
                problems = self.checks.check(c, shape)
                if problems:
                    raise UnsupportedConfig(_problems_text(problems))
                rt = self.server._build_cluster(c, "", shape)
                eds, eds_source = None, "ads"
                if c.type == 3:  # EDS
                    eds = c.eds_cluster_config.service_name or name
                    known = self._eds_sources.get(shape) if shape is not None else None
                    if known is not None:
                        eds_source = known
                    else:
                        eds_source = self.settings.key_of(
                            c.eds_cluster_config.eds_config, "eds_cluster_config.eds_config"
                        )
                        if shape is not None:
                            if len(self._eds_sources) >= 1024:
                                self._eds_sources.pop(next(iter(self._eds_sources)))
                            self._eds_sources[shape] = eds_source
            except (UnsupportedConfig, ValueError) as e:
                errors[name] = f"Error adding/updating cluster(s) {name}: {str(e).lstrip('.')}"
                continue
            self._add_cluster(_DynCluster(name, version, raw, rt, eds, eds_source=eds_source))
        gone = list(up.removed)
        if up.full_state:
            gone = [
                n for n in [*self.active_clusters, *self.warming_clusters] if n not in up.resources
            ]
        for n in dict.fromkeys(gone):
            self._remove_cluster(n)
        return errors

    def _eds_users(self, eds_name: str) -> list[_DynCluster]:
        """Active and warming clusters fed by EDS resource `eds_name` (a cluster being
        replaced may be both)."""
        out = []
        for n in self._eds_index.get(eds_name, ()):
            for dc in (self.active_clusters.get(n), self.warming_clusters.get(n)):
                if dc is not None and dc.eds_name == eds_name:
                    out.append(dc)
        return out

    def _add_cluster(self, dc: _DynCluster) -> None:
        self._names.clear()
        self._sources.clear()
        if dc.eds_name is not None:
            self._eds_index.setdefault(dc.eds_name, set()).add(dc.name)
            # shown from the start, zeros included (Envoy); PERF: a StatGroup (stats.pyx)
            dc.eds_stats = self.stats.group(f"cluster.{dc.name}.", _EDS_STATS)
        old = self.warming_clusters.pop(dc.name, None)
        if old is not None:
            self._cancel_dns(old)
        if dc.eds_name is not None:
            held = self.endpoints.get(dc.eds_name)
            if held is not None:  # an update of a cluster whose endpoints are known
                localities.set_assignment(dc.rt.cluster, held.msg, hosts_from_assignment(held.msg))
                if dc.rt.cluster.tls is not None:  # transport_socket_matches by metadata
                    dc.rt.cluster.tls.learn(held.msg)
                self._activate_cluster(dc)
            else:
                self.warming_clusters[dc.name] = dc
            return
        if dc.rt.dns_targets:
            self.warming_clusters[dc.name] = dc
            dc.task = asyncio.get_running_loop().create_task(self._first_resolution(dc))
            return
        self._activate_cluster(dc)

    async def _first_checks(self, dc: _DynCluster) -> None:
        await dc.rt.cluster.wait_warm()
        if self.warming_clusters.get(dc.name) is dc:
            self._activate_cluster(dc)
            self._gauges()
            self.client.poke()

    async def _first_resolution(self, dc: _DynCluster) -> None:
        await self.server._resolve(dc.rt)
        if self.warming_clusters.get(dc.name) is dc:
            self._activate_cluster(dc)
            self._gauges()
            self.client.poke()

    async def _secrets_arrived(self) -> None:
        """Listeners and clusters that warmed only for their SDS secrets go active (Envoy)."""
        for dc in list(self.warming_clusters.values()):
            if dc.tls_wait and not _tls_pending(_cluster_tls(dc.rt.cluster)):
                dc.tls_wait = False
                self._activate_cluster(dc)
        for dl in list(self.warming_listeners.values()):
            if dl.tls_wait and not _tls_pending(_view_tls(dl.view)):
                dl.tls_wait = False
                await self._activate_listener(dl)

    def _activate_cluster(self, dc: _DynCluster, force: bool = False) -> None:
        srv = self.server
        if _tls_pending(_cluster_tls(dc.rt.cluster)):
            # until its secrets arrive (_secrets_arrived), whatever the initial fetch does
            dc.tls_wait = True
            self.warming_clusters[dc.name] = dc
            return
        if not force and not getattr(dc.rt.cluster, "hc_warm", _warm)():
            # active health checks: warm until every host had its first check (Envoy)
            self.warming_clusters[dc.name] = dc
            dc.task = asyncio.get_running_loop().create_task(self._first_checks(dc))
            return
        self.warming_clusters.pop(dc.name, None)
        prev = self.active_clusters.get(dc.name)
        old_rt = srv._rt.get(dc.name)
        srv.clusters[dc.name] = dc.rt.cluster  # requests look clusters up by name
        srv._rt[dc.name] = dc.rt
        self.active_clusters[dc.name] = dc
        if dc.rt.dns_targets and dc.rt.dns_task is None:
            from sofamesh.proxy.dns import refresh_rate

            rate = refresh_rate(dc.config)
            dc.rt.dns_task = asyncio.get_running_loop().create_task(srv._dns_loop(dc.rt, rate))
        if prev is not None and old_rt is not None and old_rt is not dc.rt:
            self._retire(old_rt)
        _bump(
            self.stats,
            "cluster_manager.cluster_modified" if prev else "cluster_manager.cluster_added",
        )

    def _retire(self, rt: Any) -> None:
        """A replaced or removed cluster: no new requests reach it; its idle connections
        close, busy ones finish their request."""
        if rt.dns_task is not None:
            rt.dns_task.cancel()
        sds.manager(self.server).forget(_cluster_tls(rt.cluster))  # its secrets: no longer asked
        zone_aware.forget(self.server, rt.cluster)  # no longer told of the local cluster
        if getattr(rt.cluster, "outlier", None) is not None:  # its detector stops (outlier.py)
            rt.cluster.outlier.stop()
        for h in rt.cluster.hosts or ():
            for c in list(h.idle):
                c.close()

    def _cancel_dns(self, dc: _DynCluster) -> None:
        if dc.task is not None:
            dc.task.cancel()

    def _remove_cluster(self, name: str) -> None:
        self._names.clear()
        self._sources.clear()
        w = self.warming_clusters.pop(name, None)
        if w is not None:
            self._cancel_dns(w)
        dc = self.active_clusters.pop(name, None)
        for gone in (w, dc):
            if gone is not None and gone.eds_name is not None:
                self._eds_index.get(gone.eds_name, set()).discard(name)
        if dc is not None:
            self.server.clusters.pop(name, None)
            if self.server.health_link is not None:  # its health checks stop
                self.server.health_link.remove(name)
            rt = self.server._rt.pop(name, None)
            if rt is not None:
                self._retire(rt)
            _bump(self.stats, "cluster_manager.cluster_removed")

    # ------------------------------------------------------------ endpoints (EDS)
    def _apply_endpoints(self, up: Update) -> dict[str, str]:
        errors = {}
        for name, (version, cla) in up.resources.items():
            users = self._eds_users(name)
            for dc in users:
                _eds_bump(dc, _ATTEMPT)
            # PERF(benchmarks/xds_scale.py): a plain assignment (no map field, so its bytes
            # are its deterministic form) is checked and read from its bytes in one pass
            wire = up.wire.get(name)
            plain = xds_wire.plain_assignment(wire) if wire is not None else None
            raw = (
                cla.SerializeToString(deterministic=True) if wire is None or plain is None else wire
            )
            held = self.endpoints.get(name)
            if (
                held is not None
                and held.raw == raw
                and not any(dc.name in self.warming_clusters for dc in users)
            ):
                for dc in users:
                    _eds_bump(dc, _NO_REBUILD)
                continue
            try:
                if plain is not None:
                    hosts = plain[1]
                else:
                    problems = self.checks.check(cla)
                    if problems:
                        raise UnsupportedConfig(_problems_text(problems))
                    hosts = hosts_from_assignment(cla)  # every address checked before a change
            except (UnsupportedConfig, ValueError) as e:
                errors[name] = f"ClusterLoadAssignment {name}: {e}"
                for dc in users:
                    _eds_bump(dc, _REJECTED)
                continue
            self.endpoints[name] = _Held(version, cla, raw, lazy=True)
            for i, dc in enumerate(users):
                # a Host carries its cluster's pools: each cluster gets its own
                if i == 0:
                    mine = hosts
                elif plain is not None:
                    again = xds_wire.plain_assignment(raw)
                    assert again is not None  # the same bytes
                    mine = again[1]
                else:
                    mine = hosts_from_assignment(cla)
                if plain is None:
                    internal_listener.adopt_hosts(self.server, dc.rt.cluster, mine)
                    localities.set_assignment(dc.rt.cluster, cla, mine)
                else:  # IP addresses only, no policy: Envoy's overprovisioning factor
                    dc.rt.cluster.overprovisioning = localities.ENVOY_OVERPROVISIONING
                    dc.rt.cluster.set_hosts(mine)
                if dc.rt.cluster.tls is not None:  # transport_socket_matches by metadata
                    dc.rt.cluster.tls.learn(cla)
                _eds_bump(dc, _SUCCESS)
                if not cla.endpoints:
                    _eds_bump(dc, _EMPTY)
                if dc.name in self.warming_clusters:
                    self._activate_cluster(dc)
        for name in up.removed:  # Delta: the assignment is gone, so are its hosts
            self.endpoints.pop(name, None)
            for dc in self._eds_users(name):
                dc.rt.cluster.set_hosts([])
        return errors

    # ------------------------------------------------------------ listeners (LDS)
    async def _apply_listeners(self, up: Update) -> dict[str, str]:
        errors = {}
        for name, (version, lst) in up.resources.items():
            try:
                await self._set_listener(name, version, lst)
            except (UnsupportedConfig, ValueError, OSError) as e:
                errors[name] = f"Error adding/updating listener(s) {name}: {str(e).lstrip('.')}"
        gone = list(up.removed)
        if up.full_state:
            gone = [
                n
                for n in [*self.active_listeners, *self.warming_listeners]
                if n not in up.resources
            ]
        for n in dict.fromkeys(gone):
            self._remove_listener(n)
        return errors

    async def _set_listener(self, name: str, version: str, lst: Any) -> None:
        if name in self.static_listeners:
            raise UnsupportedConfig(f"'{name}' is a static listener and cannot be updated by LDS")
        raw = lst.SerializeToString(deterministic=True)
        cur = self.warming_listeners.get(name) or self.active_listeners.get(name)
        if cur is not None and cur.raw == raw:
            return  # unchanged: its version stays (Envoy)
        problems = self.checks.check(lst)
        if problems:
            raise UnsupportedConfig(_problems_text(problems))
        if lst.HasField("api_listener"):
            raise UnsupportedConfig("api_listener: API listeners are for gRPC clients")
        nested = nested_rds_path(lst)
        if nested is not None:
            raise UnsupportedConfig(
                f"{nested}: rds of an http_connection_manager nested in another filter is not "
                "implemented by sofamesh (a chain's terminal one is)"
            )
        srv = self.server
        n_chains = len(srv.network_chains)
        view = srv._listener_view("", lst)
        if len(srv.network_chains) > n_chains:  # dynamic views are tracked here, not there
            del srv.network_chains[n_chains:]
        rds: list[tuple[str, Any, Any]] = []
        rds_sources: dict[str, str] = {}
        for index, rname, rhcm, path in rds_chains(lst):
            spath = f"{path}.typed_config.rds.config_source"
            key = self.settings.key_of(rhcm.rds.config_source, spath)
            if rds_sources.setdefault(rname, key) != key:
                raise UnsupportedConfig(
                    f"{spath}: route config {rname!r} from two config sources in one listener "
                    "is not implemented by sofamesh"
                )
            rds.append((rname, _chain_view(view, index), rhcm))
        hcm = single_hcm(lst)
        sa = lst.address.socket_address
        internal = lst.HasField("internal_listener")  # no socket (proxy/internal_listener.py)
        addr = (f"envoy://{name}/", 0) if internal else (sa.address, sa.port_value)
        active = self.active_listeners.get(name)
        old_warming = self.warming_listeners.pop(name, None)
        if old_warming is not None and (active is None or old_warming.server is not active.server):
            old_warming.server.close()
        if active is not None and active.address == addr:
            acceptor, server = active.acceptor, active.server  # same socket, new view
        else:
            acceptor = _Acceptor(view)
            reuse_port = int(getattr(srv.options, "concurrency", 1) or 1) > 1
            if internal:  # in this Server's registry once active
                server = await internal_listener.serve(
                    srv, name, srv.admit(acceptor, lst), "", False
                )
            else:
                server = await hot_restart.listen(  # (on the previous epoch's socket, if any)
                    srv._loop, srv.admit(acceptor, lst), name, sa.address, sa.port_value,
                    reuse_port, False,
                )  # fmt: skip
        bound = server.sockets[0].getsockname()
        dl = _DynListener(name, version, lst, raw, view, addr, acceptor, server, rds, hcm)
        dl.rds_sources = rds_sources
        for rname, _, rhcm in rds:  # shown from the start, zeros included (Envoy)
            for n in _RDS_STATS:
                self.stats.counter(f"http.{rhcm.stat_prefix}.rds.{rname}.{n}")
        dl.address = (bound[0], bound[1]) if addr[1] == 0 else addr
        dl.scoped = _scoped_of(hcm)
        for rname, chain, rhcm in rds:  # route configs already held: the chain's table now
            if rname in self.routes:
                chain.routes = self._compile_routes(self.routes[rname].msg, rhcm, rname)
        if dl.scoped:
            view.routes = self.scopes.table(hcm.strip_any_host_port)
        if not self._routes_ready(dl):
            self.warming_listeners[name] = dl  # until all its routes arrive (RDS, SRDS)
            return
        await self._activate_listener(dl)

    def _routes_ready(self, dl: _DynListener) -> bool:
        """Every route config the listener's chains name is held (and its scopes, if any):
        Envoy's listener warms until each HCM's RDS subscription has its first config."""
        if dl.scoped and not self.scopes.ready():
            return False
        return all(n in self.routes for n, _, _ in dl.rds)

    async def _activate_listener(self, dl: _DynListener) -> None:
        from envoy.config.core.v3 import base_pb2

        from sofamesh.proxy.server import ListenerInfo

        if _tls_pending(_view_tls(dl.view)):
            dl.tls_wait = True  # until its secrets arrive (_secrets_arrived)
            self.warming_listeners[dl.name] = dl
            return
        self.warming_listeners.pop(dl.name, None)
        old = self.active_listeners.get(dl.name)
        if old is not None and old.server is dl.server:
            dl.acceptor.view = dl.view  # new connections get the new view at once
        else:
            await dl.server.start_serving()
            if old is not None:
                old.server.close()  # stop accepting
        info = ListenerInfo(
            name=dl.name,
            address=dl.address,
            config=dl.config,
            hcm=dl.view,
            server=dl.server,
            direction=base_pb2.TrafficDirection.Name(dl.config.traffic_direction),
        )
        dl.info = info
        lst = self.server.listeners
        if old is not None and old.info in lst:
            lst[lst.index(old.info)] = info
        else:
            lst.append(info)
        self.active_listeners[dl.name] = dl
        if old is not None:
            self._drain(old.view)
            _bump(self.stats, "listener_manager.listener_modified")
        else:
            _bump(self.stats, "listener_manager.listener_added")
        self._gauges()

    def _remove_listener(self, name: str) -> None:
        w = self.warming_listeners.pop(name, None)
        dl = self.active_listeners.pop(name, None)
        if w is not None and (dl is None or w.server is not dl.server):
            w.server.close()
        if dl is None:
            return
        dl.server.close()  # stop accepting; the connections drain
        if dl.info in self.server.listeners:
            self.server.listeners.remove(dl.info)
        self._drain(dl.view)
        _bump(self.stats, "listener_manager.listener_removed")

    def _drain(self, view: Any) -> None:
        sds.manager(self.server).forget(_view_tls(view))  # its secrets: no longer asked
        view.draining = True
        self.draining.append(view)
        t = asyncio.get_running_loop().create_task(self._finish_drain(view))
        self._keep(t)

    async def _finish_drain(self, view: Any) -> None:
        deadline = time.monotonic() + float(getattr(self.server.options, "drain_time_s", 600))
        try:
            while view.conns and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        finally:
            self._close_view(view)
            if view in self.draining:
                self.draining.remove(view)
            self._gauges()

    @staticmethod
    def _close_view(view: Any) -> None:
        if isinstance(view, HcmConfig):
            for c in list(view.conns):
                c.close()
        else:
            view.close_all()

    # ------------------------------------------------------------ routes (RDS)
    def _rds_users(self, name: str) -> list[tuple[Any, Any, str]]:
        """(chain's HcmConfig, hcm proto, stat prefix) of every filter chain, of any
        listener, whose HCM uses route config `name`."""
        out = []
        for view, hcm, n in self.static_rds:
            if n == name:
                out.append((view, hcm, hcm.stat_prefix))
        for dl in [*self.active_listeners.values(), *self.warming_listeners.values()]:
            for n, view, hcm in dl.rds:
                if n == name:
                    out.append((view, hcm, hcm.stat_prefix))
        return out

    def _scoped_users(self) -> list[tuple[Any, Any]]:
        """(view, hcm proto) of every listener whose HCM routes by scopes."""
        out = [(li.hcm, hcm) for li, hcm in self.static_scoped]
        for dl in [*self.active_listeners.values(), *self.warming_listeners.values()]:
            if dl.scoped:
                out.append((dl.view, dl.hcm))
        return out

    async def _refresh_scoped(self) -> None:
        """Every scoped HCM gets the table of the scopes held now; listeners waiting for
        their scopes' routes go active once all have arrived."""
        for name, key in self.scopes.route_keys().items():
            held = self.routes.get(name)
            # a route config held before a scope named it
            if (
                held is not None
                and name not in self.scopes.entries
                and self._scoped_route(name, held.msg, key) is not None
            ):
                log.warning("xds: route config %s does not fit scope %s", name, key)
        for view, hcm in self._scoped_users():
            view.routes = self.scopes.table(hcm.strip_any_host_port)
        if self.scopes.ready():
            for dl in list(self.warming_listeners.values()):
                if dl.scoped and self._routes_ready(dl):
                    await self._activate_listener(dl)

    def _scoped_route(
        self, name: str, rc: Any, key: str, parts: list[bytes] | None = None, bare: bool = False
    ) -> str | None:
        """Compiles the route config of scope `key`; its problem, if any."""
        problem = check_domains(rc, key, [hcm.scoped_routes for _, hcm in self._scoped_users()])
        if problem is not None:
            return problem
        if rc.ignore_port_in_host_matching:
            return (
                "ignore_port_in_host_matching: RouteConfiguration.ignore_port_in_host_matching "
                "in a scope's route configuration is not implemented by sofamesh (the scopes "
                "share one route table)"
            )
        self.scopes.entries[name] = compile_vhosts(
            rc,
            per_filter=self.server._per_filter,
            path=f"route_config[{name}]",
            reuse=self._compiled_vhosts.setdefault(name, {}),
            stats=self.server.stats,
            parts=parts,
            plain=bare,
        )
        return None

    def _compile_routes(
        self, rc: Any, hcm: Any, name: str, parts: list[bytes] | None = None, bare: bool = False
    ) -> Any:
        return compile_route_config(
            rc,
            per_filter=self.server._per_filter,
            path=f"route_config[{name}]",
            strip_port=hcm.strip_any_host_port,
            reuse=self._compiled_vhosts.setdefault(name, {}),
            stats=self.server.stats,
            parts=parts,
            plain=bare,
        )

    async def _apply_routes(self, up: Update) -> dict[str, str]:
        from envoy.config.route.v3 import route_pb2

        errors = {}
        scope_keys = self.scopes.route_keys()
        scoped_changed = False
        for name, (version, rc) in up.resources.items():
            users = self._rds_users(name)
            # one subscription a name: counted once a stat prefix, however many chains use it
            prefixes = list(dict.fromkeys(prefix for _, _, prefix in users))
            for prefix in prefixes:
                _bump(self.stats, f"http.{prefix}.rds.{name}.update_attempt")
            raw = rc.SerializeToString(deterministic=True)
            held = self.routes.get(name)
            if (
                held is not None
                and held.raw == raw
                and (name not in scope_keys or name in self.scopes.entries)
            ):
                # unchanged: accepted (Envoy counts it), nothing reloaded
                for prefix in prefixes:
                    _bump(self.stats, f"http.{prefix}.rds.{name}.update_success")
                continue
            # the virtual hosts as received: checks and compilation key them by their bytes
            wire = up.wire.get(name)
            parts = xds_wire.repeated(wire, 2) if wire is not None else None
            if parts is not None and len(parts) != len(rc.virtual_hosts):
                parts = None
            # a name and hosts only (RouteConfiguration 1 and 2): nothing config-wide
            bare = wire is not None and parts is not None and xds_wire.only_fields(wire, _RC_BARE)
            try:
                problems = self.checks.check(rc, parts=parts, bare=bare)
                if problems:
                    raise UnsupportedConfig(_problems_text(problems))
                tables = [self._compile_routes(rc, hcm, name, parts, bare) for _, hcm, _ in users]
                if name in scope_keys:
                    problem = self._scoped_route(name, rc, scope_keys[name], parts, bare)
                    if problem is not None:
                        raise UnsupportedConfig(problem)
                    scoped_changed = True
            except (UnsupportedConfig, ValueError) as e:
                errors[name] = f"RouteConfiguration {name}: {e}"
                for prefix in prefixes:
                    _bump(self.stats, f"http.{prefix}.rds.{name}.update_rejected")
                continue
            self.routes[name] = _Held(version, rc, raw, lazy=True)
            for (view, _, _), table in zip(users, tables):
                # one reference: the chain's next request uses it, requests in flight finish
                # on the table they started with; other chains' tables are not touched
                view.routes = table
            for prefix in prefixes:
                _bump(self.stats, f"http.{prefix}.rds.{name}.update_success")
                _bump(self.stats, f"http.{prefix}.rds.{name}.config_reload")
            await self._activate_ready(name)
        for name in up.removed:
            if name not in self.scopes.entries:
                # Delta: Envoy's RDS subscription ignores a removal (it logs "Server sent a
                # delta RDS update attempting to remove a resource ... Ignoring."): the
                # chains naming it keep their routes, /config_dump keeps showing it
                if name in self.routes:
                    log.error("xds: a Delta RDS update removes route config %s: ignored", name)
                continue
            # a scope's route config: its hosts leave the scoped table
            self.routes.pop(name, None)
            self._compiled_vhosts.pop(name, None)
            self.scopes.entries.pop(name, None)
            scoped_changed = True
            empty = route_pb2.RouteConfiguration(name=name)
            for view, hcm, _ in self._rds_users(name):
                view.routes = self._compile_routes(empty, hcm, name)
        if scoped_changed:
            await self._refresh_scoped()
        return errors

    async def _activate_ready(self, route_name: str) -> None:
        for dl in list(self.warming_listeners.values()):
            if any(n == route_name for n, _, _ in dl.rds) and self._routes_ready(dl):
                await self._activate_listener(dl)

    # ------------------------------------------------------------ stats, dumps
    def _keep(self, t: asyncio.Task) -> None:
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def _gauges(self) -> None:
        for name, v in (
            ("cluster_manager.warming_clusters", len(self.warming_clusters)),
            ("listener_manager.total_listeners_warming", len(self.warming_listeners)),
            ("listener_manager.total_listeners_draining", len(self.draining)),
        ):
            g = self.stats.gauge(name)
            g.value = v
            g.used = True

    def counts(self) -> dict[str, int]:
        """For admin: warming and draining counts (active ones are in the topology)."""
        return {
            "warming_clusters": len(self.warming_clusters),
            "warming_listeners": len(self.warming_listeners),
            "draining_listeners": len(self.draining),
        }
