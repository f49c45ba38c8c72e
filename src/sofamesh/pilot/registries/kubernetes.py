"""Kubernetes adapter: Services and EndpointSlices (discovery.k8s.io/v1) from the API server.

Each resource is kept with the API's list-then-watch protocol: a list gives the objects and
a resourceVersion; a watch from that version (`allowWatchBookmarks=true`) streams JSON
lines `{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...}`; a watch that ends
(server `timeoutSeconds`, a dropped connection) resumes from the last version seen; a
`410 Gone` (as the HTTP status or as an ERROR event carrying a Status with code 410,
reason Expired) means the version was compacted away, so the adapter lists again.

Mapping: a Service `name` in namespace `ns` becomes the mesh service
`name.ns.svc.<domain>` (domain default `cluster.local`) with its ports (protocol from
`appProtocol`, else from the port name's prefix as Istio does: `http-`, `http2-`, `grpc-`,
`tcp-`, `dubbo-`..., else `tcp`; UDP/SCTP ports are left out). Every endpoint address of its
EndpointSlices becomes one Instance per service port: address, the slice's port for it
(the targetPort), `service_port` = the Service port, healthy = `conditions.ready` (unset
counts as ready), locality zone = the endpoint's zone. ExternalName services are left out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
from collections.abc import Callable
from typing import Any

import aiohttp

from ..model import PROTOCOLS, Instance, Locality, Port, Service
from ._base import Fields, RegistryConfigError, SnapshotHolder, sorted_labels

log = logging.getLogger("sofamesh.pilot.registries.kubernetes")

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MAX_LINE = 64 * 1024 * 1024  # one watch event; the API server's own limit is far below

_APP_PROTOCOLS = {
    "http": "http",
    "https": "http",
    "http2": "http2",
    "h2c": "http2",
    "kubernetes.io/h2c": "http2",
    "kubernetes.io/ws": "http",
    "kubernetes.io/wss": "http",
    "grpc": "grpc",
    "grpc-web": "http",
    "tcp": "tcp",
    "tls": "tcp",
    "mongo": "tcp",
    "mysql": "tcp",
    "redis": "tcp",
    "dubbo": "dubbo",
    "bolt": "bolt",
    "hsf": "hsf",
}


def port_protocol(port: dict[str, Any]) -> str | None:
    """The mesh protocol of one Service/EndpointSlice port, None if the mesh cannot carry it."""
    if (port.get("protocol") or "TCP") != "TCP":
        return None  # UDP, SCTP
    app = (port.get("appProtocol") or "").lower()
    if app:
        return _APP_PROTOCOLS.get(app, "tcp")
    name = (port.get("name") or "").lower()
    prefix = name.split("-", 1)[0]
    if prefix in _APP_PROTOCOLS:
        return _APP_PROTOCOLS[prefix]
    return "tcp"


class KubeAPIError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class Expired(Exception):
    """The resourceVersion is too old (410): list again."""


class _ResourceWatch:
    """List + watch of one resource collection; keeps objects by (namespace, name)."""

    def __init__(self, owner: KubernetesRegistry, kind: str, path: str) -> None:
        self.owner = owner
        self.kind = kind
        self.path = path
        self.objects: dict[tuple[str, str], dict] = {}
        self.rv: str | None = None
        self.listed = asyncio.Event()

    async def run(self) -> None:
        stats = self.owner.stats
        backoff = 0.2
        while True:
            try:
                if self.rv is None:
                    await self._list()
                    self.listed.set()
                await self._watch()
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except Expired:
                stats[f"{self.kind}_relists"] += 1
                self.rv = None
            except Exception as e:  # noqa: BLE001 - network or bad data: count, retry, keep serving
                stats[f"{self.kind}_watch_errors"] += 1
                log.warning(
                    "registry %s: %s %s: %s; retrying in %.1fs",
                    self.owner.name,
                    self.kind,
                    self.path,
                    e,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _list(self) -> None:
        body = await self.owner._get_json(self.path, {})
        items = body.get("items")
        rv = (body.get("metadata") or {}).get("resourceVersion")
        if not isinstance(items, list) or not rv:
            raise ValueError(f"list of {self.kind}: no items or resourceVersion")
        objects: dict[tuple[str, str], dict] = {}
        for obj in items:
            key = _key(obj)
            if key is None:
                self.owner.stats["bad_objects"] += 1
                continue
            objects[key] = obj
        self.objects = objects
        self.rv = str(rv)
        self.owner.stats[f"{self.kind}_lists"] += 1
        self.owner._changed_all()

    async def _watch(self) -> None:
        params = {
            "watch": "true",
            "resourceVersion": self.rv or "",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(int(self.owner.watch_timeout)),
        }
        session = self.owner._session
        assert session is not None
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=10.0, sock_read=self.owner.watch_timeout + 30.0
        )
        async with session.get(
            self.owner.api_server + self.path,
            params=params,
            headers=self.owner._headers(),
            ssl=self.owner._ssl,
            timeout=timeout,
        ) as resp:
            if resp.status == 410:
                raise Expired()
            if resp.status != 200:
                raise KubeAPIError(resp.status, _status_message(await resp.read()))
            buf = b""
            async for chunk in resp.content.iter_any():
                buf += chunk
                if len(buf) > MAX_LINE:
                    raise ValueError("watch event larger than the limit")
                while True:
                    nl = buf.find(b"\n")
                    if nl < 0:
                        break
                    line, buf = buf[:nl], buf[nl + 1 :]
                    if line.strip():
                        self._event(line)
            if buf.strip():
                self._event(buf)

    def _event(self, line: bytes) -> None:
        stats = self.owner.stats
        try:
            ev = json.loads(line)
            etype = ev["type"]
            obj = ev["object"]
            if not isinstance(obj, dict):
                raise TypeError("object is not a mapping")
        except (ValueError, KeyError, TypeError) as e:
            stats["bad_events"] += 1
            log.warning(
                "registry %s: %s: bad watch event (%s): %.200r", self.owner.name, self.kind, e, line
            )
            return
        if etype == "ERROR":
            code = obj.get("code")
            if code == 410 or obj.get("reason") in ("Expired", "Gone"):
                raise Expired()
            raise KubeAPIError(int(code or 500), str(obj.get("message", "watch error")))
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if etype == "BOOKMARK":
            if rv:
                self.rv = str(rv)
                stats["bookmarks"] += 1
            return
        key = _key(obj)
        if key is None or etype not in ("ADDED", "MODIFIED", "DELETED"):
            stats["bad_events"] += 1
            return
        old = self.objects.get(key)
        if etype == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        if rv:
            self.rv = str(rv)
        stats["events"] += 1
        self.owner._changed_obj(self.kind, key, old, None if etype == "DELETED" else obj)


def _key(obj: Any) -> tuple[str, str] | None:
    md = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(md, dict) or not md.get("name"):
        return None
    return (str(md.get("namespace") or ""), str(md["name"]))


def _slice_owner(obj: dict | None) -> str | None:
    if not obj:
        return None
    labels = (obj.get("metadata") or {}).get("labels") or {}
    owner = labels.get(SERVICE_NAME_LABEL) if isinstance(labels, dict) else None
    return str(owner) if owner else None


def _status_message(body: bytes) -> str:
    try:
        st = json.loads(body)
        return f"{st.get('reason', '')}: {st.get('message', '')}"
    except ValueError:
        return body[:200].decode(errors="replace")


class KubernetesRegistry(SnapshotHolder):
    type = "kubernetes"
    exports = False

    def __init__(
        self,
        api_server: str,
        *,
        name: str = "kubernetes",
        namespaces: tuple[str, ...] = (),
        domain: str = "cluster.local",
        token: str = "",
        token_file: str = "",
        ca_file: str = "",
        insecure_skip_tls_verify: bool = False,
        watch_timeout: float = 300.0,
        connect_timeout: float = 10.0,
    ) -> None:
        super().__init__(name)
        self.api_server = api_server.rstrip("/")
        self.namespaces = namespaces
        self.domain = domain
        self.token = token
        self.token_file = token_file
        self.ca_file = ca_file
        self.insecure = insecure_skip_tls_verify
        self.watch_timeout = watch_timeout
        self.connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | bool = True
        self._watches: list[_ResourceWatch] = []
        self._tasks: list[asyncio.Task] = []
        self._dirty = asyncio.Event()
        self._rebuild_task: asyncio.Task | None = None
        self._full = True
        self._dirty_keys: set[tuple[str, str]] = set()
        self._svc_idx: dict[tuple[str, str], dict] = {}
        self._slice_idx: dict[tuple[str, str], dict[tuple[str, str], dict]] = {}

    @classmethod
    def from_config(cls, cfg: dict[str, Any], *, path: str) -> KubernetesRegistry:
        f = Fields(
            cfg,
            path,
            {
                "name",
                "api_server",
                "in_cluster",
                "namespaces",
                "domain",
                "token",
                "token_file",
                "ca_file",
                "insecure_skip_tls_verify",
                "watch_timeout",
                "connect_timeout",
            },
        )
        api_server = f.text("api_server")
        token_file = f.text("token_file")
        ca_file = f.text("ca_file")
        if f.bool("in_cluster", False):
            host = os.environ.get("KUBERNETES_SERVICE_HOST")
            port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            if not api_server:
                if not host:
                    raise f.err("in_cluster", "KUBERNETES_SERVICE_HOST is not set")
                host = f"[{host}]" if ":" in host else host
                api_server = f"https://{host}:{port}"
            token_file = token_file or f"{SA_DIR}/token"
            ca_file = ca_file or f"{SA_DIR}/ca.crt"
        if not api_server:
            raise f.err("api_server", "required (or in_cluster: true)")
        if not api_server.startswith(("http://", "https://")):
            raise f.err("api_server", f"expected an http(s):// URL, got {api_server!r}")
        watch_timeout = f.num("watch_timeout", 300.0, minimum=1.0)
        return cls(
            api_server,
            name=f.text("name", "kubernetes") or "kubernetes",
            namespaces=f.str_list("namespaces"),
            domain=f.text("domain", "cluster.local") or "cluster.local",
            token=f.text("token"),
            token_file=token_file,
            ca_file=ca_file,
            insecure_skip_tls_verify=f.bool("insecure_skip_tls_verify", False),
            watch_timeout=watch_timeout,
            connect_timeout=f.num("connect_timeout", 10.0),
        )

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self, on_change: Callable[[str], None]) -> None:
        self._on_change = on_change
        if self.api_server.startswith("https://"):
            if self.insecure:
                self._ssl = False
            else:
                try:
                    self._ssl = ssl.create_default_context(cafile=self.ca_file or None)
                except (OSError, ssl.SSLError) as e:
                    raise RegistryConfigError(f"registry {self.name}: ca_file: {e}") from None
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=30.0, sock_connect=10.0)
        )
        self._dirty = asyncio.Event()
        self._watches = []
        for ns in self.namespaces or ("",):
            nsp = f"/namespaces/{ns}" if ns else ""
            self._watches.append(_ResourceWatch(self, "services", f"/api/v1{nsp}/services"))
            self._watches.append(
                _ResourceWatch(
                    self, "endpointslices", f"/apis/discovery.k8s.io/v1{nsp}/endpointslices"
                )
            )
        self._tasks = [
            asyncio.create_task(w.run(), name=f"kubernetes:{self.name}:{w.path}")
            for w in self._watches
        ]
        self._rebuild_task = asyncio.create_task(self._rebuilder(), name=f"kubernetes:{self.name}")
        try:
            await asyncio.wait_for(
                asyncio.gather(*(w.listed.wait() for w in self._watches)), self.connect_timeout
            )
            self._rebuild()
        except TimeoutError:
            self.stats["connect_timeouts"] += 1
            log.warning(
                "registry %s: API server %s: no full list within %.1fs; still trying",
                self.name,
                self.api_server,
                self.connect_timeout,
            )

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._rebuild_task] if self._rebuild_task else [])]
        self._tasks = []
        self._rebuild_task = None
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # ---- HTTP ------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        h = {"Accept": "application/json"}
        token = self.token
        if self.token_file:
            try:  # bound service-account tokens rotate: read it for every request
                with open(self.token_file) as fh:
                    token = fh.read().strip()
            except OSError as e:
                self.stats["token_errors"] += 1
                log.warning("registry %s: token_file: %s", self.name, e)
        if token:
            h["Authorization"] = f"Bearer {token}"
        return h

    async def _get_json(self, path: str, params: dict[str, str]) -> dict:
        assert self._session is not None
        async with self._session.get(
            self.api_server + path, params=params, headers=self._headers(), ssl=self._ssl
        ) as resp:
            body = await resp.read()
            if resp.status == 410:
                raise Expired()
            if resp.status != 200:
                raise KubeAPIError(resp.status, _status_message(body))
        data = json.loads(body)
        if not isinstance(data, dict):
            raise TypeError("expected a JSON object")
        return data

    # ---- model -----------------------------------------------------------------------

    def _changed_all(self) -> None:
        self._full = True
        self._dirty.set()

    def _changed_obj(
        self, kind: str, key: tuple[str, str], old: dict | None, new: dict | None
    ) -> None:
        if kind == "services":
            if new is None:
                self._svc_idx.pop(key, None)
            else:
                self._svc_idx[key] = new
            self._dirty_keys.add(key)
        else:
            for obj in (old, new):
                owner = _slice_owner(obj)
                if owner is not None:
                    skey = (key[0], owner)
                    self._dirty_keys.add(skey)
                    self._slice_idx.get(skey, {}).pop(key, None)
            owner = _slice_owner(new)
            if new is not None and owner is not None:
                self._slice_idx.setdefault((key[0], owner), {})[key] = new
        self._dirty.set()

    async def _rebuilder(self) -> None:
        # Coalesces a burst of events (a relist, a rollout) into one rebuild; single events
        # rebuild only the services they touch.
        while True:
            await self._dirty.wait()
            await asyncio.sleep(0)  # let the rest of the buffered events land first
            self._dirty.clear()
            if all(w.listed.is_set() for w in self._watches):
                self._rebuild()

    def fqdn(self, name: str, namespace: str) -> str:
        return f"{name}.{namespace}.svc.{self.domain}"

    def _rebuild(self) -> None:
        if self._full:
            self._full = False
            self._dirty_keys.clear()
            self._svc_idx = {}
            self._slice_idx = {}
            for w in self._watches:
                if w.kind == "services":
                    self._svc_idx.update(w.objects)
                else:
                    for key, sl in w.objects.items():
                        owner = _slice_owner(sl)
                        if owner is not None:
                            self._slice_idx.setdefault((key[0], owner), {})[key] = sl
            services: dict[str, Service] = {}
            instances: dict[str, list[Instance]] = {}
            for key in self._svc_idx:
                built = self._build_key(key)
                if built is not None:
                    services[built[0].name] = built[0]
                    instances[built[0].name] = built[1]
            self.publish(services, instances)
            return
        keys, self._dirty_keys = self._dirty_keys, set()
        self.update({self.fqdn(name, ns): self._build_key((ns, name)) for ns, name in keys})

    def _build_key(self, key: tuple[str, str]) -> tuple[Service, list[Instance]] | None:
        obj = self._svc_idx.get(key)
        if obj is None:
            return None
        ns, name = key
        try:
            return self._service(ns, name, obj, list(self._slice_idx.get(key, {}).values()))
        except (TypeError, ValueError, AttributeError, KeyError) as e:
            self.stats["bad_objects"] += 1
            log.warning("registry %s: service %s/%s: %s", self.name, ns, name, e)
            return None

    def _service(
        self, ns: str, name: str, obj: dict, slices: list[dict]
    ) -> tuple[Service, list[Instance]] | None:
        spec = obj.get("spec") or {}
        if spec.get("type") == "ExternalName":
            return None
        md = obj.get("metadata") or {}
        ports: list[tuple[Port, dict]] = []
        for p in spec.get("ports") or []:
            proto = port_protocol(p)
            if proto is None or proto not in PROTOCOLS:
                continue
            ports.append((Port(int(p["port"]), proto, str(p.get("name") or "")), p))
        fq = self.fqdn(name, ns)
        svc = Service(
            name=fq,
            namespace=ns,
            ports=tuple(pt for pt, _ in ports),
            labels=sorted_labels({str(k): str(v) for k, v in (md.get("labels") or {}).items()}),
            registry=self.name,
        )
        seen: set[tuple[str, int, int]] = set()
        insts: list[Instance] = []
        for sl in sorted(slices, key=lambda s: (s.get("metadata") or {}).get("name", "")):
            if sl.get("addressType") not in ("IPv4", "IPv6"):
                continue  # FQDN slices: not addresses Envoy can use as endpoints
            slice_ports = {str(sp.get("name") or ""): sp for sp in sl.get("ports") or []}
            for ep in sl.get("endpoints") or []:
                cond = ep.get("conditions") or {}
                healthy = cond.get("ready") is not False
                ref = ep.get("targetRef") or {}
                labels = {}
                if ep.get("nodeName"):
                    labels["kubernetes.io/hostname"] = str(ep["nodeName"])
                if ep.get("zone"):
                    labels["topology.kubernetes.io/zone"] = str(ep["zone"])
                for port, raw in ports:
                    sp = slice_ports.get(str(raw.get("name") or ""))
                    if sp is None or sp.get("port") is None:
                        continue
                    target = int(sp["port"])
                    for addr in ep.get("addresses") or []:
                        k = (str(addr), target, port.number)
                        if k in seen:  # the same endpoint in two slices (mid-migration)
                            continue
                        seen.add(k)
                        iid = f"{ref.get('name') or addr}:{target}"
                        if len(ports) > 1:  # two service ports may share one targetPort
                            iid += f"/{port.number}"
                        insts.append(
                            Instance(
                                service=fq,
                                instance_id=iid,
                                address=str(addr),
                                port=target,
                                protocol=port.protocol,
                                labels=sorted_labels(labels),
                                healthy=healthy,
                                locality=Locality(zone=str(ep.get("zone") or "")),
                                registry=self.name,
                                namespace=ns,
                                service_port=port.number,
                            )
                        )
        insts.sort(key=lambda i: (i.service_port, i.instance_id, i.address))
        return svc, insts
