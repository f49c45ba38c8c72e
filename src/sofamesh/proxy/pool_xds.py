"""xDS with `--concurrency N > 1`: one ADS stream in the main process, applied by every worker.

    control plane --ADS--> main process: AdsClient(applier=PoolApplier)
                             | each response, decoded once, re-sent to every live worker:
                             |   {"op": "xds_apply", "update": {type, version, full_state,
                             |     removed, resources: [[name, version, base64 protobuf]]}}
                             v
                           worker i: WorkerFeed -> DynamicConfig.apply (the same applier
                             as --concurrency 1) -> reply {"errors": {name: text},
                             "state": {eds, rds, warming_clusters, warming_listeners}}
                             | all live workers answered --> ACK (any error: NACK with it)
                             | a cluster that warms later (DNS): {"event": "xds_state"}

The main process keeps what the workers accepted (`held`): a worker that starts or
restarts gets it in its init frame and applies it, in CDS, EDS, LDS, RDS order, before it
answers ready and before its listeners serve (a restart is done under the same lock as
an update, so it misses none). The ACK waits for the slowest worker; a worker that dies
during an update does not hold it (it is restarted with the new config). `held` also
answers admin's /config_dump and /clusters, in the shapes DynamicConfig has.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from sofamesh.xds.client import CDS, EDS, LDS, ORDER, RDS, SDS, SRDS, Update, message_class

log = logging.getLogger("sofamesh.xds")

APPLY_TIMEOUT_S = 120.0  # a worker building 50k clusters takes a while; a hung one NACKs


# ---- frames ------------------------------------------------------------------------------


def encode_update(up: Update, raw: dict[str, bytes] | None = None) -> dict:
    """An Update as a JSON-able frame body (resources as base64 serialized protobuf)."""
    res = []
    for name, (version, msg) in up.resources.items():
        data = raw[name] if raw is not None else msg.SerializeToString()
        res.append([name, version, base64.b64encode(data).decode()])
    return {
        "type": up.type_url,
        "version": up.version,
        "full_state": up.full_state,
        "removed": list(up.removed),
        "resources": res,
    }


def decode_update(d: dict) -> Update:
    from sofamesh.config import protos

    cls = message_class(d["type"])
    resources = {}
    size = 0
    for name, version, b64 in d["resources"]:
        raw = base64.b64decode(b64)
        size += len(raw)
        msg = cls.FromString(raw)
        protos.ensure_types(msg)
        resources[name] = (version, msg)
    up = Update(d["type"], d["version"], resources, list(d["removed"]), bool(d["full_state"]))
    up.size = size
    return up


def worker_state(dyn: Any) -> dict:
    """What the main process needs of a worker's DynamicConfig to drive the stream."""
    return {
        "eds": sorted(dyn.names(EDS)),
        "rds": sorted(dyn.names(RDS)),
        "srds": sorted(dyn.names(SRDS)),
        # names that come from api_config_source or a file: {name: source key}
        "eds_sources": dyn.sources(EDS),
        "rds_sources": dyn.sources(RDS),
        "sds": sorted(dyn.names(SDS)),  # secrets its TLS contexts name (proxy/sds.py)
        "sds_sources": dyn.sources(SDS),
        # TLS contexts of clusters still waiting for a secret (they hold the initial fetch)
        "warming_tls_clusters": dyn.warming("clusters") - len(dyn.warming_clusters),
        "warming_clusters": sorted(dyn.warming_clusters),
        "warming_listeners": sorted(dyn.warming_listeners),
        "warming_static": dyn.warming("listeners") - len(dyn.warming_listeners),
        "draining": len(dyn.draining),
    }


# ---- inside a worker ---------------------------------------------------------------------


