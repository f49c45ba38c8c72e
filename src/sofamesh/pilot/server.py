"""ADS over gRPC: state-of-the-world and incremental (delta) xDS streams over one Generator.

Each stream has a writer task. Requests and model pushes only mark per-type work (dirty
full-state types, names to send, removals); the writer then builds responses from the current
state in make-before-break order (CDS, EDS, LDS, RDS, then removals), so bursts coalesce and
a slow client never sees a stale queue. Responses are spliced from cached wire chunks
(`generate.Resource`), never re-serialized.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import socket
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from sofamesh.pilot.generate import (
    CDS,
    EDS,
    LDS,
    RDS,
    SHORT,
    SRDS,
    TYPES,
    Changes,
    Generator,
    Resource,
    ld_field,
)
from sofamesh.pilot.inbound import digest

log = logging.getLogger("sofamesh.pilot.xds")

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
SDS_SERVICE = "envoy.service.secret.v3.SecretDiscoveryService"
# SotW: a response carries every subscribed resource; absence = removal (wildcard types)
FULL_STATE = (LDS, CDS, SRDS)
REMOVAL_ORDER = (LDS, SRDS, RDS, CDS, EDS)
_nonces = itertools.count(1)
# responses of at least this many bytes in one go (a stream's initial config, a big model
# change) leave a heap to settle (settle_heap)
_SETTLE_BYTES = 256 * 1024


def settle_heap() -> None:
    """Moves what the process holds now into the cyclic GC's permanent generation, which
    collections skip (refcounting still frees it as ever).

    PERF(benchmarks/xds_scale.py --clients 100): at 10,000 services the model and 100
    streams' state are millions of tracked objects; the first full collection after the
    streams' initial config walked them all for 0.2 s, in the middle of the next push (a new
    service reached the last of 100 clients after 218 ms instead of 60-80). The price: a
    reference cycle alive here and dropped later is never reclaimed (the pilot's resources
    are bytes and slotted objects, dropped by refcount)."""
    gc.freeze()


class Metrics:
    """Plain counters and gauges, exported as Prometheus text by the REST server."""

    def __init__(self) -> None:
        self.counters: Counter[tuple[str, tuple]] = Counter()
        self.gauges: dict[tuple[str, tuple], float] = {}

    def inc(self, name: str, n: int = 1, **labels: str) -> None:
        self.counters[(name, tuple(sorted(labels.items())))] += n

    def set(self, name: str, value: float, **labels: str) -> None:
        self.gauges[(name, tuple(sorted(labels.items())))] = value

    def get(self, name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return self.counters.get(key, self.gauges.get(key, 0))

    def prometheus(self) -> str:
        lines = []
        for kind, table in (("counter", self.counters), ("gauge", self.gauges)):
            names = sorted({k[0] for k in table})
            for n in names:
                lines.append(f"# TYPE {n} {kind}")
                for (name, labels), v in sorted(table.items()):
                    if name == n:
                        lab = ",".join(f'{k}="{val}"' for k, val in labels)
                        lines.append(f"{n}{{{lab}}} {v}" if lab else f"{n} {v}")
        return "\n".join(lines) + "\n"


def _peer_spiffe(auth: dict) -> str:
    """The spiffe:// URI SAN of a gRPC peer's verified certificate, or ""."""
    for key in ("x509_uri_subject_alternative_name", "x509_subject_alternative_name"):
        for v in auth.get(key, ()):
            s = v.decode() if isinstance(v, bytes) else str(v)
            if s.startswith("spiffe://"):
                return s
    return ""


def parse_node_id(node_id: str) -> dict | None:
    """Istio's `type~ip~pod.namespace~namespace.svc.cluster.local`, or None if not that shape."""
    parts = node_id.split("~")
    if len(parts) != 4 or parts[0] not in ("sidecar", "router", "waypoint"):
        return None
    pod, _, ns = parts[2].partition(".")
    return {"type": parts[0], "ip": parts[1], "pod": pod, "namespace": ns, "domain": parts[3]}


