"""ADS client: one gRPC stream, state of the world or Delta, carrying CDS, EDS, LDS and RDS.

Envoy's order (what the pilot and Istio expect):

    CDS (wildcard) --> clusters; EDS clusters warm --> EDS (their names)
        all clusters warm, or the CDS initial_fetch_timeout passed -->
    LDS (wildcard) --> listeners; HCMs with rds warm --> RDS (their route config names)
        HCMs with scoped_routes warm --> SRDS (wildcard) --> RDS (the scopes' route configs)
        all listeners warm, or the LDS initial_fetch_timeout passed --> initialized

Each response is handed to an `Applier` (sofamesh.proxy.dynamic.DynamicConfig), which
validates and applies it resource by resource and returns the errors by resource name; the
client then ACKs (version and nonce) or NACKs (the last good version, the nonce and
`error_detail` with the errors) and, after the ACK, asks for the EDS / RDS names the new
clusters and listeners need. A dropped stream is retried with jittered exponential backoff
(0.5 s doubling to 30 s, as Envoy); a new stream asks again for everything it holds (SotW:
with the last accepted versions; Delta: `initial_resource_versions`).

grpc.aio runs on the proxy's own uvloop loop: checked with grpcio 1.85 / uvloop 0.23 (a
stream costs ~0.1 ms per round trip and nothing while idle), so updates need no hand-off
between threads and are applied between two requests of the data plane, never during one.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Protocol

from sofamesh.xds.settings import ADS_KEY

log = logging.getLogger("sofamesh.xds")

_T = "type.googleapis.com/envoy."
CDS = _T + "config.cluster.v3.Cluster"
EDS = _T + "config.endpoint.v3.ClusterLoadAssignment"
LDS = _T + "config.listener.v3.Listener"
RDS = _T + "config.route.v3.RouteConfiguration"
SRDS = _T + "config.route.v3.ScopedRouteConfiguration"
SDS = _T + "extensions.transport_sockets.tls.v3.Secret"  # named by TLS contexts (proxy/sds.py)
ORDER = (CDS, EDS, SDS, LDS, SRDS, RDS)
# wildcard types; SotW: a response lists all of them, absent ones are removed
FULL_STATE = (CDS, LDS, SRDS)
SHORT = {CDS: "cds", EDS: "eds", LDS: "lds", SRDS: "srds", RDS: "rds", SDS: "sds"}
_RESOURCE_WRAPPER = "type.googleapis.com/envoy.service.discovery.v3.Resource"
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
INVALID_ARGUMENT = 3
_BIG_RESPONSE = 256  # resources: GC paused while applying, then frozen (gc_paused)
_BIG_BYTES = 256 * 1024  # or this many bytes of resources (one route config of 10k hosts)
_TYPE_STATS = (
    "update_attempt",
    "update_success",
    "update_rejected",
    "update_failure",
    "init_fetch_timeout",
)  # google.rpc.Code of error_detail, as Envoy sends it


@dataclass
class Update:
    """One response, decoded. SotW: every resource carries the response's version."""

    type_url: str
    version: str  # SotW version_info / Delta system_version_info
    resources: dict[str, tuple[str, Any]]  # name -> (resource version, message)
    removed: list[str]  # Delta removed_resources
    full_state: bool  # SotW CDS/LDS: resources held and not listed are removed
    errors: dict[str, str] = field(default_factory=dict)  # undecodable, by name
    size: int = 0  # bytes of the resources as received
    # name -> the resource's bytes as received (proxy/dynamic.py reads plain endpoint
    # assignments and cluster shapes from them: sofamesh._core.xds_wire)
    wire: dict[str, bytes] = field(default_factory=dict)

    @property
    def big(self) -> bool:
        """Applying it makes enough long-lived objects to pause the GC (gc_paused)."""
        return len(self.resources) >= _BIG_RESPONSE or self.size >= _BIG_BYTES


