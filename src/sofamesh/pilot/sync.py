"""Registry sync between pilots: `sofamesh pilot --cluster NAME --peer URL` (repeatable).

Each pilot serves its catalog at `GET /v1/catalog` and long-polls every peer's::

    GET <peer>/v1/catalog?from=<our cluster>&version=<last seen>&wait=<seconds>
      200 {"cluster": "c2", "version": "<boot>.<n>", "owners": [
             {"cluster": "c2", "path": ["c2"],       "services": [...]},   # its own
             {"cluster": "c3", "path": ["c3", "c2"], "services": [...]}]}  # relayed
      304 nothing changed within `wait` (the answer still proves the peer alive)

Ownership and loops (a path vector, as BGP's AS path): every section names the cluster
that owns its entries and the clusters it passed through, owner first, sender last. A pilot
ignores sections whose path holds its own cluster, never sends a peer a section whose path
holds the peer's (split horizon), and takes each owner from the one peer with the shortest
path (ties: the first --peer). So C's services reach A once, owned by C, whatever the
topology. Only the owner's own section says what C has: when C drops an entry every relay
drops it; when C stays silent past the lease the pilots next to C drop C's section, and
their next answers drop it everywhere else.

A peer's answer is checked whole before any of it is used: a malformed catalog, or a peer
claiming entries it does not own first-hand (a section whose path does not run through it,
or its own cluster's section relayed), is rejected with an error naming the field, counted
in `pilot_sync_rejected_total{peer,reason}`, and the last good catalog stays until the
lease ends (GET /v1/peers shows each peer's state and last error).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
import ssl
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from aiohttp import ClientSession, ClientTimeout, web

from sofamesh.pilot.api import SERVICE_RE, BadRequest, record_to_instance, validate_instance
from sofamesh.pilot.edge import format_hostport, parse_hostport
from sofamesh.pilot.generate import CLUSTER_LABEL
from sofamesh.pilot.model import PROTOCOLS, Instance, Port, Service, Snapshot

log = logging.getLogger("sofamesh.pilot.sync")

CLUSTER_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.\-]{0,61}[A-Za-z0-9])?$")
MAX_PATH = 16
MAX_WAIT = 30.0
MAX_CATALOG = 256 << 20  # bytes: 10k services of 5 instances are ~10 MB
INSTANCE_FIELDS = ("address", "port", "protocol", "labels", "weight", "healthy", "locality")


class CatalogError(ValueError):
    """A peer's catalog is unusable; `reason` is the counter label, the message names the field."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class Section:
    """One owner's entries as held here: validated service dicts (what we relay) and their
    model form."""

    owner: str
    path: list[str]
    services: list[dict]
    model: dict[str, tuple[Service, list[Instance]]]
    # name -> (the entry as it came, its clean form): an entry equal to the last catalog's
    # is not checked and converted again
    seen: dict[str, tuple[dict, dict]] = field(default_factory=dict)


@dataclass
class Peer:
    url: str
    cluster: str = ""  # learned from its first good answer
    version: str = ""
    sections: dict[str, Section] = field(default_factory=dict)  # owner -> section
    alive_at: float = 0.0  # monotonic time of its last good answer (0: never)
    answered: asyncio.Event = field(default_factory=asyncio.Event)  # first answer, good or not
    state: str = "connecting"  # connecting | up | unreachable | expired
    edge: tuple[str, int] | None = None  # its edge sidecar, from its catalog (pilot/edge.py)
    last_error: str = ""
    rejected: int = 0
    catalogs: int = 0


def check_peer_url(url: str) -> str:
    u = urlparse(url)
    if u.scheme not in ("http", "https") or not u.hostname or not u.port:
        raise ValueError(f"--peer {url!r}: expected http://HOST:PORT (a pilot's registration API)")
    return url.rstrip("/")


def service_entry(svc: Service | None, name: str, insts: list[Instance]) -> dict:
    """One service as a catalog carries it: name, namespace, ports, instances."""
    ports = [
        {"number": p.number, "protocol": p.protocol, "name": p.name}
        for p in (svc.ports if svc else ())
    ]
    out_insts = []
    for i in insts:
        d: dict[str, Any] = {
            "instance_id": i.instance_id,
            "address": i.address,
            "port": i.port,
            "protocol": i.protocol,
            "labels": {k: v for k, v in i.labels if k != CLUSTER_LABEL},
            "weight": i.weight,
            "healthy": i.healthy,
            "locality": {
                "region": i.locality.region,
                "zone": i.locality.zone,
                "sub_zone": i.locality.sub_zone,
            },
        }
        if i.service_port:
            d["service_port"] = i.service_port
        out_insts.append(d)
    ns = svc.namespace if svc else (insts[0].namespace if insts else "default")
    return {"name": name, "namespace": ns, "ports": ports, "instances": out_insts}


