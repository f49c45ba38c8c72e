"""The open Service Registry REST API (see openapi.yaml) and the "api" Registry it feeds.

Any process can register itself: `PUT /v1/services/{service}/instances/{id}` with its
address, port, protocol, labels and TTL; heartbeats keep it alive; the store persists it.
The same HTTP server carries the pilot's debug endpoints and Prometheus metrics.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections import Counter
from typing import TYPE_CHECKING, Any

from aiohttp import web

from sofamesh.pilot.model import PROTOCOLS, Instance, Locality, Snapshot
from sofamesh.pilot.store import BaseStore, StoreError

if TYPE_CHECKING:
    from sofamesh.pilot.core import Pilot

log = logging.getLogger("sofamesh.pilot.api")

SERVICE_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.\-]{0,251}[A-Za-z0-9])?$")
INSTANCE_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,253}$")
LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_./\-]{0,252})$")
MAX_TTL = 86400
MAX_BODY = 64 * 1024
FIELDS = {
    "address",
    "port",
    "protocol",
    "labels",
    "ttl_seconds",
    "weight",
    "locality",
    "service_port",
    "healthy",
}


class ClientGone(Exception):
    """The client closed its connection before its request was read whole: nothing to answer,
    and not the store's fault (counted in pilot_api_client_disconnects_total)."""


class BadRequest(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _int(body: dict, name: str, lo: int, hi: int, default: int | None = None) -> int | None:
    v = body.get(name, default)
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)  # JSON has one number type: 8080.0 is the integer 8080
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadRequest(name, f"must be an integer from {lo} to {hi}")
    if not lo <= v <= hi:
        raise BadRequest(name, f"must be from {lo} to {hi}, got {v}")
    return v


def validate_instance(body: Any) -> dict:
    """The normalized record for a registration body, or BadRequest naming the field."""
    if not isinstance(body, dict):
        raise BadRequest("body", "must be a JSON object")
    for k in body:
        if k not in FIELDS:
            raise BadRequest(k, "unknown field")
    addr = body.get("address")
    if not isinstance(addr, str) or not addr:
        raise BadRequest("address", "required: an IPv4 or IPv6 address")
    try:
        addr = str(ipaddress.ip_address(addr))
    except ValueError:
        raise BadRequest("address", f"{addr!r} is not an IP address") from None
    port = _int(body, "port", 1, 65535)
    if port is None:
        raise BadRequest("port", "required: an integer from 1 to 65535")
    protocol = body.get("protocol", "http")
    if protocol not in PROTOCOLS:
        raise BadRequest("protocol", f"must be one of {', '.join(PROTOCOLS)}")
    labels = body.get("labels", {})
    if not isinstance(labels, dict):
        raise BadRequest("labels", "must be an object of string values")
    for k, v in labels.items():
        if not LABEL_KEY_RE.match(k):
            raise BadRequest(f"labels.{k}", "invalid label key")
        if not isinstance(v, str) or len(v) > 1024:
            raise BadRequest(f"labels.{k}", "must be a string (at most 1024 characters)")
    ttl = body.get("ttl_seconds", 0)
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 <= ttl <= MAX_TTL:
        raise BadRequest("ttl_seconds", f"must be a number from 0 (no expiry) to {MAX_TTL}")
    weight = _int(body, "weight", 1, 128, 1)
    service_port = _int(body, "service_port", 1, 65535)
    healthy = body.get("healthy", True)
    if not isinstance(healthy, bool):
        raise BadRequest("healthy", "must be true or false")
    loc = body.get("locality", {})
    if not isinstance(loc, dict):
        raise BadRequest("locality", "must be an object with region, zone, sub_zone")
    for k, v in loc.items():
        if k not in ("region", "zone", "sub_zone"):
            raise BadRequest(f"locality.{k}", "unknown field")
        if not isinstance(v, str):
            raise BadRequest(f"locality.{k}", "must be a string")
    rec = {
        "address": addr,
        "port": port,
        "protocol": protocol,
        "labels": dict(labels),
        "ttl_seconds": ttl,
        "weight": weight,
        "healthy": healthy,
        "locality": {k: loc.get(k, "") for k in ("region", "zone", "sub_zone")},
    }
    if service_port is not None:
        rec["service_port"] = service_port
    return rec


