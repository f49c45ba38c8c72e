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
import gc
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("sofamesh.xds")

_T = "type.googleapis.com/envoy."
CDS = _T + "config.cluster.v3.Cluster"
EDS = _T + "config.endpoint.v3.ClusterLoadAssignment"
LDS = _T + "config.listener.v3.Listener"
RDS = _T + "config.route.v3.RouteConfiguration"
SRDS = _T + "config.route.v3.ScopedRouteConfiguration"
ORDER = (CDS, EDS, LDS, SRDS, RDS)
# wildcard types; SotW: a response lists all of them, absent ones are removed
FULL_STATE = (CDS, LDS, SRDS)
SHORT = {CDS: "cds", EDS: "eds", LDS: "lds", SRDS: "srds", RDS: "rds"}
_RESOURCE_WRAPPER = "type.googleapis.com/envoy.service.discovery.v3.Resource"
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
INVALID_ARGUMENT = 3
_BIG_RESPONSE = 256  # resources: GC paused while applying (see _on_response)
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


class Applier(Protocol):
    async def apply(self, update: Update) -> dict[str, str]:
        """Applies what is valid; returns {resource name: error} for what is not."""

    def names(self, type_url: str) -> set[str]:
        """The EDS / RDS resource names the current clusters / listeners need; SRDS: {"*"}
        once a listener uses scoped routes."""

    def warming(self, kind: str) -> int:
        """How many clusters / listeners wait for their endpoints / routes."""

    def end_warming(self, kind: str) -> None:
        """The initial fetch timed out: warming clusters / listeners go active as they are."""


@dataclass
class _Sub:
    type_url: str
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
    from envoy.config.route.v3 import route_pb2

    return route_pb2.RouteConfiguration


def _name_of(type_url: str, msg: Any) -> str:
    return msg.cluster_name if type_url == EDS else msg.name