def parse_catalog(
    body: Any, peer_cluster: str, ours: str, prev: dict[str, Section] | None = None
) -> tuple[str, str, list[Section], tuple[str, int] | None]:
    """(cluster, version, sections, edge) of a peer's answer, or CatalogError. Sections whose path
    holds our cluster are left out (a loop the peer's split horizon should have cut).
    `prev`: this peer's sections from its last answer, whose unchanged entries are reused.

    PERF(benchmarks/registry_sync.py): a catalog of 10k services / 50k instances takes
    ~2.7 s to check and convert whole; with one service changed, the rest is a dict
    comparison per service."""
    if not isinstance(body, dict):
        raise CatalogError("malformed", "catalog: must be a JSON object")
    cluster = body.get("cluster")
    if not isinstance(cluster, str) or not CLUSTER_RE.match(cluster):
        raise CatalogError("malformed", "cluster: must be a cluster name")
    if cluster == ours:
        raise CatalogError("cluster", f"cluster: the peer says it is {ours!r}, this pilot's own")
    if peer_cluster and cluster != peer_cluster:
        raise CatalogError(
            "cluster", f"cluster: the peer was {peer_cluster!r} and now says {cluster!r}"
        )
    version = body.get("version")
    if not isinstance(version, str) or not version:
        raise CatalogError("malformed", "version: must be a non-empty string")
    edge = None
    if "edge" in body:  # where the peer's edge sidecar takes calls for what it lists
        try:
            edge = parse_hostport(body["edge"] if isinstance(body["edge"], str) else "", "edge")
        except ValueError as e:
            raise CatalogError("malformed", str(e)) from None
    owners = body.get("owners")
    if not isinstance(owners, list):
        raise CatalogError("malformed", "owners: must be a list")
    out: list[Section] = []
    seen: set[str] = set()
    for n, sec in enumerate(owners):
        where = f"owners[{n}]"
        if not isinstance(sec, dict):
            raise CatalogError("malformed", f"{where}: must be an object")
        owner, path = sec.get("cluster"), sec.get("path")
        if not isinstance(owner, str) or not CLUSTER_RE.match(owner):
            raise CatalogError("malformed", f"{where}.cluster: must be a cluster name")
        if (
            not isinstance(path, list)
            or not 1 <= len(path) <= MAX_PATH
            or not all(isinstance(c, str) and CLUSTER_RE.match(c) for c in path)
            or len(set(path)) != len(path)
        ):
            raise CatalogError(
                "malformed", f"{where}.path: must list 1 to {MAX_PATH} distinct cluster names"
            )
        if owner in seen:
            raise CatalogError("malformed", f"{where}.cluster: {owner!r} appears twice")
        seen.add(owner)
        if path[0] != owner or path[-1] != cluster:
            raise CatalogError(
                "claim",
                f"{where}: peer {cluster!r} claims entries of {owner!r} with path {path}: a "
                f"path must run from the owner to the peer",
            )
        if owner == cluster and len(path) != 1:
            raise CatalogError("claim", f"{where}: peer {cluster!r} relays its own entries")
        services = sec.get("services")
        if not isinstance(services, list):
            raise CatalogError("malformed", f"{where}.services: must be a list")
        old = prev.get(owner) if prev else None
        model: dict[str, tuple[Service, list[Instance]]] = {}
        kept: dict[str, tuple[dict, dict]] = {}
        clean = []
        for k, entry in enumerate(services):
            name = entry.get("name") if isinstance(entry, dict) else None
            hit = old.seen.get(name) if old is not None and isinstance(name, str) else None
            if hit is not None and hit[0] == entry and name not in model:
                model[name] = old.model[name]  # type: ignore[union-attr,index]
                kept[name] = hit  # type: ignore[index]
                clean.append(hit[1])
                continue
            name, svc, insts = _service(entry, f"{where}.services[{k}]", owner)
            if name in model:
                raise CatalogError("malformed", f"{where}.services[{k}].name: {name!r} twice")
            model[name] = (svc, insts)
            # relayed as we read it, not as it came: unknown fields stop here
            kept[name] = (entry, service_entry(svc, name, insts))
            clean.append(kept[name][1])
        if ours in path:
            continue  # it went through us already: a loop
        out.append(Section(owner, list(path), clean, model, kept))
    if cluster not in seen:
        raise CatalogError("malformed", f"owners: no section of the peer's own cluster {cluster!r}")
    return cluster, version, out, edge