@contextlib.contextmanager
def gc_paused(on: bool) -> Iterator[None]:
    """Pauses the cyclic GC while a big update is applied, then freezes what is held.

    PERF(benchmarks/xds_scale.py): a big update allocates tracked objects that all outlive
    it (clusters, hosts, compiled routes), and collections walked everything held so far:
    at 10,000 services the first collections after the initial responses cost 60-130 ms,
    and later full collections 180-520 ms each, every few seconds, on the event loop the
    data plane shares (a request or an endpoint update waiting behind them). `gc.freeze()`
    moves what is alive into the permanent generation, which collections skip;
    refcounting still frees it as usual. The price: an object frozen here that a later
    update leaves in an unreachable reference cycle is never reclaimed."""
    paused = on and gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.freeze()
            gc.enable()


class Applier(Protocol):
    async def apply(self, update: Update) -> dict[str, str]:
        """Applies what is valid; returns {resource name: error} for what is not."""

    def names(self, type_url: str) -> AbstractSet[str]:
        """The EDS / RDS resource names the current clusters / listeners need; SRDS: {"*"}
        once a listener uses scoped routes."""

    def warming(self, kind: str) -> int:
        """How many clusters / listeners wait for their endpoints / routes."""

    def end_warming(self, kind: str) -> None:
        """The initial fetch timed out: warming clusters / listeners go active as they are."""


@dataclass
class _Sub:
    """One resource type on one source (the ADS stream carries several)."""

    type_url: str
    src: Any = None  # the _GrpcStream or _FileSource it is on
    started: bool = False  # asked for (on this stream or the next one)
    names: frozenset[str] = frozenset()  # EDS / RDS: names asked for
    sent: frozenset[str] | None = None  # names the current stream asked for (None: not yet)
    version: str = ""  # SotW: last accepted version_info
    nonce: str = ""  # last response nonce on the current stream
    versions: dict[str, str] = field(default_factory=dict)  # Delta: resource versions held
    received: bool = False  # a response arrived


def message_class(type_url: str) -> Any:
    if type_url == CDS:
        from envoy.config.cluster.v3 import cluster_pb2

        return cluster_pb2.Cluster
    if type_url == EDS:
        from envoy.config.endpoint.v3 import endpoint_pb2

        return endpoint_pb2.ClusterLoadAssignment
    if type_url == LDS:
        from envoy.config.listener.v3 import listener_pb2

        return listener_pb2.Listener
    if type_url == SRDS:
        from envoy.config.route.v3 import scoped_route_pb2

        return scoped_route_pb2.ScopedRouteConfiguration
    if type_url == SDS:
        from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

        return secret_pb2.Secret
    from envoy.config.route.v3 import route_pb2

    return route_pb2.RouteConfiguration


def _name_of(type_url: str, msg: Any) -> str:
    return msg.cluster_name if type_url == EDS else msg.name


# gRPC method per resource type of a non-aggregated source: (stub module, stub, SotW, Delta)
_SERVICES = {
    CDS: ("envoy.service.cluster.v3.cds_pb2_grpc", "ClusterDiscoveryServiceStub",
          "StreamClusters", "DeltaClusters"),
    EDS: ("envoy.service.endpoint.v3.eds_pb2_grpc", "EndpointDiscoveryServiceStub",
          "StreamEndpoints", "DeltaEndpoints"),
    LDS: ("envoy.service.listener.v3.lds_pb2_grpc", "ListenerDiscoveryServiceStub",
          "StreamListeners", "DeltaListeners"),
    RDS: ("envoy.service.route.v3.rds_pb2_grpc", "RouteDiscoveryServiceStub",
          "StreamRoutes", "DeltaRoutes"),
    SRDS: ("envoy.service.route.v3.srds_pb2_grpc", "ScopedRoutesDiscoveryServiceStub",
           "StreamScopedRoutes", "DeltaScopedRoutes"),
    SDS: ("envoy.service.secret.v3.sds_pb2_grpc", "SecretDiscoveryServiceStub",
          "StreamSecrets", "DeltaSecrets"),
}  # fmt: skip