class AdsClient:
    def __init__(self, settings: Any, applier: Applier, stats: Any) -> None:
        self.settings = settings
        self.applier = applier
        self.stats = stats
        self.subs = {t: _Sub(t) for t in ORDER}
        self.initialized = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._queue: asyncio.Queue | None = None
        self._first_message = True
        self._cds_expired = False
        self._lds_expired = False
        self._listener_phase = False  # clusters are warm: LDS asked for, its timer runs
        self._channel: Any = None
        self.connected = self.stats.gauge("control_plane.connected_state")
        self.connected.used = True
        self.failures = 0

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        st = self.settings
        for t, on in ((CDS, st.cds), (LDS, st.lds)):
            for n in _TYPE_STATS if on else ():  # shown from the start, zeros included
                self.stats.counter(f"{self._prefix(t)}.{n}")
        if st.cds:
            self.subs[CDS].started = True
            if st.cds_timeout > 0:
                self._timers.append(loop.call_later(st.cds_timeout, self._expire, "clusters"))
        self._task = loop.create_task(self._run(), name="xds-ads")
        self.poke()

    async def stop(self) -> None:
        for t in self._timers:
            t.cancel()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None

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

    def poke(self) -> None:
        """Something may have finished warming: advance the initial fetch and the EDS / RDS
        subscriptions. Called after every response and by the applier (DNS, timers)."""
        st = self.settings
        cds = self.subs[CDS]
        clusters_done = (
            self.initialized.is_set()
            or not st.cds
            or ((cds.received and self.applier.warming("clusters") == 0) or self._cds_expired)
        )
        # EDS as clusters need it; SRDS and RDS only once the clusters are warm (Envoy)
        for t in (EDS, SRDS, RDS) if clusters_done else (EDS,):
            sub = self.subs[t]
            want = frozenset(self.applier.names(t))  # the same object while unchanged
            if (want is not sub.names and want != sub.names) or (want and not sub.started):
                sub.names = want
                sub.started = True
                self._send_subscription(sub)
        if self.initialized.is_set() or not clusters_done:
            return
        lds = self.subs[LDS]
        if not self._listener_phase:
            self._listener_phase = True
            if st.lds_timeout > 0:
                loop = asyncio.get_running_loop()
                self._timers.append(loop.call_later(st.lds_timeout, self._expire, "listeners"))
            if st.lds:
                lds.started = True
                self._send_subscription(lds)
                return
        listeners_done = self._lds_expired or (
            (not st.lds or lds.received) and self.applier.warming("listeners") == 0
        )
        if listeners_done:
            log.info("xds: initial fetch done")
            self.initialized.set()

    # ---------------------------------------------------------------- the stream
    async def _run(self) -> None:
        import grpc

        while True:
            try:
                await self._stream()
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                log.warning(
                    "xds: stream to %s closed: %s %s",
                    self.settings.target,
                    e.code().name,
                    e.details(),
                )
            except Exception as e:  # noqa: BLE001 - the stream is retried whatever broke
                log.warning(
                    "xds: stream to %s failed: %s: %s", self.settings.target, type(e).__name__, e
                )
            self.connected.value = 0
            self._queue = None
            for t in (CDS, LDS):
                if self.subs[t].started:
                    self._bump(f"{self._prefix(t)}.update_failure")
            self.failures += 1
            # Envoy's JitteredExponentialBackOffStrategy: a random wait up to the bound
            bound = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** min(self.failures - 1, 16))
            await asyncio.sleep(random.uniform(bound / 2, bound))

    async def _stream(self) -> None:
        import grpc
        from envoy.service.discovery.v3 import ads_pb2_grpc

        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(
                self.settings.target,
                options=[("grpc.max_receive_message_length", 1 << 30)],
            )
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel)
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
        if self.settings.delta:
            call = stub.DeltaAggregatedResources(requests())
        else:
            call = stub.StreamAggregatedResources(requests())
        for t in ORDER:  # everything held or asked for, in Envoy's order
            if self.subs[t].started:
                self._send_subscription(self.subs[t])
        try:
            await call.wait_for_connection()
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    raise ConnectionError("the server closed the stream")
                if self.connected.value != 1:
                    log.info("xds: connected to %s", self.settings.target)
                    self.connected.value = 1
                self.failures = 0
                await self._on_response(resp)
        finally:
            queue.put_nowait(None)
            call.cancel()

    def _send(self, req: Any) -> None:
        if self._queue is None:
            return  # no stream: the next one asks for everything
        if self._first_message or not self.settings.node_first_only:
            req.node.CopyFrom(self.settings.node)
            self._first_message = False
        self._queue.put_nowait(req)

    def _send_subscription(self, sub: _Sub) -> None:
        """Asks for `sub` (a first request on this stream, or changed EDS / RDS names)."""
        from envoy.service.discovery.v3 import discovery_pb2

        if self._queue is None or not sub.started:
            return
        wildcard = sub.type_url in FULL_STATE
        if self.settings.delta:
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

    # ---------------------------------------------------------------- responses
    def _decode(self, type_url: str, items: list[tuple[str, str, Any]]) -> Update:
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
            msg = cls()
            try:
                msg.ParseFromString(anymsg.value)
                # PERF(benchmarks/xds_scale.py): walking every resource for nested Anys was
                # 12% of a 10k-service start; an Any's type URL always holds a "/", and most
                # endpoint assignments and clusters hold none at all.
                if b"/" in anymsg.value:
                    protos.ensure_types(msg)  # nested typed_configs unpack by type URL
            except Exception as e:  # noqa: BLE001 - a bad resource is NACKed, not fatal
                up.errors[key] = f"cannot decode: {e}"
                continue
            up.resources[_name_of(type_url, msg) or key] = (version, msg)
        return up

    async def _on_response(self, resp: Any) -> None:
        # PERF(benchmarks/xds_scale.py): a big response allocates tracked objects that all
        # outlive it, and the cyclic GC's full collections walked everything held so far
        # (the hosts of 10,000 assignments: 0.35 s with collections, 0.16 s without, beside
        # the heap of a 10,000-service config). Off while one is applied; refcounting
        # frees as usual, and collections resume after it.
        paused = len(resp.resources) >= _BIG_RESPONSE and gc.isenabled()
        if paused:
            gc.disable()
        try:
            await self._on_response_inner(resp)
        finally:
            if paused:
                gc.enable()

    async def _on_response_inner(self, resp: Any) -> None:
        t = resp.type_url
        sub = self.subs.get(t)
        if sub is None or not sub.started:
            log.warning("xds: ignoring a response of type %s, not subscribed", t)
            return
        sub.nonce = resp.nonce
        if self.settings.delta:
            up = self._decode(
                t,
                [(r.name, r.version, r.resource) for r in resp.resources if r.HasField("resource")],
            )
            up.version = resp.system_version_info
            up.removed = list(resp.removed_resources)
        else:
            up = self._decode(t, [("", resp.version_info, a) for a in resp.resources])
            up.version = resp.version_info
            up.full_state = t in FULL_STATE
        if t in (CDS, LDS):
            self._bump(f"{self._prefix(t)}.update_attempt")
        try:
            errors = dict(up.errors)
            errors.update(await self.applier.apply(up))
        except Exception as e:
            log.exception("xds: applying %s failed", SHORT[t])
            errors = {"*": f"internal error: {type(e).__name__}: {e}"}
        sub.received = True
        if self.settings.delta:
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
        else:
            if not self.settings.delta:
                sub.version = resp.version_info
            if t in (CDS, LDS):
                self._bump(f"{self._prefix(t)}.update_success")
        self._ack(sub, resp.nonce, errors)
        self.poke()

    def _ack(self, sub: _Sub, nonce: str, errors: dict[str, str]) -> None:
        from envoy.service.discovery.v3 import discovery_pb2

        if self.settings.delta:
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

    @staticmethod
    def _prefix(t: str) -> str:
        return "cluster_manager.cds" if t == CDS else "listener_manager.lds"

    def _bump(self, name: str) -> None:
        c = self.stats.counter(name)
        c.value += 1
        c.used = True