def _user_agent(node: Any) -> str:
    """`name/version` from a Node's user agent fields (Envoy: envoy/1.40.0)."""
    kind = node.WhichOneof("user_agent_version_type")
    if kind == "user_agent_version":
        version = node.user_agent_version
    elif kind == "user_agent_build_version":
        v = node.user_agent_build_version.version
        version = f"{v.major_number}.{v.minor_number}.{v.patch}"
    else:
        version = ""
    return "/".join(x for x in (node.user_agent_name, version) if x)


@dataclass
class Watch:
    """One resource type on one stream."""

    wildcard: bool = False
    names: set[str] | frozenset[str] = field(default_factory=set)  # SotW: interned frozenset
    subscribed: bool = False  # the client asked for this type at all
    dirty: bool = False  # full-state type: resend the whole set
    pending: set[str] = field(default_factory=set)  # named resources to (re)send
    removed: dict = field(default_factory=dict)  # name -> old Resource, for make-before-break
    nonce: str = ""  # last nonce sent
    version_sent: str = ""
    version_acked: str = ""
    nack: dict | None = None  # last NACK: {version, nonce, error, time}
    sent: dict[str, str] = field(default_factory=dict)  # delta: name -> version the client has
    must_reply: bool = False  # delta: answer the first request even with nothing to send
    acked_nonce: str = ""  # nonce of the last response the client ACKed
    recent: dict = field(default_factory=dict)  # delta: nonce -> version, last few responses
    names_key: tuple = ()  # SotW: (length, hash) of the last request's serialized name list