class AdsClient:
    """Drives every subscription of a bootstrap in Envoy's order, over the sources their
    ConfigSources name (xds/settings.py): the one ADS stream, a gRPC stream of their own per
    type (api_config_source), or a watched file (path_config_source). Responses from all of
    them are applied one at a time."""

    def __init__(self, settings: Any, applier: Applier, stats: Any) -> None:
        self.settings = settings
        self.applier = applier
        self.stats = stats
        self.sources: dict[str, Any] = {}  # "ads" or "<type>|<source key>" -> source
        self.initialized = asyncio.Event()
        self._timers: list[asyncio.TimerHandle] = []
        self._running = False
        self._cds_expired = False
        self._lds_expired = False
        self._listener_phase = False  # clusters are warm: LDS asked for, its timer runs
        self._want: dict[str, frozenset[str]] = {}  # names(type) last partitioned
        self._apply_lock = asyncio.Lock()  # one response applied at a time, whatever source
        self._watcher: Any = None  # xds.watch.DirWatcher, once a file source is used
        self.connected = self.stats.gauge("control_plane.connected_state")
        self.connected.used = True
        if settings.ads is not None:  # shown from the start, as Envoy's
            self.stats.text_readout("control_plane.identifier")
            # never anything but 0: sofamesh does not rate-limit its requests, so none wait
            self.stats.gauge("control_plane.pending_requests").used = True
            self.stats.counter("control_plane.rate_limit_enforced")

    @property
    def subs(self) -> dict[str, _Sub]:
        """The ADS stream's subscriptions (what tests and tools read of an ADS client)."""
        src = self.sources.get(ADS_KEY)
        return src.subs if src is not None else {}

    @property
    def failures(self) -> int:
        return sum(getattr(s, "failures", 0) for s in self.sources.values())

    def sub(self, type_url: str, key: str) -> _Sub | None:
        """The subscription of `type_url` on source `key`, made (and started) on first use;
        None if the key names ADS and the bootstrap has no ads_config."""
        skey = key if key == ADS_KEY else f"{type_url}|{key}"
        src = self.sources.get(skey)
        if src is None:
            spec = self.settings.spec(key)
            if spec is None:
                log.warning("xds: %s asks for ADS, which is not configured", SHORT[type_url])
                return None
            if spec.kind == "path":
                src = _FileSource(self, spec, type_url)
            else:
                src = _GrpcStream(self, spec, ORDER if key == ADS_KEY else (type_url,))
            self.sources[skey] = src
            if self._running:
                src.start()
        return src.subs[type_url]

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        st = self.settings
        self._running = True
        for t, on in ((CDS, st.cds), (LDS, st.lds)):
            for n in _TYPE_STATS if on else ():  # shown from the start, zeros included
                self.stats.counter(f"{self._prefix(t)}.{n}")
        if st.ads is not None:
            self.sub(CDS, ADS_KEY)  # the ADS stream opens at start-up, as Envoy's
        if st.cds:
            sub = self.sub(CDS, st.cds)
            if sub is not None:
                sub.started = True
            if st.cds_timeout > 0:
                self._timers.append(loop.call_later(st.cds_timeout, self._expire, "clusters"))
        for src in self.sources.values():
            src.start()
        self.poke()

    async def stop(self) -> None:
        self._running = False
        for t in self._timers:
            t.cancel()
        for src in list(self.sources.values()):
            await src.stop()
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None

    def watcher(self) -> Any:
        if self._watcher is None:
            from sofamesh.xds.watch import DirWatcher

            self._watcher = DirWatcher()
        return self._watcher

    def _expire(self, kind: str) -> None:
        """initial_fetch_timeout: go on without what has not arrived, as Envoy does."""
        if self.initialized.is_set():
            return
        log.warning("xds: initial fetch of %s timed out; going on without it", kind)
        prefix = "cluster_manager.cds" if kind == "clusters" else "listener_manager.lds"
        self._bump(f"{prefix}.init_fetch_timeout")
        if kind == "clusters":
            self._cds_expired = True
        else:
            self._lds_expired = True
        self.applier.end_warming(kind)
        self.poke()

    def _partition(self, t: str, want: frozenset[str]) -> dict[str, frozenset[str]]:
        """Names of type `t` by the source each comes from (the applier knows: a cluster's
        eds_config, an HCM's rds.config_source); names it does not place come over ADS."""
        sources = getattr(self.applier, "sources", None)
        placed = sources(t) if sources is not None else {}
        if not placed:
            return {ADS_KEY: want}
        groups: dict[str, set[str]] = {}
        for n in want:
            groups.setdefault(placed.get(n, ADS_KEY), set()).add(n)
        return {k: frozenset(v) for k, v in groups.items()}

    def poke(self) -> None:
        """Something may have finished warming: advance the initial fetch and the EDS / RDS
        subscriptions. Called after every response and by the applier (DNS, timers)."""
        if not self._running:
            return
        st = self.settings
        cds = self.sub(CDS, st.cds) if st.cds else None
        clusters_done = (
            self.initialized.is_set()
            or cds is None
            or ((cds.received and self.applier.warming("clusters") == 0) or self._cds_expired)
        )
        # EDS and SDS as clusters need them; SRDS and RDS only once the clusters are warm
        # (Envoy); SDS also for listeners (their TLS contexts name secrets)
        for t in (EDS, SDS, SRDS, RDS) if clusters_done else (EDS, SDS):
            want = frozenset(self.applier.names(t))  # the same object while unchanged
            prev = self._want.get(t)
            if prev is not None and (want is prev or want == prev):
                continue
            self._want[t] = want
            groups = self._partition(t, want)
            keys = {k for k, names in groups.items() if names}
            for skey, src in self.sources.items():  # sources asked before: may lose names
                if t in src.subs and src.subs[t].started:
                    keys.add(skey if skey == ADS_KEY else skey.split("|", 1)[1])
            for key in sorted(keys):
                sub = self.sub(t, key)
                names = groups.get(key, frozenset())
                if sub is not None and (names != sub.names or (names and not sub.started)):
                    sub.names = names
                    sub.started = True
                    sub.src.send_subscription(sub)
        if self.initialized.is_set() or not clusters_done:
            return
        lds = self.sub(LDS, st.lds) if st.lds else None
        if not self._listener_phase:
            self._listener_phase = True
            if st.lds_timeout > 0:
                loop = asyncio.get_running_loop()
                self._timers.append(loop.call_later(st.lds_timeout, self._expire, "listeners"))
            if lds is not None:
                lds.started = True
                lds.src.send_subscription(lds)
                return
        listeners_done = self._lds_expired or (
            (lds is None or lds.received) and self.applier.warming("listeners") == 0
        )
        if listeners_done:
            log.info("xds: initial fetch done")
            self.initialized.set()

    # ---------------------------------------------------------------- responses
    def decode(self, type_url: str, items: list[tuple[str, str, Any]]) -> Update:
        """items: (name as the response gives it, version, Any)."""
        from sofamesh.config import protos

        cls = message_class(type_url)
        up = Update(type_url, "", {}, [], False)
        for i, (name, version, anymsg) in enumerate(items):
            key = name or f"resources[{i}]"
            if anymsg.type_url == _RESOURCE_WRAPPER:
                from envoy.service.discovery.v3 import discovery_pb2

                wrapper = discovery_pb2.Resource()
                anymsg.Unpack(wrapper)
                key, version, anymsg = wrapper.name or key, wrapper.version, wrapper.resource
            if anymsg.type_url != type_url:
                up.errors[key] = f"resource type {anymsg.type_url} in a {type_url} response"
                continue
            value = anymsg.value
            up.size += len(value)
            msg = cls()
            try:
                msg.ParseFromString(value)
                # PERF(benchmarks/xds_scale.py): walking every resource for nested Anys was
                # 12% of a 10k-service start; an Any's type URL always holds a "/", and most
                # endpoint assignments and clusters hold none at all.
                if b"/" in value:
                    protos.ensure_types_in(value)  # nested typed_configs unpack by type URL
            except Exception as e:  # noqa: BLE001 - a bad resource is NACKed, not fatal
                up.errors[key] = f"cannot decode: {e}"
                continue
            name = _name_of(type_url, msg) or key
            up.resources[name] = (version, msg)
            up.wire[name] = value
        return up

    async def apply(self, sub: _Sub, up: Update, delta: bool) -> dict[str, str]:
        """Applies one decoded response of `sub`; its errors by resource name."""
        t = up.type_url
        if t in (CDS, LDS):
            self._bump(f"{self._prefix(t)}.update_attempt")
        with gc_paused(up.big):
            async with self._apply_lock:
                try:
                    errors = dict(up.errors)
                    errors.update(await self.applier.apply(up))
                except Exception as e:
                    log.exception("xds: applying %s failed", SHORT[t])
                    errors = {"*": f"internal error: {type(e).__name__}: {e}"}
        sub.received = True
        if delta:
            for n, (v, _) in up.resources.items():
                if n not in errors:
                    sub.versions[n] = v
            for n in up.removed:
                sub.versions.pop(n, None)
        if errors:
            detail = "; ".join(f"{msg}" for msg in errors.values())
            log.warning("xds: rejected %s update %r: %s", SHORT[t], up.version, detail)
            if t in (CDS, LDS):
                self._bump(f"{self._prefix(t)}.update_rejected")
        elif t in (CDS, LDS):
            self._bump(f"{self._prefix(t)}.update_success")
            # Envoy's text readout of the accepted version (SotW version_info, Delta
            # system_version_info, a file's version_info)
            self.stats.text_readout(f"{self._prefix(t)}.version_text", up.version)
        return errors

    def stream_failed(self, src: _GrpcStream) -> None:
        for t in (CDS, LDS):
            if t in src.subs and src.subs[t].started:
                self._bump(f"{self._prefix(t)}.update_failure")
        src.mark_connected(0)

    def scopes(self, type_url: str, names: frozenset[str]) -> list[str]:
        """The stat scopes of a non-aggregated subscription, as Envoy names them: each has
        its own `<scope>.control_plane.*` (cluster_manager.cds, listener_manager.lds,
        cluster.<name> per EDS cluster, http.<prefix>.rds.<name> per route config)."""
        if type_url in (CDS, LDS):
            return [self._prefix(type_url)]
        of = getattr(self.applier, "stat_scopes", None)
        if of is not None:
            return [sc for n in sorted(names) for sc in of(type_url, n)]
        return [f"cluster.{n}" for n in sorted(names)] if type_url == EDS else []

    @staticmethod
    def _prefix(t: str) -> str:
        return "cluster_manager.cds" if t == CDS else "listener_manager.lds"

    def _bump(self, name: str) -> None:
        c = self.stats.counter(name)
        c.value += 1
        c.used = True


