"""A small fake Kubernetes API server speaking the real list/watch wire format for Services
(core/v1) and EndpointSlices (discovery.k8s.io/v1), for testing watch clients.

What it does as the real API server does:
- `GET /api/v1/services`, `/api/v1/namespaces/{ns}/services`, and the same for
  `/apis/discovery.k8s.io/v1/[namespaces/{ns}/]endpointslices`: a `<Kind>List` with
  `metadata.resourceVersion`; items carry no kind/apiVersion (as in real lists).
- `?watch=true&resourceVersion=N`: a chunked `application/json` stream of one JSON object
  per line, `{"type": "ADDED"|"MODIFIED"|"DELETED"|"BOOKMARK"|"ERROR", "object": {...}}`,
  replaying the events after N then live ones; without a resourceVersion (or "0") it
  starts with a synthetic ADDED per existing object. `timeoutSeconds` ends the stream.
  `allowWatchBookmarks=true` lets `bookmark()` send BOOKMARK events (an object with only
  kind, apiVersion and metadata.resourceVersion).
- A watch from a version older than the last `compact()`: HTTP 200 then one ERROR event
  whose object is a `Status` with code 410, reason Expired ("too old resource version"),
  or, with `expire_as_http=True`, an HTTP 410 response with that Status as the body.
- One resourceVersion counter over all kinds (etcd's revision); object metadata has uid,
  creationTimestamp, resourceVersion.

Test controls: `apply(obj)`, `delete(kind, ns, name)`, `compact()`, `bookmark()`,
`expire_watches()` (send the 410 ERROR on open watches), `drop_watches()` (close them),
`partition()`/`heal()` (the server unreachable: open watches closed, requests get 503),
`inject_raw(line)` (a raw line on open watches), and `requests` (method, path, query).
"""

from __future__ import annotations

import asyncio
import copy
import json
import ssl
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

from aiohttp import web

KINDS = {
    # kind -> (apiVersion, URL prefix, plural)
    "Service": ("v1", "/api/v1", "services"),
    "EndpointSlice": ("discovery.k8s.io/v1", "/apis/discovery.k8s.io/v1", "endpointslices"),
}
_CLOSE = object()


def parse_bool(v: str | None) -> bool:
    """Query booleans as the API server parses them (Go's strconv.ParseBool): the official
    Python client sends `watch=True`."""
    return v in ("1", "t", "T", "TRUE", "true", "True")


def status_410(requested: int, oldest: int) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"too old resource version: {requested} ({oldest})",
        "reason": "Expired",
        "code": 410,
    }


@dataclass
class _Watcher:
    kind: str
    namespace: str
    bookmarks: bool
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)