class WorkerFeed:
    """A worker's stand-in for the ADS client (DynamicConfig.client): the config comes from
    the main process; `start()` applies what the main process held when the worker started."""

    def __init__(self, initial: list[dict], ended: list[str], send: Any) -> None:
        self.initial = initial
        self.ended = ended  # initial fetch phases the main process gave up waiting for
        self.send = send  # callable(dict): one frame to the main process
        self.initialized = asyncio.Event()
        self.applier: Any = None
        self.live = False  # the ready frame is sent: state changes are reported as events
        self._task: asyncio.Task | None = None

    def bind(self, applier: Any) -> WorkerFeed:
        self.applier = applier
        return self

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._replay())

    async def _replay(self) -> None:
        try:
            for d in self.initial:
                up = decode_update(d)
                errors = await self.applier.apply(up)
                if errors:  # the main process held it as accepted: log, keep going
                    log.error("worker: replayed %s rejected: %s", d["type"], errors)
            for kind in self.ended:
                self.applier.end_warming(kind)
        finally:
            self.initial = []
            self.initialized.set()

    def poke(self) -> None:
        """Something finished warming (DNS): the main process's client may move on."""
        if self.live:
            self.send({"event": "xds_state", "state": worker_state(self.applier)})

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


# ---- in the main process -----------------------------------------------------------------


@dataclass
class Held:
    """A resource every worker accepted, as admin's dumps read DynamicConfig's entries."""

    version: str
    msg: Any
    raw: bytes
    updated: float = field(default_factory=time.time)

    @property
    def config(self) -> Any:
        return self.msg