class _GrpcStream:
    """One gRPC stream: ADS (every type, one stream) or one type's own discovery service
    (api_config_source). A dropped stream is retried after a jittered backoff."""

    def __init__(self, client: AdsClient, spec: Any, types: tuple[str, ...]) -> None:
        self.client = client
        self.spec = spec
        self.subs = {t: _Sub(t, src=self) for t in types}
        self.aggregated = spec.kind == "ads"
        self._task: asyncio.Task | None = None
        self._queue: asyncio.Queue | None = None
        self._first_message = True
        self._channel: Any = None
        self.failures = 0
        self.up = False  # a response arrived on the current stream
        self.identifier = ""  # the server's DiscoveryResponse.control_plane.identifier

    def mark_connected(self, value: int) -> None:
        """control_plane.connected_state: the ADS stream's, or (api_config_source) each
        subscription scope's own, as Envoy reports a stream per subscription."""
        if self.aggregated:
            self.client.connected.value = value
            return
        stats = self.client.stats
        for sub in self.subs.values():
            for scope in self.client.scopes(sub.type_url, sub.names):
                g = stats.gauge(f"{scope}.control_plane.connected_state")
                g.value = value
                g.used = True
                stats.text_readout(f"{scope}.control_plane.identifier", self.identifier)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="xds-stream")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None

    async def _run(self) -> None:
        import grpc

        while True:
            try:
                await self._stream()
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                log.warning(
                    "xds: stream to %s closed: %s %s", self.spec.target, e.code().name, e.details()
                )
            except Exception as e:  # noqa: BLE001 - the stream is retried whatever broke
                log.warning(
                    "xds: stream to %s failed: %s: %s", self.spec.target, type(e).__name__, e
                )
            self.up = False
            self._queue = None
            self.client.stream_failed(self)
            self.failures += 1
            # Envoy's JitteredExponentialBackOffStrategy: a random wait up to the bound
            bound = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** min(self.failures - 1, 16))
            await asyncio.sleep(random.uniform(bound / 2, bound))

    def _call(self, requests: Any) -> Any:
        import importlib

        if self.aggregated:
            from envoy.service.discovery.v3 import ads_pb2_grpc

            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel)
            m = "DeltaAggregatedResources" if self.spec.delta else "StreamAggregatedResources"
            return getattr(stub, m)(requests)
        (t,) = self.subs
        module, stub_name, sotw, delta = _SERVICES[t]
        stub = getattr(importlib.import_module(module), stub_name)(self._channel)
        return getattr(stub, delta if self.spec.delta else sotw)(requests)

    async def _stream(self) -> None:
        import grpc

        if self._channel is None:
            options = [("grpc.max_receive_message_length", 1 << 30)]
            if self.spec.authority:
                options.append(("grpc.default_authority", self.spec.authority))
            tls = self.client.settings.channel_tls(self.spec.cluster)
            if tls is None:
                self._channel = grpc.aio.insecure_channel(self.spec.target, options=options)
            else:  # the cluster's UpstreamTlsContext (mTLS to the pilot: --secure-xds)
                ca, key, chain, sni = tls
                if sni:
                    options.append(("grpc.ssl_target_name_override", sni))
                creds = grpc.ssl_channel_credentials(ca, key, chain)
                self._channel = grpc.aio.secure_channel(self.spec.target, creds, options=options)
        queue: asyncio.Queue = asyncio.Queue()
        self._queue = queue
        self._first_message = True

        async def requests():  # type: ignore[no-untyped-def]
            while True:
                req = await queue.get()
                if req is None:
                    return
                yield req

        for sub in self.subs.values():
            sub.sent = None
            sub.nonce = ""
        call = self._call(requests())
        for sub in self.subs.values():  # everything held or asked for, in Envoy's order
            if sub.started:
                self.send_subscription(sub)
        try:
            await call.wait_for_connection()
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    raise ConnectionError("the server closed the stream")
                if not self.up:
                    log.info("xds: connected to %s", self.spec.target)
                    self.up = True
                    self.mark_connected(1)
                self.failures = 0
                await self._on_response(resp)
        finally:
            queue.put_nowait(None)
            call.cancel()

    def _send(self, req: Any) -> None:
        if self._queue is None:
            return  # no stream: the next one asks for everything
        if self._first_message or not self.spec.node_first_only:
            req.node.CopyFrom(self.client.settings.node)
            self._first_message = False
        self._queue.put_nowait(req)

    def send_subscription(self, sub: _Sub) -> None:
        """Asks for `sub` (a first request on this stream, or changed EDS / RDS names)."""
        from envoy.service.discovery.v3 import discovery_pb2

        if self._queue is None or not sub.started:
            return
        wildcard = sub.type_url in FULL_STATE
        if self.spec.delta:
            req = discovery_pb2.DeltaDiscoveryRequest(type_url=sub.type_url)
            if sub.sent is None:
                if not wildcard:
                    req.resource_names_subscribe.extend(sorted(sub.names))
                for n, v in sub.versions.items():
                    req.initial_resource_versions[n] = v
            else:
                req.resource_names_subscribe.extend(sorted(sub.names - sub.sent))
                req.resource_names_unsubscribe.extend(sorted(sub.sent - sub.names))
                if not (req.resource_names_subscribe or req.resource_names_unsubscribe):
                    return
        else:
            if sub.sent is not None and sub.sent == sub.names:
                return
            req = discovery_pb2.DiscoveryRequest(
                type_url=sub.type_url, version_info=sub.version, response_nonce=sub.nonce
            )
            if not wildcard:
                req.resource_names.extend(sorted(sub.names))
        sub.sent = sub.names
        self._send(req)
        if self.up and not self.aggregated:
            self.mark_connected(1)  # scopes of names asked for now

    async def _on_response(self, resp: Any) -> None:
        t = resp.type_url
        sub = self.subs.get(t)
        if sub is None or not sub.started:
            log.warning("xds: ignoring a response of type %s, not subscribed", t)
            return
        sub.nonce = resp.nonce
        client = self.client
        ident = resp.control_plane.identifier
        if ident != self.identifier and resp.HasField("control_plane"):
            # Envoy's text readout control_plane.identifier: who serves this stream
            self.identifier = ident
            if self.aggregated:
                client.stats.text_readout("control_plane.identifier", ident)
            else:
                self.mark_connected(1)
        if self.spec.delta:
            up = client.decode(
                t,
                [(r.name, r.version, r.resource) for r in resp.resources if r.HasField("resource")],
            )
            up.version = resp.system_version_info
            up.removed = list(resp.removed_resources)
        else:
            up = client.decode(t, [("", resp.version_info, a) for a in resp.resources])
            up.version = resp.version_info
            up.full_state = t in FULL_STATE
        errors = await client.apply(sub, up, self.spec.delta)
        if not errors and not self.spec.delta:
            sub.version = resp.version_info
        self._ack(sub, resp.nonce, errors)
        client.poke()

    def _ack(self, sub: _Sub, nonce: str, errors: dict[str, str]) -> None:
        from envoy.service.discovery.v3 import discovery_pb2

        if self.spec.delta:
            req: Any = discovery_pb2.DeltaDiscoveryRequest(
                type_url=sub.type_url, response_nonce=nonce
            )
        else:
            req = discovery_pb2.DiscoveryRequest(
                type_url=sub.type_url, version_info=sub.version, response_nonce=nonce
            )
            if sub.type_url not in FULL_STATE:
                req.resource_names.extend(sorted(sub.names))
            sub.sent = sub.names
        if errors:
            req.error_detail.code = INVALID_ARGUMENT
            req.error_detail.message = "\n".join(errors.values())
        self._send(req)