class Connection:
    def __init__(self, server: AdsServer, peer: str, delta: bool):
        self.server = server
        self.id = f"{peer}-{next(_nonces)}"
        self.peer = peer
        self.delta = delta
        self.node_id = ""
        self.node_cluster = ""
        self.node_info: dict | None = None
        self.metadata: dict = {}
        # the URI SAN of the client certificate (ADS over mTLS), else "": then identities
        # come from the node (pilot/sds.py)
        self.peer_identity = ""
        self.user_agent = ""  # "<user_agent_name>/<version>" from the node, e.g. envoy/1.40.0
        self.connected_at = time.time()
        self.watches: dict[str, Watch] = {}
        # what this stream is served: an edge sidecar (a `router` node) gets the edge's
        # resources when the pilot has an edge (pilot/edge.py), everyone else the sidecars'
        self.gen: Generator = server.gen
        self.wake = asyncio.Event()
        self.responses = 0
        # this stream's own resources beside the shared ones: its sidecar's inbound listeners
        # and clusters (pilot/inbound.py), type url -> name -> Resource
        self.extra: dict[str, dict[str, Resource]] = {}

    def lookup(self, t: str, name: str) -> Resource | None:
        mine = self.extra.get(t)
        if mine:
            r = mine.get(name)
            if r is not None:
                return r
        return self.gen.all[t].get(name)

    def refresh_extra(self) -> bool:
        """Recompute this stream's own resources; mark what changed. True if anything did."""
        ib = self.server.inbound
        if ib is None or self.gen is not self.server.gen:
            return False
        new = ib.resources(self)
        old = self.extra
        if new is old or (not new and not old):
            return False
        self.extra = new
        hit = False
        for t in (CDS, LDS):
            a, b = old.get(t, {}), new.get(t, {})
            changed = {n for n, r in b.items() if n not in a or a[n].version != r.version}
            gone = {n: r for n, r in a.items() if n not in b}
            if not changed and not gone:
                continue
            w = self.watches.get(t)
            if w is None or not w.subscribed or not w.wildcard:
                continue
            hit = True
            if self.delta:
                w.pending |= changed
                w.removed.update({n: r for n, r in gone.items() if n in w.sent})
            else:
                w.dirty = True
                w.removed.update(gone)
        if hit:
            self.wake.set()
        return hit

    def watch(self, type_url: str) -> Watch:
        w = self.watches.get(type_url)
        if w is None:
            w = self.watches[type_url] = Watch()
        return w

    # --- model changes -------------------------------------------------------------------

    def on_change(self, ch: Changes) -> bool:
        """Mark what this stream must receive; True if anything."""
        gen = self.gen
        hit = False
        for t, w in self.watches.items():
            if not w.subscribed:
                continue
            changed, removed = ch.changed[t], ch.removed[t]
            if t == EDS and ch.clusters_updated:
                again = ch.clusters_updated & w.names
                if again:  # resend the endpoints of replaced clusters (they warm again)
                    changed = changed | again
                    for n in again:
                        w.sent.pop(n, None)
            if self.delta:
                names = changed & w.names
                if w.wildcard:
                    names |= {n for n in changed if n in gen.wild[t]}
                gone = {n: r for n, r in removed.items() if n in w.sent}
                if names:
                    w.pending |= names
                    hit = True
                if gone:
                    w.removed.update(gone)
                    hit = True
            elif t in FULL_STATE:
                if w.wildcard:
                    touched = ch.wildcard_changed[t]
                    gone = {n: removed[n] for n in ch.removed_wild[t]}
                else:
                    touched = bool(changed & w.names) or any(n in w.names for n in removed)
                    gone = {n: r for n, r in removed.items() if n in w.names}
                if touched or gone:
                    w.dirty = t in FULL_STATE
                    w.removed.update(gone)
                    hit = True
            else:
                names = changed & w.names
                if names:
                    w.pending |= names
                    hit = True
        if hit:
            self.wake.set()
        return hit

    # --- writer ----------------------------------------------------------------------------

    def build_responses(self) -> list[bytes]:
        """Everything owed now, in make-before-break order."""
        # identities first: a sidecar's listeners and clusters warm until their secrets
        out: list[bytes] = self.server.sds.responses(self) if self.server.sds else []
        phase2: list[str] = []
        for t in TYPES:
            w = self.watches.get(t)
            if w is None or not w.subscribed:
                continue
            if self.delta:
                r = self._delta_updates(t, w)
                if w.removed:
                    phase2.append(t)
            else:
                r = self._sotw(t, w, keep_removed=True)
                if w.removed and t in FULL_STATE:
                    phase2.append(t)
                else:
                    w.removed.clear()
            if r is not None:
                out.append(r)
        for t in REMOVAL_ORDER:
            if t not in phase2:
                continue
            w = self.watches[t]
            r = (
                self._delta_removals(t, w)
                if self.delta
                else self._sotw(t, w, keep_removed=False, force=True)
            )
            if r is not None:
                out.append(r)
        return out

    def _nonce(self, t: str, w: Watch, version: str) -> str:
        nonce = f"{next(_nonces):x}"
        w.nonce = nonce
        w.version_sent = version
        if self.delta:  # several delta responses of one type may be in flight at once
            w.recent[nonce] = version
            if len(w.recent) > 16:
                del w.recent[next(iter(w.recent))]
        self.responses += 1
        return nonce

    def _sotw(self, t: str, w: Watch, keep_removed: bool, force: bool = False) -> bytes | None:
        gen = self.gen
        res_all = gen.all[t]
        if t in FULL_STATE:
            if not (w.dirty or force):
                return None
            w.dirty = False
            extra: list = []
            if w.wildcard:
                shared = self.server.wild_chunks(t, gen)  # PERF: one join for every wildcard stream
                mine = self.extra.get(t) or {}
                items = list(mine.values())
                if keep_removed and w.removed:
                    extra = [
                        r for n, r in w.removed.items() if n not in gen.wild[t] and n not in mine
                    ]
            else:
                shared = b""
                items = [res_all[n] for n in sorted(w.names) if n in res_all]
                if keep_removed and w.removed:
                    present = {r.name for r in items}
                    extra = [r for n, r in w.removed.items() if n not in present]
            items += extra
            if not keep_removed:
                w.removed.clear()
        else:
            if not w.pending:
                return None
            shared = b""
            items = [res_all[n] for n in sorted(w.pending) if n in res_all]
            w.pending.clear()
            if not items:
                return None
        version = gen.version(t)
        if self.extra:
            version += digest(self.extra, t)
        nonce = self._nonce(t, w, version)
        body = [ld_field(1, version.encode()), shared]
        body.extend(r.sotw_chunk() for r in items)
        body.append(ld_field(4, t.encode()))
        body.append(ld_field(5, nonce.encode()))
        body.append(self.server.control_plane)
        self.server.metrics.inc("pilot_xds_pushes_total", type=SHORT[t], mode="sotw")
        return b"".join(body)

    def _delta_updates(self, t: str, w: Watch) -> bytes | None:
        if not w.pending and not w.must_reply:
            return None
        items = []
        for n in sorted(w.pending):
            r = self.lookup(t, n)
            if r is not None and w.sent.get(n) != r.version:
                items.append(r)
                w.sent[n] = r.version
        w.pending.clear()
        if not items and not w.must_reply:
            return None
        w.must_reply = False
        if not items and w.removed:
            # the initial reply carries the removals itself (phase two has nothing to do)
            gone = [n for n in sorted(w.removed) if self.lookup(t, n) is None]
            for n in gone:
                w.sent.pop(n, None)
            w.removed.clear()
            return self._delta_response(t, w, [], gone)
        return self._delta_response(t, w, items, ())

    def _delta_removals(self, t: str, w: Watch) -> bytes | None:
        gone = [
            n
            for n in sorted(w.removed)
            if self.lookup(t, n) is None and w.sent.pop(n, None) is not None
        ]
        w.removed.clear()
        if not gone:
            return None
        return self._delta_response(t, w, [], gone)

    def _delta_response(self, t: str, w: Watch, items: list, removed) -> bytes:
        version = self.gen.version(t)
        nonce = self._nonce(t, w, version)
        body = [ld_field(1, version.encode())]
        body.extend(r.delta_chunk() for r in items)
        body.append(ld_field(4, t.encode()))
        body.append(ld_field(5, nonce.encode()))
        body.extend(ld_field(6, n.encode()) for n in removed)
        body.append(self.server.delta_control_plane)
        self.server.metrics.inc("pilot_xds_pushes_total", type=SHORT[t], mode="delta")
        return b"".join(body)

    # --- requests --------------------------------------------------------------------------

    def _node(self, node) -> None:
        if node is not None and node.id and not self.node_id:
            self.node_id = node.id
            self.node_cluster = node.cluster
            self.node_info = parse_node_id(node.id)
            if self.node_info and self.node_info["type"] == "router" and self.server.edge_gen:
                self.gen = self.server.edge_gen
            self.user_agent = _user_agent(node)
            try:
                from google.protobuf import json_format

                self.metadata = json_format.MessageToDict(node.metadata)
            except Exception:  # noqa: BLE001 - metadata only informs (and opts in to capture)
                self.metadata = {}
            # before any response: the sidecar's own inbound resources (after the metadata:
            # INTERCEPTION_MODE chooses their form, pilot/capture.py)
            self.refresh_extra()
            if self.node_info is None:  # served all the same; proxyless gRPC ids vary
                self.server.metrics.inc("pilot_xds_non_istio_node_ids_total")

    def _ack_or_nack(self, t: str, w: Watch, nonce: str, version: str, error) -> bool:
        """Returns False when the request answers a stale nonce (ignored, per the xDS spec)."""
        if not nonce:
            return True
        if nonce != w.nonce and not (self.delta and nonce in w.recent):
            self.server.metrics.inc("pilot_xds_stale_nonce_total", type=SHORT.get(t, t))
            return self.delta  # delta: subscription changes still apply
        sent = w.recent.get(nonce, w.version_sent) if self.delta else w.version_sent
        if error is not None and (error.code or error.message):
            w.nack = {
                "version": sent,
                "nonce": nonce,
                "error": error.message,
                "code": error.code,
                "time": time.time(),
            }
            self.server.metrics.inc("pilot_xds_nacks_total", type=SHORT.get(t, t))
            log.warning(
                "NACK from %s for %s version %s: %s",
                self.node_id or self.peer,
                SHORT.get(t, t),
                sent,
                error.message,
            )
            self.server.record_nack(self, t, w.nack)
        else:
            w.version_acked = version or sent
            w.acked_nonce = nonce
            self.server.metrics.inc("pilot_xds_acks_total", type=SHORT.get(t, t))
            self.server.on_ack(self, t, nonce)
        return True

    def on_sotw_request(self, req: discovery_pb2.DiscoveryRequest) -> None:
        self._node(req.node if req.HasField("node") else None)
        t = req.type_url
        if t == SECRET and self.server.sds is not None:  # per stream: pilot/sds.py
            self.server.sds.on_request(self, req, delta=False)
            return
        if t not in TYPES:
            self.server.metrics.inc("pilot_xds_unknown_type_total")
            log.info("%s asked for unsupported type %s", self.node_id, t)
            return
        w = self.watch(t)
        initial = not req.response_nonce
        if not self._ack_or_nack(
            t,
            w,
            req.response_nonce,
            req.version_info,
            req.error_detail if req.HasField("error_detail") else None,
        ):
            return
        # PERF (benchmarks/pilot_scale.py): every ACK repeats the client's whole name list
        # (10,000 EDS names for a big mesh). Compare it as bytes, and share one frozenset
        # among the streams that subscribe the same names.
        for f in ("node", "version_info", "response_nonce", "error_detail"):
            req.ClearField(f)
        raw = req.SerializeToString(deterministic=True)
        key = (len(raw), hash(raw))
        if key == w.names_key and w.subscribed and not initial:
            return
        w.names_key = key
        names = self.server.intern_names(t, key, req.resource_names)
        wildcard = t in FULL_STATE and (not names or "*" in names)
        if "*" in names:
            names = frozenset(names - {"*"})
        changed = wildcard != w.wildcard or names != w.names
        new = names - w.names
        w.wildcard, w.names = wildcard, names
        if initial or not w.subscribed:
            w.subscribed = True
            w.dirty = t in FULL_STATE
            w.pending |= names
        elif changed:
            w.dirty = t in FULL_STATE
            w.pending |= new
        else:
            return
        self.wake.set()

    def on_delta_request(self, req: discovery_pb2.DeltaDiscoveryRequest) -> None:
        self._node(req.node if req.HasField("node") else None)
        t = req.type_url
        if t == SECRET and self.server.sds is not None:
            self.server.sds.on_request(self, req, delta=True)
            return
        if t not in TYPES:
            self.server.metrics.inc("pilot_xds_unknown_type_total")
            return
        w = self.watch(t)
        if not self._ack_or_nack(
            t, w, req.response_nonce, "", req.error_detail if req.HasField("error_detail") else None
        ):
            return
        gen = self.gen
        sub = set(req.resource_names_subscribe)
        unsub = set(req.resource_names_unsubscribe)
        first = not w.subscribed
        if first:
            w.subscribed = True
            w.must_reply = True
            if t in FULL_STATE and (not sub or "*" in sub):
                w.wildcard = True
            # what the client already has (reconnect): send only what differs
            w.sent = dict(req.initial_resource_versions)
        if "*" in sub:
            w.wildcard = True
        if "*" in unsub:
            w.wildcard = False
        sub.discard("*")
        unsub.discard("*")
        w.names |= sub
        w.names -= unsub
        for n in unsub:
            w.sent.pop(n, None)
        if first:
            interest = set(gen.wild[t]) if w.wildcard else set()
            if w.wildcard:
                interest.update(self.extra.get(t, ()))
            interest |= w.names
            w.pending |= {n for n in interest if self.lookup(t, n) is not None}
            # resources the client holds that no longer exist
            for n in list(w.sent):
                if self.lookup(t, n) is None and (w.wildcard or n in w.names):
                    w.removed[n] = None
        else:
            w.pending |= {n for n in sub if n in gen.all[t] and n not in w.sent}
        if w.pending or w.removed or w.must_reply:
            self.wake.set()

    @staticmethod
    def status(w: Watch) -> str:
        """As istioctl proxy-status puts it: SYNCED (last push ACKed, nothing owed), NACKED
        (last push rejected), STALE (a push in flight or owed), NOT SENT."""
        if not w.nonce:
            return "NOT SENT"
        if w.nack is not None and w.nack.get("nonce") == w.nonce:
            return "NACKED"
        if w.acked_nonce == w.nonce and not (w.dirty or w.pending or w.removed):
            return "SYNCED"
        return "STALE"

    def describe(self) -> dict:
        return {
            "id": self.id,
            "node": self.node_id,
            "node_info": self.node_info,
            "cluster": self.node_cluster,
            "cluster_id": str(self.metadata.get("CLUSTER_ID", "")),
            "user_agent": self.user_agent,
            "istio_version": str(self.metadata.get("ISTIO_VERSION", "")),
            "peer": self.peer,
            "mode": "delta" if self.delta else "sotw",
            "sds": self.server.sds.describe(self) if self.server.sds is not None else None,
            "connected_at": self.connected_at,
            "responses": self.responses,
            "types": {
                SHORT[t]: {
                    "wildcard": w.wildcard,
                    "names": len(w.names),
                    "version_sent": w.version_sent,
                    "version_acked": w.version_acked,
                    "nonce": w.nonce,
                    "nack": w.nack,
                    "status": self.status(w),
                }
                for t, w in self.watches.items()
            },
        }


