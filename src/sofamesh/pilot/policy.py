"""Operator policies through the pilot's REST API: who may call a service, and its global rate.

    PUT    /v1/services/{service}/policies/access  {"allow_from": ["frontend", ...]}
    PUT    /v1/services/{service}/policies/rate    {"requests_per_second": 100}
    GET    /v1/services/{service}/policies         both kinds of one service
    DELETE /v1/services/{service}/policies/{kind}  back to open / unlimited
    GET    /v1/policies                            every policy (`sofamesh mixer --pilot`)

Policies live in the pilot's store beside the instances (their own table, or etcd prefix),
so pilot replicas on one etcd serve the same listeners. What the sidecars get
(pilot/policy_xds.py): an access policy is RBAC on the service's virtual host (and a network
RBAC filter on its TCP/RPC listeners) allowing only connections from the addresses of the
allowed services' registered instances; a rate policy is a rate_limit_quota filter whose
bucket `{service: X}` shares R requests/s among every sidecar through `sofamesh mixer`'s RLQS.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from sofamesh.pilot.api import SERVICE_RE, BadRequest, ClientGone, _error

if TYPE_CHECKING:
    from sofamesh.pilot.model import Instance
    from sofamesh.pilot.store import BaseStore

KINDS = ("access", "rate")
MAX_ALLOWED = 64  # services one access policy may name
MAX_RPS = 1_000_000


@dataclass(frozen=True, slots=True)
class Resolved:
    """One service's policies against the current model: what the generator builds from."""

    allow_ips: tuple[str, ...] | None = None  # access policy: callers' addresses; None: open
    allow_from: tuple[str, ...] = ()  # the services named (for the RBAC policy's name)
    requests_per_second: int | None = None  # rate policy; None: unlimited


def validate(kind: str, body: Any) -> dict:
    """The stored record for a policy body, or BadRequest naming the field."""
    if kind not in KINDS:
        raise BadRequest("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    if not isinstance(body, dict):
        raise BadRequest("body", "must be a JSON object")
    if kind == "access":
        for k in body:
            if k != "allow_from":
                raise BadRequest(k, "unknown field (an access policy has allow_from)")
        names = body.get("allow_from")
        if not isinstance(names, list) or not names:
            raise BadRequest("allow_from", "required: a non-empty list of service names")
        if len(names) > MAX_ALLOWED:
            raise BadRequest("allow_from", f"at most {MAX_ALLOWED} services")
        for i, n in enumerate(names):
            if not isinstance(n, str) or not SERVICE_RE.match(n):
                raise BadRequest(f"allow_from[{i}]", f"{n!r} is not a service name")
        return {"allow_from": sorted(set(names))}
    for k in body:
        if k != "requests_per_second":
            raise BadRequest(k, "unknown field (a rate policy has requests_per_second)")
    rps = body.get("requests_per_second")
    if isinstance(rps, float) and rps.is_integer():
        rps = int(rps)
    if isinstance(rps, bool) or not isinstance(rps, int) or not 1 <= rps <= MAX_RPS:
        raise BadRequest(
            "requests_per_second", f"required: a whole number of requests from 1 to {MAX_RPS}"
        )
    return {"requests_per_second": rps}


def resolve(store: BaseStore, instances: dict[str, list[Instance]]) -> dict[str, Resolved]:
    """Every service with a policy -> what its sidecar config says now. The allowed callers'
    addresses follow their instances: a new instance of an allowed service is let in at the
    next push, one deregistered is shut out."""
    out: dict[str, Resolved] = {}
    for service, recs in store.records.items():
        ips = None
        names: tuple[str, ...] = ()
        access = recs.get("access")
        if access is not None:
            names = tuple(access.get("allow_from") or ())
            ips = tuple(sorted({i.address for n in names for i in instances.get(n) or ()}))
        rate = recs.get("rate")
        rps = int(rate["requests_per_second"]) if rate is not None else None
        out[service] = Resolved(ips, names, rps)
    return out


def _names(request: web.Request) -> tuple[str, str]:
    service = request.match_info["service"]
    if not SERVICE_RE.match(service):
        raise BadRequest("service", "must be a host name (letters, digits, '.', '-', '_')")
    kind = request.match_info.get("kind", "")
    if "kind" in request.match_info and kind not in KINDS:
        raise BadRequest("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    return service, kind


class PolicyApi:
    """The REST handlers, added to the pilot's RestApi application (its error middleware
    turns BadRequest into 400 and counts it)."""

    def __init__(self, store: BaseStore):
        self.store = store

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_put("/v1/services/{service}/policies/{kind}", self.put)
        r.add_delete("/v1/services/{service}/policies/{kind}", self.delete)
        r.add_get("/v1/services/{service}/policies", self.get)
        r.add_get("/v1/policies", self.list_all)

    async def put(self, request: web.Request) -> web.Response:
        service, kind = _names(request)
        try:
            raw = await request.read()
        except ConnectionError as e:
            raise ClientGone(str(e) or type(e).__name__) from None
        try:
            body = json.loads(raw) if raw else None
        except RecursionError:
            raise BadRequest("body", "JSON nested too deeply") from None
        except ValueError as e:
            raise BadRequest("body", f"invalid JSON: {e}") from None
        rec = validate(kind, body)
        created = self.store.get(service, kind) is None
        await self.store.put(service, kind, rec)
        return web.json_response(
            {"service": service, "kind": kind, **rec}, status=201 if created else 200
        )

    async def delete(self, request: web.Request) -> web.Response:
        service, kind = _names(request)
        if not await self.store.delete(service, kind):
            return _error(404, "kind", f"{service} has no {kind} policy")
        return web.Response(status=204)

    async def get(self, request: web.Request) -> web.Response:
        service, _ = _names(request)
        recs = self.store.records.get(service) or {}
        return web.json_response({"service": service, "policies": dict(sorted(recs.items()))})

    async def list_all(self, request: web.Request) -> web.Response:
        items = [
            {"service": s, "kind": k, **rec}
            for s, recs in sorted(self.store.records.items())
            for k, rec in sorted(recs.items())
        ]
        return web.json_response({"policies": items})