class _FileSource:
    """path_config_source: a file holding a DiscoveryResponse (.yaml, .json, .pb, .pb_text,
    read as Envoy reads config files). Read when first asked for, then again each time a
    file is moved onto its path (or, with watched_directory, into that directory), as
    Envoy's filesystem subscription; a write in place is not a reload. State of the world:
    for clusters and listeners, what the file does not hold is removed."""

    def __init__(self, client: AdsClient, spec: Any, type_url: str) -> None:
        self.client = client
        self.spec = spec
        self.type_url = type_url
        self.subs = {type_url: _Sub(type_url, src=self)}
        self._watching = False
        self._reading: asyncio.Task | None = None
        self._again = False

    def start(self) -> None:
        for sub in self.subs.values():  # read when first asked for
            self.send_subscription(sub)

    async def stop(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
            await asyncio.gather(self._reading, return_exceptions=True)

    def send_subscription(self, sub: _Sub) -> None:
        if not sub.started:
            return
        if not self._watching:
            self._watching = True
            import os

            directory = self.spec.watched_dir or os.path.dirname(self.spec.path) or "."
            base = os.path.basename(self.spec.path)
            try:
                self.client.watcher().add(directory, lambda name: self._moved(name, base))
            except OSError as e:
                log.error("xds: cannot watch %s: %s", self.spec.path, e)
        if sub.sent is None or not sub.names <= sub.sent:
            sub.sent = sub.names
            self.refresh()  # first read, or new names that the file may hold

    def _moved(self, name: str, base: str) -> None:
        """A file was moved into the watched directory: the file itself, or any file there
        when the directory is watched_directory."""
        if self.spec.watched_dir or name == base:
            self.refresh()

    def refresh(self) -> None:
        if self._reading is not None and not self._reading.done():
            self._again = True  # read once more when this read is done
            return
        self._reading = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        while True:
            self._again = False
            await self._read_once()
            if not self._again:
                return

    async def _read_once(self) -> None:
        from envoy.service.discovery.v3 import discovery_pb2

        from sofamesh.config.errors import ConfigError
        from sofamesh.config.loader import parse_file

        client, t = self.client, self.type_url
        sub = self.subs[t]
        try:
            resp = parse_file(self.spec.path, discovery_pb2.DiscoveryResponse())
        except ConfigError as e:  # unreadable or not a DiscoveryResponse: last good kept
            log.warning("xds: filesystem config update failure for %s: %s", self.spec.path, e)
            if t in (CDS, LDS):
                client._bump(f"{client._prefix(t)}.update_attempt")
                client._bump(f"{client._prefix(t)}.update_failure")
            sub.received = True
            client.poke()
            return
        up = client.decode(t, [("", resp.version_info, a) for a in resp.resources])
        up.version = resp.version_info
        up.full_state = t in FULL_STATE
        errors = await client.apply(sub, up, delta=False)
        if errors:
            log.warning("xds: filesystem config %s rejected", self.spec.path)
        else:
            sub.version = resp.version_info
        client.poke()