def record_to_instance(service: str, iid: str, rec: dict) -> Instance:
    loc = rec.get("locality") or {}
    return Instance(
        service=service,
        instance_id=iid,
        address=rec["address"],
        port=int(rec["port"]),
        protocol=rec.get("protocol", "http"),
        labels=tuple(sorted((rec.get("labels") or {}).items())),
        weight=int(rec.get("weight", 1)),
        healthy=bool(rec.get("healthy", True)),
        locality=Locality(loc.get("region", ""), loc.get("zone", ""), loc.get("sub_zone", "")),
        registry="api",
        service_port=int(rec.get("service_port", 0) or 0),
    )


class ApiRegistry:
    """The REST API's instances as a `model.Registry` (name "api"), backed by a store."""

    name = "api"

    def __init__(self, store: BaseStore):
        self.store = store
        self._on_change = None
        self._cache: dict[str, list[Instance]] = {}
        self.stats: Counter[str] = Counter()
        self._dirty: set[str] = set(store.records)
        store.listeners.append(self._store_changed)

    def _store_changed(self, service: str) -> None:
        self._dirty.add(service)
        if self._on_change is not None:
            self._on_change(self.name)

    async def start(self, on_change) -> None:
        self._on_change = on_change
        self._dirty |= set(self.store.records)
        on_change(self.name)

    async def stop(self) -> None:
        self._on_change = None

    def snapshot(self) -> Snapshot:
        for s in self._dirty:
            insts = []
            for i, r in sorted((self.store.records.get(s) or {}).items()):
                try:
                    insts.append(record_to_instance(s, i, r))
                except (KeyError, TypeError, ValueError) as e:
                    # e.g. written into etcd by hand: skip that one, keep the rest moving
                    self.stats["bad_records"] += 1
                    log.warning("registry api: ignoring stored record %s/%s: %r", s, i, e)
            if insts:
                self._cache[s] = insts
            else:
                self._cache.pop(s, None)
        self._dirty.clear()
        return Snapshot(services={}, instances=dict(self._cache))


def _error(status: int, field: str, message: str) -> web.Response:
    return web.json_response(
        {"error": f"{field}: {message}", "field": field, "message": message}, status=status
    )


def _public(service: str, iid: str, rec: dict, store: BaseStore) -> dict:
    out = {k: v for k, v in rec.items() if k != "lease"}
    out["instance_id"] = iid
    out["service"] = service
    exp = store.expires_in(service, iid)
    if exp is not None:
        out["expires_in"] = round(exp, 3)
    return out