class AdsServer:
    """The pilot's xDS endpoint. `push(changes)` fans a model change out to streams."""

    def __init__(self, gen: Generator, metrics: Metrics | None = None):
        self.gen = gen
        self.metrics = metrics or Metrics()
        self.connections: dict[str, Connection] = {}
        self.nacks: list[dict] = []  # recent NACKs, newest last (debug endpoint)
        self.ack_listeners: list = []  # callables(conn, type_url, nonce): tests and benchmarks
        ident = f"sofamesh-pilot@{socket.gethostname()}"
        self.identifier = ident  # DiscoveryResponse.control_plane, and proxy-status's PILOT
        cp = ld_field(1, ident.encode())  # core.v3.ControlPlane.identifier
        self.control_plane = ld_field(6, cp)
        self.delta_control_plane = ld_field(7, cp)
        self._server: grpc.aio.Server | None = None
        self.port = 0
        self.sds: Any = None  # pilot.sds.PilotSds when the pilot is a CA
        self.inbound: Any = None  # pilot.inbound.InboundBuilder: each sidecar's inbound
        self.credentials: Any = None  # grpc.ServerCredentials: ADS over mTLS (--secure-xds)
        self._names: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._wild: dict[tuple[str, int], tuple[str, bytes]] = {}
        self.edge_gen: Generator | None = None  # the edge sidecars' resources (pilot/edge.py)

    def intern_names(self, t: str, key: tuple, names) -> frozenset:
        got = self._names.get((t, key))
        if got is None:
            got = frozenset(names)
            self._names[(t, key)] = got
        return got

    def wild_chunks(self, t: str, gen: Generator) -> bytes:
        """Every wildcard resource of `t` as spliced `resources` fields, joined once per version."""
        version = gen.version(t)
        cached = self._wild.get((t, id(gen)))
        if cached is None or cached[0] != version:
            cached = (version, b"".join(r.sotw_chunk() for r in gen.wild[t].values()))
            self._wild[(t, id(gen))] = cached
        return cached[1]

    def record_nack(self, conn: Connection, t: str, nack: dict) -> None:
        self.nacks.append({"node": conn.node_id, "connection": conn.id, "type": SHORT[t], **nack})
        del self.nacks[:-200]

    def on_ack(self, conn: Connection, t: str, nonce: str) -> None:
        for cb in self.ack_listeners:
            cb(conn, t, nonce)

    def push(self, ch: Changes, gen: Generator | None = None) -> int:
        """Hand a change of `gen` (default: the sidecars' resources) to the streams it serves;
        returns how many streams it concerns."""
        gen = gen or self.gen
        own: set[str] = set()
        if self.inbound is not None and gen is self.gen:
            # a stream's own resources follow its instances and policies, whose change may
            # leave the shared resources as they were
            own = {c.id for c in list(self.connections.values()) if c.refresh_extra()}
        if ch.empty():
            return len(own)
        for t, flag in ch.wildcard_changed.items():
            if flag:
                self._wild.pop((t, id(gen)), None)
        hit = {c.id for c in list(self.connections.values()) if c.gen is gen and c.on_change(ch)}
        self.metrics.inc("pilot_xds_push_events_total")
        return len(hit | own)

    # --- gRPC plumbing -----------------------------------------------------------------------

    async def start(self, address: str) -> int:
        server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", 512 * 1024 * 1024),
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
                ("grpc.so_reuseport", 0),
                ("grpc.keepalive_time_ms", 30000),
                ("grpc.http2.max_pings_without_data", 0),
                ("grpc.keepalive_permit_without_calls", 1),
            ]
        )
        handlers = {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self._sotw_stream,
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=bytes,
            ),
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self._delta_stream,
                request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                response_serializer=bytes,
            ),
        }
        # SDS also standalone (envoy.service.secret.v3): a stream that asks for Secrets only
        sds_handlers = {
            "StreamSecrets": handlers["StreamAggregatedResources"],
            "DeltaSecrets": handlers["DeltaAggregatedResources"],
        }
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(ADS_SERVICE, handlers),
                grpc.method_handlers_generic_handler(SDS_SERVICE, sds_handlers),
            )
        )
        if self.credentials is not None:  # --secure-xds: clients need a certificate of the CA
            port = server.add_secure_port(address, self.credentials)
        else:
            port = server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot bind xDS address {address}")
        await server.start()
        self._server = server
        self.port = port
        return port

    async def stop(self, grace: float = 0.5) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    async def _sotw_stream(self, request_iterator, context):
        await self._serve(context, delta=False)

    async def _delta_stream(self, request_iterator, context):
        await self._serve(context, delta=True)

    async def _serve(self, context, delta: bool) -> None:
        conn = Connection(self, context.peer(), delta)
        if self.credentials is not None:  # the stream's identity is its certificate's
            conn.peer_identity = _peer_spiffe(context.auth_context())
        self.connections[conn.id] = conn
        self.metrics.set("pilot_xds_connections", len(self.connections))
        mode = "delta" if delta else "sotw"
        self.metrics.inc("pilot_xds_streams_total", mode=mode)
        reader = asyncio.ensure_future(self._reader(conn, context))
        writer = asyncio.ensure_future(self._writer(conn, context))
        failed = None
        try:
            await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            if writer.done() and not writer.cancelled() and writer.exception() is not None:
                failed = writer.exception()
        finally:
            for t in (reader, writer):
                t.cancel()
            for t in (reader, writer):
                try:
                    await t
                except (asyncio.CancelledError, Exception) as e:  # noqa: BLE001
                    log.debug("ignored during shutdown/cleanup: %r", e)
            self.connections.pop(conn.id, None)
            if self.sds is not None:
                self.sds.forget(conn)
            self.metrics.set("pilot_xds_connections", len(self.connections))
            log.info("xDS stream closed: %s (%s)", conn.node_id or conn.peer, mode)
        if failed is not None and not isinstance(failed, grpc.aio.AioRpcError):
            # a bug of ours: end this stream so the client reconnects to a fresh state
            self.metrics.inc("pilot_xds_internal_errors_total")
            log.error("xDS stream to %s failed", conn.node_id or conn.peer, exc_info=failed)
            await context.abort(grpc.StatusCode.INTERNAL, "pilot internal error; reconnect")

    async def _reader(self, conn: Connection, context) -> None:
        try:
            while True:
                req = await context.read()
                if req is grpc.aio.EOF:
                    return
                try:
                    if conn.delta:
                        conn.on_delta_request(req)
                    else:
                        conn.on_sotw_request(req)
                except Exception:  # a bad request never takes the server down
                    self.metrics.inc("pilot_xds_bad_requests_total")
                    log.exception("bad xDS request from %s", conn.peer)
        except grpc.aio.AioRpcError:
            return

    async def _writer(self, conn: Connection, context) -> None:
        while True:
            await conn.wake.wait()
            conn.wake.clear()
            sent = 0
            for msg in conn.build_responses():
                await context.write(msg)
                sent += len(msg)
            if sent >= _SETTLE_BYTES:
                settle_heap()