def read_catalog(
    raw: bytes, peer_cluster: str, ours: str, prev: dict[str, Section] | None
) -> tuple[str, str, list[Section], tuple[str, int] | None]:
    """parse_catalog of an answer's bytes."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise CatalogError("malformed", f"catalog: invalid JSON: {e}") from None
    return parse_catalog(body, peer_cluster, ours, prev)


def _service(entry: Any, where: str, owner: str) -> tuple[str, Service, list[Instance]]:
    if not isinstance(entry, dict):
        raise CatalogError("malformed", f"{where}: must be an object")
    name = entry.get("name")
    if not isinstance(name, str) or not SERVICE_RE.match(name):
        raise CatalogError("malformed", f"{where}.name: must be a host name")
    ns = entry.get("namespace", "default")
    if not isinstance(ns, str) or not ns:
        raise CatalogError("malformed", f"{where}.namespace: must be a non-empty string")
    ports_in = entry.get("ports", [])
    if not isinstance(ports_in, list):
        raise CatalogError("malformed", f"{where}.ports: must be a list")
    ports = []
    for j, p in enumerate(ports_in):
        num = p.get("number") if isinstance(p, dict) else None
        proto = p.get("protocol", "http") if isinstance(p, dict) else None
        if isinstance(num, bool) or not isinstance(num, int) or not 1 <= num <= 65535:
            raise CatalogError("malformed", f"{where}.ports[{j}].number: must be 1 to 65535")
        if proto not in PROTOCOLS:
            raise CatalogError("malformed", f"{where}.ports[{j}].protocol: unknown {proto!r}")
        pname = p.get("name", "")
        ports.append(Port(num, proto, pname if isinstance(pname, str) else ""))
    raw = entry.get("instances")
    if not isinstance(raw, list):
        raise CatalogError("malformed", f"{where}.instances: must be a list")
    insts = []
    for j, d in enumerate(raw):
        w = f"{where}.instances[{j}]"
        if not isinstance(d, dict):
            raise CatalogError("malformed", f"{w}: must be an object")
        iid = d.get("instance_id")
        if not isinstance(iid, str) or not iid or len(iid) > 253:
            raise CatalogError("malformed", f"{w}.instance_id: must be a non-empty string")
        body = {k: d[k] for k in (*INSTANCE_FIELDS, "service_port") if k in d}
        try:
            rec = validate_instance(body)
        except BadRequest as e:
            raise CatalogError("malformed", f"{w}.{e.field}: {e.message}") from None
        rec["labels"][CLUSTER_LABEL] = owner
        inst = record_to_instance(name, iid, rec)
        insts.append(dataclasses.replace(inst, registry="peer", namespace=ns))
    return name, Service(name, ns, tuple(sorted(ports, key=lambda p: p.number)), (), "peer"), insts


def _rank(peer: Peer, sec: Section) -> tuple[bool, int]:
    return (peer.state != "up", len(sec.path))


class PeerSync:
    """The peers' entries as a `model.Registry` (name "peers") and this pilot's catalog."""

    name = "peers"

    def __init__(self, cluster: str, peers: list[str], lease: float = 10.0, wait: float = 0.0):
        self.cluster = cluster
        self.peers = [Peer(check_peer_url(u)) for u in peers]
        self.lease = lease
        self.wait = wait or max(0.5, min(5.0, lease / 3))  # a 304 at least every lease/3
        self.pilot: Any = None  # core.Pilot, set by attach()
        self._on_change = None
        self._snapshot = Snapshot()
        self._chosen: dict[str, tuple[Peer, Section]] = {}  # owner -> where we take it from
        self._tasks: list[asyncio.Task] = []
        self._session: ClientSession | None = None
        # our catalog: version bumps when what we would send changes
        self._boot = os.urandom(4).hex()
        self._n = 0
        self._own: list[dict] = []
        self._relayed: dict[str, int] = {}  # owner -> id() of the section we relay
        self._entries: dict[str, tuple] = {}  # name -> (Service | None, instances, entry)
        self._changed = asyncio.Event()
        self._encoded: dict[str, bytes] = {}  # requester cluster -> body at this version
        self._ca: Any = None  # ca.CertificateAuthority for https:// peers (use_ca)
        self._tls_ctx: ssl.SSLContext | None = None
        self._tls_renew_at = 0.0
        self.edge = ""  # "IP:PORT" of our edge sidecar as the peers' edges reach it (--edge)

    # -- wiring -------------------------------------------------------------------------

    def use_ca(self, ca) -> None:
        """Peers at https:// URLs (--secure-api pilots): present a certificate of our CA
        (ca.CertificateAuthority), the pilot's own identity, and trust that CA's root. Pilots
        that share a root (--ca-cert/--ca-key) sync; others fail the handshake, named in
        /v1/peers."""
        self._ca = ca

    def _tls(self, url: str) -> ssl.SSLContext | bool:
        if self._ca is None or not url.startswith("https:"):
            return True  # aiohttp's default: verified against the system's roots
        now = time.time()
        if self._tls_ctx is None or now >= self._tls_renew_at:
            from sofamesh.pilot.ca import spiffe_id
            from sofamesh.pilot.doors import PILOT_IDENTITY, _load

            issued = self._ca.issue(spiffe_id(self._ca.trust_domain, *PILOT_IDENTITY))
            ctx = ssl.create_default_context(cadata=self._ca.root_pem.decode())
            _load(ctx, issued)
            self._tls_ctx = ctx
            self._tls_renew_at = now + max((issued.not_after - issued.not_before) / 2, 1.0)
        return self._tls_ctx

    def attach(self, pilot, app: web.Application) -> None:
        self.pilot = pilot
        pilot.change_listeners.append(lambda _ch: self._refresh())
        app.router.add_get("/v1/catalog", self.get_catalog)
        app.router.add_get("/v1/peers", self.get_peers)

    @property
    def version(self) -> str:
        return f"{self._boot}.{self._n}"

    # -- model.Registry ------------------------------------------------------------------

    async def start(self, on_change) -> None:
        self._on_change = on_change
        self._session = ClientSession()
        self._tasks = [asyncio.ensure_future(self._poll(p)) for p in self.peers]
        self._tasks.append(asyncio.ensure_future(self._lease_loop()))
        if self.peers:  # a restarted pilot should not push an empty model: wait a little
            try:
                await asyncio.wait_for(
                    asyncio.gather(*(p.answered.wait() for p in self.peers)), min(2.0, self.lease)
                )
            except TimeoutError:
                pass

    async def stop(self) -> None:
        self._on_change = None
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception) as e:  # noqa: BLE001
                log.debug("ignored during shutdown/cleanup: %r", e)
        if self._session is not None:
            await self._session.close()

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def edge_hops(self) -> dict[str, tuple[str, int]]:
        """Owner cluster -> the edge to send its calls to: the edge of the peer we take the
        owner's entries from (the owner's own, or a relaying peer's), if that peer has one."""
        return {o: peer.edge for o, (peer, _) in self._chosen.items() if peer.edge is not None}

    # -- the peers' side -----------------------------------------------------------------

    async def _poll(self, peer: Peer) -> None:
        assert self._session is not None
        url = peer.url + "/v1/catalog"
        backoff = 0.2
        while True:
            params = {"from": self.cluster, "wait": f"{self.wait:g}"}
            if peer.version:
                params["version"] = peer.version
            try:
                async with self._session.get(
                    url,
                    params=params,
                    timeout=ClientTimeout(total=self.wait + 30),
                    ssl=self._tls(url),
                ) as r:
                    status = r.status
                    raw = bytearray()
                    async for chunk in r.content.iter_chunked(1 << 16):
                        raw += chunk
                        if len(raw) > MAX_CATALOG:
                            break
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - down, refused, timed out: retry
                self._fail(peer, "unreachable", f"{type(e).__name__}: {e}")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            backoff = 0.2
            if status == 304:
                self._alive(peer)
                continue
            if len(raw) > MAX_CATALOG:
                self._reject(peer, "malformed", f"catalog: larger than {MAX_CATALOG} bytes")
                await asyncio.sleep(1.0)
                continue
            if status != 200:
                self._reject(
                    peer, "status", f"HTTP {status}: {bytes(raw[:200]).decode(errors='replace')}"
                )
                await asyncio.sleep(1.0)
                continue
            try:
                args = (bytes(raw), peer.cluster, self.cluster, peer.sections)
                if len(raw) > 1 << 20:  # a big catalog: keep serving xDS while reading it
                    cluster, version, sections, edge = await asyncio.to_thread(read_catalog, *args)
                else:
                    cluster, version, sections, edge = read_catalog(*args)
            except CatalogError as e:
                self._reject(peer, e.reason, str(e))
                await asyncio.sleep(1.0)  # its catalog will not change in a hurry
                continue
            if version == peer.version and peer.sections:
                self._alive(peer)  # the same catalog again (a peer that does not long-poll)
                continue
            peer.cluster, peer.version, peer.edge = cluster, version, edge
            peer.sections = {s.owner: s for s in sections}
            peer.catalogs += 1
            self._alive(peer)
            self._choose()

    def _alive(self, peer: Peer) -> None:
        peer.alive_at = time.monotonic()
        back = peer.state != "up"
        if back:
            log.info("peer %s (%s): up", peer.url, peer.cluster or "?")
        peer.state = "up"
        peer.last_error = ""
        peer.answered.set()
        if self.pilot is not None:
            self.pilot.registry_errors.pop(f"peer {peer.url}", None)
        if back and peer.sections:
            self._choose()

    def _fail(self, peer: Peer, state: str, msg: str) -> None:
        was_up = peer.state == "up"
        if peer.state in ("up", "connecting"):
            log.warning("peer %s: %s (%s)", peer.url, state, msg)
            if self.pilot is not None:
                self.pilot.metrics.inc("pilot_sync_peer_errors_total", peer=peer.url)
        if peer.state != "expired":
            peer.state = state
        peer.last_error = msg
        peer.answered.set()
        if was_up and peer.sections:
            self._choose()  # another peer may have the same owners first-hand and live

    def _reject(self, peer: Peer, reason: str, msg: str) -> None:
        peer.rejected += 1
        log.error("peer %s: catalog rejected (%s): %s", peer.url, reason, msg)
        if self.pilot is not None:
            self.pilot.metrics.inc("pilot_sync_rejected_total", peer=peer.url, reason=reason)
            self.pilot.registry_errors[f"peer {peer.url}"] = f"catalog rejected: {msg}"
        peer.last_error = f"catalog rejected: {msg}"
        was_up = peer.state == "up"
        peer.state = "rejecting"
        peer.answered.set()
        if was_up and peer.sections:
            self._choose()  # a peer whose answers we cannot use ranks after live ones

    async def _lease_loop(self) -> None:
        """A peer silent (or answering only garbage) past the lease loses its entries."""
        while True:
            await asyncio.sleep(min(0.2, self.lease / 10))
            now = time.monotonic()
            gone = [
                p for p in self.peers if p.sections and p.alive_at and now - p.alive_at > self.lease
            ]
            for p in gone:
                log.warning(
                    "peer %s (%s): silent for %.1f s, past its %.1f s lease: its %d owners'"
                    " entries dropped",
                    p.url,
                    p.cluster,
                    now - p.alive_at,
                    self.lease,
                    len(p.sections),
                )
                p.sections = {}
                p.version = ""
                p.state = "expired"
                if self.pilot is not None:
                    self.pilot.metrics.inc("pilot_sync_leases_expired_total", peer=p.url)
            if gone:
                self._choose()

    def _choose(self) -> None:
        """Each owner from the peer with the shortest path to it, a peer answering now before
        one that stopped (two replicas of one pilot: the live one); publish if that changed."""
        chosen: dict[str, tuple[Peer, Section]] = {}
        for peer in self.peers:  # in --peer order: ties go to the first
            for owner, sec in peer.sections.items():
                have = chosen.get(owner)
                if have is None or _rank(peer, sec) < _rank(*have):
                    chosen[owner] = (peer, sec)
        same = chosen.keys() == self._chosen.keys() and all(
            chosen[o][1] is self._chosen[o][1] for o in chosen
        )
        self._chosen = chosen
        if same:
            return
        services: dict[str, Service] = {}
        instances: dict[str, list[Instance]] = {}
        for owner in sorted(chosen):
            for name, (svc, insts) in chosen[owner][1].model.items():
                prev = services.get(name)
                if prev is None:
                    services[name] = svc
                elif svc.ports:  # one name in two clusters: union of the declared ports
                    have_ports = {p.number for p in prev.ports}
                    extra = tuple(p for p in svc.ports if p.number not in have_ports)
                    if extra:
                        ports = tuple(sorted(prev.ports + extra, key=lambda p: p.number))
                        services[name] = Service(name, prev.namespace, ports, (), "peer")
                # the very list when one owner has it: the pilot skips an unchanged one
                instances[name] = instances[name] + insts if name in instances else insts
        new = Snapshot(services=services, instances=instances)
        if new.services != self._snapshot.services or new.instances != self._snapshot.instances:
            self._snapshot = new
        # a rebuild also when only a path changed: it refreshes what we relay (_refresh)
        if self._on_change is not None:
            self._on_change(self.name)

    # -- our side ------------------------------------------------------------------------

    def _refresh(self) -> None:
        """After each model rebuild: our own entries (every registry but this one), and
        whether what we relay changed; a change bumps the version and wakes the long polls."""
        from sofamesh.pilot.core import merge

        p = self.pilot
        snaps = [
            p.snapshots[r.name] for r in p.registries if r is not self and r.name in p.snapshots
        ]
        services, instances = merge(snaps)
        # PERF(benchmarks/registry_sync.py): an unchanged service keeps its entry object, so
        # a rebuild costs a comparison of instance tuples per service, not a re-encoding
        cache, fresh = self._entries, {}
        own, same = [], True
        for n in sorted(set(services) | set(instances)):
            svc, insts = services.get(n), instances.get(n, [])
            hit = cache.get(n)
            if hit is not None and hit[0] == svc and hit[1] == insts:
                fresh[n] = hit
            else:
                fresh[n] = (svc, insts, service_entry(svc, n, insts))
                same = False
            own.append(fresh[n][2])
        same = same and len(fresh) == len(cache)
        self._entries = fresh
        relayed = {o: id(s) for o, (_, s) in self._chosen.items()}
        if same and relayed == self._relayed:
            return
        self._own = own
        self._relayed = relayed
        self._n += 1
        self._encoded = {}
        self._changed.set()
        self._changed = asyncio.Event()

    def catalog(self, requester: str) -> bytes:
        """Our catalog as `requester` gets it: our section and every owner we take from a
        peer, except those whose path already holds the requester (split horizon)."""
        body = self._encoded.get(requester)
        if body is None:
            owners = [{"cluster": self.cluster, "path": [self.cluster], "services": self._own}]
            for owner in sorted(self._chosen):
                sec = self._chosen[owner][1]
                if requester in sec.path or owner == requester:
                    continue
                owners.append(
                    {"cluster": owner, "path": [*sec.path, self.cluster], "services": sec.services}
                )
            top: dict[str, Any] = {"cluster": self.cluster, "version": self.version}
            if self.edge:
                top["edge"] = self.edge
            top["owners"] = owners
            body = json.dumps(top, separators=(",", ":")).encode()
            self._encoded[requester] = body
        return body

    async def get_catalog(self, request: web.Request) -> web.Response:
        q = request.query
        requester = q.get("from", "")
        if requester and not CLUSTER_RE.match(requester):
            raise BadRequest("from", "must be a cluster name")
        if requester == self.cluster:
            raise BadRequest("from", f"{requester!r} is this pilot's own cluster")
        try:
            wait = float(q.get("wait", "0"))
        except ValueError:
            raise BadRequest("wait", "must be a number of seconds") from None
        if not 0 <= wait <= MAX_WAIT:
            raise BadRequest("wait", f"must be from 0 to {MAX_WAIT:g} seconds")
        if q.get("version") == self.version and wait > 0:
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), wait)
            except TimeoutError:
                return web.Response(status=304, headers={"ETag": f'"{self.version}"'})
        return web.Response(
            body=self.catalog(requester),
            content_type="application/json",
            headers={"ETag": f'"{self.version}"'},
        )

    async def get_peers(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        out = []
        for p in self.peers:
            out.append(
                {
                    "url": p.url,
                    "cluster": p.cluster,
                    "state": p.state,
                    "version": p.version,
                    "silent_for": round(now - p.alive_at, 3) if p.alive_at else None,
                    "owners": {
                        o: {
                            "path": s.path,
                            "services": len(s.services),
                            "used": self._chosen.get(o, (None, None))[1] is s,
                        }
                        for o, s in sorted(p.sections.items())
                    },
                    "catalogs": p.catalogs,
                    "rejected": p.rejected,
                    "last_error": p.last_error,
                    "edge": format_hostport(*p.edge) if p.edge else None,
                }
            )
        return web.json_response(
            {
                "cluster": self.cluster,
                "lease_seconds": self.lease,
                "version": self.version,
                "edge": self.edge or None,
                "peers": out,
            }
        )