class RestApi:
    def __init__(
        self, store: BaseStore, pilot: Pilot | None = None, registry: ApiRegistry | None = None
    ):
        self.store = store
        self.pilot = pilot
        self.registry = registry
        self.bad_requests = 0
        self.cluster = ""  # --cluster: where this pilot's own instances live (registry sync)
        self.app = web.Application(client_max_size=MAX_BODY, middlewares=[self._errors])
        r = self.app.router
        r.add_put("/v1/services/{service}/instances/{instance_id}", self.put_instance)
        r.add_put("/v1/services/{service}/instances/{instance_id}/heartbeat", self.heartbeat)
        r.add_delete("/v1/services/{service}/instances/{instance_id}", self.delete_instance)
        r.add_get("/v1/services", self.list_services)
        r.add_get("/v1/services/{service}", self.get_service)
        r.add_get("/healthz", self.healthz)
        r.add_get("/metrics", self.metrics)
        r.add_get("/debug/connections", self.debug_connections)
        r.add_get("/debug/nacks", self.debug_nacks)
        r.add_get("/debug/config", self.debug_config)
        r.add_get("/debug/problems", self.debug_problems)
        self._runner: web.AppRunner | None = None
        self.port = 0
        # --secure-api: HTTPS with client certificates (pilot/doors.py adds its middleware)
        self.ssl_context: Any = None

    @web.middleware
    async def _errors(self, request: web.Request, handler):
        try:
            return await handler(request)
        except BadRequest as e:
            self.bad_requests += 1
            if self.pilot is not None:
                self.pilot.metrics.inc("pilot_api_bad_requests_total")
            return _error(400, e.field, e.message)
        except ClientGone as e:
            log.debug("client left during %s %s: %s", request.method, request.path, e)
            if self.pilot is not None:
                self.pilot.metrics.inc("pilot_api_client_disconnects_total")
            return web.Response(status=499)  # nobody reads it: the connection is gone
        except web.HTTPRequestEntityTooLarge:
            self.bad_requests += 1
            return _error(413, "body", f"larger than {MAX_BODY} bytes")
        except web.HTTPException as e:
            if e.status >= 400 and e.content_type != "application/json":
                return _error(e.status, "path", e.reason)
            raise
        except (TimeoutError, StoreError, OSError) as e:
            # the store (etcd) is unreachable or failed: the caller may retry; nothing half-done
            log.warning("store error on %s %s: %s", request.method, request.path, e)
            if self.pilot is not None:
                self.pilot.metrics.inc("pilot_api_store_errors_total")
            return _error(503, "store", f"unavailable: {e}")
        except Exception as e:  # the etcd client's own error types
            if type(e).__module__.split(".")[0] not in ("aetcd", "grpc", "sqlite3"):
                raise
            log.warning("store error on %s %s: %r", request.method, request.path, e)
            if self.pilot is not None:
                self.pilot.metrics.inc("pilot_api_store_errors_total")
            return _error(503, "store", f"unavailable: {e}")

    def _names(self, request: web.Request) -> tuple[str, str]:
        service = request.match_info["service"]
        iid = request.match_info.get("instance_id", "")
        if not SERVICE_RE.match(service):
            raise BadRequest("service", "must be a host name (letters, digits, '.', '-', '_')")
        if "instance_id" in request.match_info and not INSTANCE_RE.match(iid):
            raise BadRequest("instance_id", "letters, digits, '.', ':', '-', '_' (1-253)")
        return service, iid

    async def put_instance(self, request: web.Request) -> web.Response:
        service, iid = self._names(request)
        try:
            raw = await request.read()
        except ConnectionError as e:  # aiohttp's "Connection lost": the client left mid-body
            raise ClientGone(str(e) or type(e).__name__) from None
        try:
            body = json.loads(raw) if raw else None
        except RecursionError:
            raise BadRequest("body", "JSON nested too deeply") from None
        except ValueError as e:
            raise BadRequest("body", f"invalid JSON: {e}") from None
        rec = validate_instance(body)
        created = self.store.get(service, iid) is None
        await self.store.put(service, iid, rec)
        return web.json_response(
            _public(service, iid, rec, self.store), status=201 if created else 200
        )

    async def heartbeat(self, request: web.Request) -> web.Response:
        service, iid = self._names(request)
        if not await self.store.heartbeat(service, iid):
            return _error(404, "instance_id", f"{service}/{iid} is not registered (expired?)")
        rec = self.store.get(service, iid) or {}
        return web.json_response(
            {
                "service": service,
                "instance_id": iid,
                "ttl_seconds": rec.get("ttl_seconds", 0),
                "expires_in": self.store.expires_in(service, iid),
            }
        )

    async def delete_instance(self, request: web.Request) -> web.Response:
        service, iid = self._names(request)
        if not await self.store.delete(service, iid):
            return _error(404, "instance_id", f"{service}/{iid} is not registered")
        return web.Response(status=204)

    def _model(self):
        """The merged model, with this API's own instances read live (not after the debounce)."""
        if self.pilot is not None:
            from sofamesh.pilot.core import merge

            snaps = [
                self.registry.snapshot() if r is self.registry else self.pilot.snapshots.get(r.name)
                for r in self.pilot.registries
            ]
            return merge([s for s in snaps if s is not None])
        inst = {
            s: [record_to_instance(s, i, r) for i, r in sorted(recs.items())]
            for s, recs in self.store.records.items()
        }
        return {}, inst

    async def list_services(self, request: web.Request) -> web.Response:
        services, instances = self._model()
        out = []
        for name in sorted(set(services) | set(instances)):
            insts = instances.get(name, [])
            svc = services.get(name)
            out.append(
                {
                    "name": name,
                    "namespace": svc.namespace
                    if svc
                    else (insts[0].namespace if insts else "default"),
                    "instances": len(insts),
                    "registries": sorted(
                        {i.registry for i in insts} | ({svc.registry} if svc else set())
                    ),
                }
            )
            if self.cluster:  # registry sync: the clusters its instances live in
                out[-1]["clusters"] = sorted({self._cluster_of(i) for i in insts})
        return web.json_response({"services": out})

    def _cluster_of(self, inst: Instance) -> str:
        if inst.registry == "peer":
            return dict(inst.labels).get("topology.istio.io/cluster", "")  # generate.CLUSTER_LABEL
        return self.cluster

    async def get_service(self, request: web.Request) -> web.Response:
        service, _ = self._names(request)
        services, instances = self._model()
        insts = instances.get(service)
        svc = services.get(service)
        if not insts and svc is None:
            return _error(404, "service", f"{service} is not known")
        items = []
        for i in insts or []:
            d = {
                "instance_id": i.instance_id,
                "address": i.address,
                "port": i.port,
                "protocol": i.protocol,
                "labels": dict(i.labels),
                "weight": i.weight,
                "healthy": i.healthy,
                "registry": i.registry,
                **({"cluster": self._cluster_of(i)} if self.cluster else {}),
                "locality": {
                    "region": i.locality.region,
                    "zone": i.locality.zone,
                    "sub_zone": i.locality.sub_zone,
                },
            }
            if i.service_port:
                d["service_port"] = i.service_port
            if i.registry == "api":
                rec = self.store.get(service, i.instance_id)
                if rec is not None:
                    d["ttl_seconds"] = rec.get("ttl_seconds", 0)
                    exp = self.store.expires_in(service, i.instance_id)
                    if exp is not None:
                        d["expires_in"] = round(exp, 3)
            items.append(d)
        ports = [
            {"number": p.number, "protocol": p.protocol, "name": p.name}
            for p in (svc.ports if svc else ())
        ]
        return web.json_response({"name": service, "ports": ports, "instances": items})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def metrics(self, request: web.Request) -> web.Response:
        text = self.pilot.metrics.prometheus() if self.pilot is not None else ""
        if self.pilot is not None:
            lines = []
            for reg in self.pilot.registries:
                for k, v in sorted(dict(getattr(reg, "stats", None) or {}).items()):
                    if isinstance(v, (int, float)):
                        lines.append(f'pilot_registry_stat{{registry="{reg.name}",stat="{k}"}} {v}')
            if self.store is not None:
                lines.append(f"pilot_store_expired_total {self.store.expired}")
                lines.append(f"pilot_store_relists_total {getattr(self.store, 'relists', 0)}")
            text += "".join(line + "\n" for line in lines)
        return web.Response(text=text, content_type="text/plain")

    async def debug_connections(self, request: web.Request) -> web.Response:
        conns = [c.describe() for c in self.pilot.ads.connections.values()] if self.pilot else []
        ident = self.pilot.ads.identifier if self.pilot else ""
        return web.json_response({"pilot": ident, "connections": conns})

    async def debug_nacks(self, request: web.Request) -> web.Response:
        return web.json_response({"nacks": list(self.pilot.ads.nacks) if self.pilot else []})

    async def debug_problems(self, request: web.Request) -> web.Response:
        p = self.pilot
        return web.json_response(
            {
                "generate": list(p.gen.problems) if p else [],
                "skipped": dict(p.gen.skipped) if p else {},
                "registries": dict(p.registry_errors) if p else {},
            }
        )

    async def debug_config(self, request: web.Request) -> web.Response:
        """Names and versions per type (`?type=cds|eds|lds|rds`)."""
        from sofamesh.pilot.generate import SHORT

        if self.pilot is None:
            return web.json_response({})
        want = request.query.get("type")
        out = {}
        for t, name in SHORT.items():
            if want and want != name:
                continue
            out[name] = {
                "version": self.pilot.gen.version(t),
                "resources": {n: r.version for n, r in sorted(self.pilot.gen.all[t].items())},
            }
        return web.json_response(out)

    async def start(self, host: str, port: int) -> int:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_port=False, ssl_context=self.ssl_context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