class FakeKubeAPI:
    def __init__(
        self,
        expire_as_http: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        token: str | None = None,
    ) -> None:
        """`ssl_context`: serve HTTPS as a real API server does; `token`: require
        `Authorization: Bearer <token>` (401 Unauthorized Status otherwise)."""
        self.ssl_context = ssl_context
        self.token = token
        self.expire_as_http = expire_as_http
        self.rv = 1
        self.compacted = 0  # watches from a version below this get 410
        self.objects: dict[tuple[str, str, str], dict] = {}  # (kind, ns, name) -> object
        self.history: list[tuple[int, str, str, dict]] = []  # (rv, kind, ns, event)
        self.watchers: list[_Watcher] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.partitioned = False
        self.authorizations: list[str] = []  # each request's Authorization header
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        for kind, (_, prefix, plural) in KINDS.items():
            app.router.add_get(f"{prefix}/{plural}", self._handler(kind, namespaced=False))
            app.router.add_get(
                f"{prefix}/namespaces/{{ns}}/{plural}", self._handler(kind, namespaced=True)
            )
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- test controls ---------------------------------------------------------------

    def apply(self, obj: dict) -> dict:
        """Create or replace an object (kind from obj["kind"]); emits ADDED or MODIFIED."""
        obj = copy.deepcopy(obj)
        kind = obj["kind"]
        md = obj.setdefault("metadata", {})
        ns = md.setdefault("namespace", "default")
        key = (kind, ns, md["name"])
        old = self.objects.get(key)
        self.rv += 1
        md["resourceVersion"] = str(self.rv)
        md["uid"] = old["metadata"]["uid"] if old else str(uuid.uuid4())
        md["creationTimestamp"] = (
            old["metadata"]["creationTimestamp"]
            if old
            else datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        )
        obj["apiVersion"] = KINDS[kind][0]
        self.objects[key] = obj
        self._emit(kind, ns, "MODIFIED" if old else "ADDED", obj)
        return obj

    def delete(self, kind: str, ns: str, name: str) -> None:
        obj = self.objects.pop((kind, ns, name))
        self.rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self._emit(kind, ns, "DELETED", obj)

    def compact(self) -> None:
        """Forget history: any watch from a version before now gets 410 Expired."""
        self.compacted = self.rv
        self.history.clear()

    def bookmark(self) -> None:
        """Send a BOOKMARK with the current version to watches that allow bookmarks."""
        for w in self.watchers:
            if w.bookmarks:
                api_version = KINDS[w.kind][0]
                w.queue.put_nowait(
                    {
                        "type": "BOOKMARK",
                        "object": {
                            "kind": w.kind,
                            "apiVersion": api_version,
                            "metadata": {"resourceVersion": str(self.rv)},
                        },
                    }
                )

    def expire_watches(self) -> None:
        for w in self.watchers:
            w.queue.put_nowait({"type": "ERROR", "object": status_410(self.rv, self.rv)})
            w.queue.put_nowait(_CLOSE)

    def drop_watches(self) -> None:
        for w in self.watchers:
            w.queue.put_nowait(_CLOSE)

    def partition(self) -> None:
        self.partitioned = True
        self.drop_watches()

    def heal(self) -> None:
        self.partitioned = False

    def inject_raw(self, line: bytes) -> None:
        for w in self.watchers:
            w.queue.put_nowait(line)

    def watch_requests(self, plural: str) -> list[dict[str, str]]:
        return [q for _, p, q in self.requests if p.endswith(plural) and parse_bool(q.get("watch"))]

    def list_requests(self, plural: str) -> list[dict[str, str]]:
        return [
            q for _, p, q in self.requests if p.endswith(plural) and not parse_bool(q.get("watch"))
        ]

    # ---- server ----------------------------------------------------------------------

    def _emit(self, kind: str, ns: str, etype: str, obj: dict) -> None:
        event = {"type": etype, "object": obj}
        self.history.append((self.rv, kind, ns, event))
        for w in self.watchers:
            if w.kind == kind and w.namespace in ("", ns):
                w.queue.put_nowait(event)

    def _handler(self, kind: str, namespaced: bool):
        async def handle(request: web.Request) -> web.StreamResponse:
            q = dict(request.query)
            if self.partitioned:
                return web.Response(status=503, text="unreachable")
            self.requests.append((request.method, request.path, q))
            self.authorizations.append(request.headers.get("Authorization", ""))
            if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
                return web.json_response(
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Failure",
                        "message": "Unauthorized",
                        "reason": "Unauthorized",
                        "code": 401,
                    },
                    status=401,
                )
            ns = request.match_info.get("ns", "") if namespaced else ""
            if parse_bool(q.get("watch")):
                return await self._watch(request, kind, ns, q)
            return self._list(kind, ns)

        return handle

    def _list(self, kind: str, ns: str) -> web.Response:
        items = []
        for (k, ons, _), obj in sorted(self.objects.items()):
            if k == kind and ns in ("", ons):
                item = copy.deepcopy(obj)
                item.pop("kind", None)
                item.pop("apiVersion", None)
                items.append(item)
        body = {
            "kind": f"{kind}List",
            "apiVersion": KINDS[kind][0],
            "metadata": {"resourceVersion": str(self.rv)},
            "items": items,
        }
        return web.json_response(body)

    async def _watch(
        self, request: web.Request, kind: str, ns: str, q: dict[str, str]
    ) -> web.StreamResponse:
        rv_s = q.get("resourceVersion", "")
        try:
            rv = int(rv_s) if rv_s else 0
        except ValueError:
            return web.json_response(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "message": f"invalid resourceVersion {rv_s!r}",
                    "reason": "BadRequest",
                    "code": 400,
                },
                status=400,
            )
        expired = rv != 0 and rv < self.compacted
        if expired and self.expire_as_http:
            return web.json_response(status_410(rv, self.compacted), status=410)

        w = _Watcher(kind, ns, parse_bool(q.get("allowWatchBookmarks")))
        if expired:
            w.queue.put_nowait({"type": "ERROR", "object": status_410(rv, self.compacted)})
            w.queue.put_nowait(_CLOSE)
        elif rv == 0:  # no version: the current state as ADDED events, then live
            for (k, ons, _), obj in sorted(self.objects.items()):
                if k == kind and ns in ("", ons):
                    w.queue.put_nowait({"type": "ADDED", "object": obj})
        else:
            for erv, k, ons, event in self.history:
                if erv > rv and k == kind and ns in ("", ons):
                    w.queue.put_nowait(event)
        self.watchers.append(w)

        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        timeout = float(q.get("timeoutSeconds") or 1800)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    ev = await asyncio.wait_for(w.queue.get(), left)
                except TimeoutError:
                    break
                if ev is _CLOSE:
                    break
                if isinstance(ev, bytes):
                    await resp.write(ev + b"\n")
                    continue
                await resp.write(json.dumps(ev).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.watchers.remove(w)
        try:
            await resp.write_eof()
        except ConnectionResetError:
            pass
        return resp


def service(
    name: str,
    ns: str = "default",
    ports: list[dict] | None = None,
    labels: dict[str, str] | None = None,
    **spec: Any,
) -> dict:
    """A Service object as `kubectl get -o json` shows it (ClusterIP by default)."""
    return {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {"app": name}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10"],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "selector": {"app": name},
            "sessionAffinity": "None",
            "internalTrafficPolicy": "Cluster",
            "ports": ports or [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
            **spec,
        },
        "status": {"loadBalancer": {}},
    }


def endpoint_slice(
    service_name: str,
    slice_name: str,
    ns: str = "default",
    ports: list[dict] | None = None,
    endpoints: list[dict] | None = None,
    address_type: str = "IPv4",
) -> dict:
    """An EndpointSlice as the EndpointSlice controller writes it."""
    return {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {
            "name": slice_name,
            "namespace": ns,
            "generateName": f"{service_name}-",
            "labels": {
                "kubernetes.io/service-name": service_name,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "name": service_name,
                    "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{ns}/{service_name}")),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "addressType": address_type,
        "ports": ports
        if ports is not None
        else [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints or [],
    }


def endpoint(
    ip: str,
    pod: str,
    ready: bool | None = True,
    zone: str = "zone-a",
    node: str = "node-1",
    ns: str = "default",
) -> dict:
    cond: dict[str, bool] = {}
    if ready is not None:
        cond = {"ready": ready, "serving": ready, "terminating": False}
    return {
        "addresses": [ip],
        "conditions": cond,
        "nodeName": node,
        "zone": zone,
        "targetRef": {
            "kind": "Pod",
            "namespace": ns,
            "name": pod,
            "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, pod)),
        },
    }