class PoolApplier:
    """The Applier (sofamesh.xds.client) of the main process: fans each update out to the
    workers and answers with the union of their errors."""

    def __init__(self, pool: list[Any]) -> None:
        self.pool = pool  # list[proxy.workers.Worker]
        self.client: Any = None  # the AdsClient, poked when a worker's state changes
        self.lock = asyncio.Lock()  # an update and a worker (re)start never interleave
        self.held: dict[str, dict[str, Held]] = {t: {} for t in ORDER}
        self.type_versions: dict[str, str] = {}
        self.states: dict[int, dict] = {}  # worker index -> worker_state()
        self.ended: list[str] = []

    # ---------------------------------------------------------- Applier protocol
    async def apply(self, up: Update) -> dict[str, str]:
        raw = {n: m.SerializeToString() for n, (_, m) in up.resources.items()}
        body = encode_update(up, raw)
        async with self.lock:
            live = [w for w in self.pool if w.ready and w.alive()]
            res = await asyncio.gather(
                *(w.request("xds_apply", timeout=APPLY_TIMEOUT_S, update=body) for w in live),
                return_exceptions=True,
            )
            errors: dict[str, str] = {}
            for w, r in zip(live, res):
                if isinstance(r, BaseException):
                    if w.alive():  # it may have applied part: say so, the next push retries
                        errors[f"worker {w.index}"] = (
                            f"worker {w.index} did not apply the update: {type(r).__name__} {r}"
                        )
                    continue  # died: restarted with `held`, which this update joins
                if "error" in r:
                    errors[f"worker {w.index}"] = f"worker {w.index}: {r['error']}"
                    continue
                for name, text in r.get("errors", {}).items():
                    errors.setdefault(name, text)
                self.states[w.index] = r.get("state", {})
            self._hold(up, raw, errors)
        return errors

    def _hold(self, up: Update, raw: dict[str, bytes], errors: dict[str, str]) -> None:
        self.type_versions[up.type_url] = up.version
        table = self.held[up.type_url]
        for name, (version, msg) in up.resources.items():
            if name in errors:
                continue
            cur = table.get(name)
            if cur is not None and cur.raw == raw[name]:
                continue  # unchanged: keeps the version that last changed it (Envoy)
            table[name] = Held(version, msg, raw[name])
        gone = list(up.removed)
        if up.type_url == RDS:
            # Delta: a route config removed stays (Envoy's RDS ignores it, as the workers do:
            # DynamicConfig._apply_routes), but for a scope's, which leaves its scope
            scoped = {h.msg.route_configuration_name for h in self.held[SRDS].values()}
            gone = [n for n in gone if n in scoped]
        if up.full_state:
            gone = [n for n in table if n not in up.resources]
        for n in gone:
            table.pop(n, None)

    def _states(self) -> list[dict]:
        live = {w.index for w in self.pool if w.ready and w.alive()}
        return [s for i, s in self.states.items() if i in live]

    def names(self, type_url: str) -> set[str]:
        key = {EDS: "eds", SRDS: "srds", SDS: "sds"}.get(type_url, "rds")
        out: set[str] = set()
        for s in self._states():
            out.update(s.get(key, ()))
        return out

    def sources(self, type_url: str) -> dict[str, str]:
        key = {EDS: "eds_sources", RDS: "rds_sources", SDS: "sds_sources"}.get(type_url)
        out: dict[str, str] = {}
        for s in self._states() if key else ():
            out.update(s.get(key, {}))
        return out

    def stat_scopes(self, type_url: str, name: str) -> list[str]:
        """As DynamicConfig.stat_scopes, from the clusters and listeners the workers hold."""
        if type_url == EDS:
            return [
                f"cluster.{n}"
                for n, h in self.held[CDS].items()
                if h.msg.type == 3 and (h.msg.eds_cluster_config.service_name or n) == name
            ]
        from sofamesh.proxy.xds_shapes import rds_chains

        out: dict[str, None] = {}  # one scope a stat prefix, whatever the chains naming it
        for h in self.held[LDS].values():
            for _, rds, hcm, _ in rds_chains(h.msg):
                if rds == name:
                    out[f"http.{hcm.stat_prefix}.rds.{name}"] = None
        return list(out)

    def warming(self, kind: str) -> int:
        counts = [
            len(s.get("warming_clusters", ())) + s.get("warming_tls_clusters", 0)
            if kind == "clusters"
            else len(s.get("warming_listeners", ())) + s.get("warming_static", 0)
            for s in self._states()
        ]
        return max(counts, default=0)

    def end_warming(self, kind: str) -> None:
        self.ended.append(kind)
        asyncio.get_running_loop().create_task(self._end_warming(kind))

    async def _end_warming(self, kind: str) -> None:
        async with self.lock:
            live = [w for w in self.pool if w.ready and w.alive()]
            res = await asyncio.gather(
                *(w.request("xds_end_warming", kind=kind) for w in live), return_exceptions=True
            )
            for w, r in zip(live, res):
                if isinstance(r, dict) and "state" in r:
                    self.states[w.index] = r["state"]
        if self.client is not None:
            self.client.poke()

    # ---------------------------------------------------------- workers
    def replay(self) -> tuple[list[dict], list[str]]:
        """For a worker that starts now: what it must apply before it serves."""
        ups = []
        for t in ORDER:
            table = self.held[t]
            if not table and t not in self.type_versions:
                continue
            up = Update(
                t,
                self.type_versions.get(t, ""),
                {n: (h.version, h.msg) for n, h in table.items()},
                [],
                t in (CDS, LDS, SRDS),
            )
            ups.append(encode_update(up, {n: h.raw for n, h in table.items()}))
        return ups, list(self.ended)

    def on_state(self, index: int, state: dict) -> None:
        """A worker's ready frame or xds_state event."""
        self.states[index] = state
        if self.client is not None:
            self.client.poke()

    # ---------------------------------------------------------- admin's view
    def _first_state(self) -> dict:
        states = self._states()
        return states[0] if states else {}

    def _split(self, t: str, key: str) -> tuple[dict[str, Held], dict[str, Held]]:
        warming = set(self._first_state().get(key, ()))
        table = self.held[t]
        active = {n: h for n, h in table.items() if n not in warming}
        return active, {n: h for n, h in table.items() if n in warming}

    @property
    def active_clusters(self) -> dict[str, Held]:
        return self._split(CDS, "warming_clusters")[0]

    @property
    def warming_clusters(self) -> dict[str, Held]:
        return self._split(CDS, "warming_clusters")[1]

    @property
    def active_listeners(self) -> dict[str, Held]:
        return self._split(LDS, "warming_listeners")[0]

    @property
    def warming_listeners(self) -> dict[str, Held]:
        return self._split(LDS, "warming_listeners")[1]

    @property
    def routes(self) -> dict[str, Held]:
        return self.held[RDS]

    @property
    def endpoints(self) -> dict[str, Held]:
        return self.held[EDS]

    def counts(self) -> dict[str, int]:
        s = self._first_state()
        return {
            "warming_clusters": len(s.get("warming_clusters", ())),
            "warming_listeners": len(s.get("warming_listeners", ())),
            "draining_listeners": s.get("draining", 0),
        }
