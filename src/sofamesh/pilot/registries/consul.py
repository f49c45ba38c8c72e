"""Consul adapter: the catalog and health of services registered the way Spring Cloud
Consul does it (agent service registration with Name, ID, Tags, Meta, a TTL or HTTP check).

Watching uses Consul blocking queries: `/v1/catalog/services` for the set of services and
one `/v1/health/service/<name>` per service, each long-polled with the last `X-Consul-Index`.
Index handling follows Consul's rules: an index that goes backwards resets to 0, an index
below 1 is treated as 1, and a query that returns at once with the same index is not
repeated faster than `min_interval` (no busy loop).

An instance is healthy only if every check on it (its service checks and its node's checks)
is `passing`, as Spring Cloud's `?passing` filter does; unhealthy instances stay in the
snapshot marked unhealthy, so the generator can keep them out of load balancing.

Mapping: address = Service.Address or the node's address; labels = `key=value` tags, then
Meta (Meta wins); bare tags in label `consul.tags`; protocol from Meta `protocol` (default
http); weight = Weights.Passing; locality region = the datacenter, zone = Meta `zone`
(Spring Cloud's zone key).

With `export: true` the mesh's services known from other registries (the REST API, other
registries, peer clusters) are written into Consul for consumers outside the mesh, such as
Spring Cloud's discovery client: each instance a catalog entry of the external node
`export_node` (default `sofamesh`), Service ID `sofamesh-<service>-<instance id>`, Meta
`protocol` and `sofamesh-export: <this registry's name>` (entries with that mark are never
read back, so nothing loops), labels as `key=value` tags, weight, and one check whose status
follows the instance's health (passing or critical, so `?passing` queries skip unhealthy
instances). The address is the instance's, `export_address: HOST:PORT`, or `sidecar`
(127.0.0.1 and the service port + the pilot's --tcp-port-offset: the consumer's own
sidecar). At start and after each change the node's entries are reconciled with the mesh:
what went is deregistered, including what a previous run left.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aiohttp

from ..model import PROTOCOLS, Instance, Locality, Port, Service
from ._base import ExportAddress, Fields, SnapshotHolder, sorted_labels

log = logging.getLogger("sofamesh.pilot.registries.consul")


class ConsulQueryError(Exception):
    pass


class ConsulRegistry(SnapshotHolder):
    type = "consul"

    def __init__(
        self,
        address: str = "http://127.0.0.1:8500",
        *,
        name: str = "consul",
        namespace: str = "default",
        datacenter: str = "",
        token: str = "",
        exclude: tuple[str, ...] = ("consul",),
        services: tuple[str, ...] = (),
        wait: float = 30.0,
        min_interval: float = 0.05,
        max_connections: int = 100,
        connect_timeout: float = 10.0,
        export: bool = False,
        export_node: str = "sofamesh",
        export_address: str = "",
    ) -> None:
        super().__init__(name)
        self.exports = export
        self.export_node = export_node
        self.export_to = ExportAddress(export_address)
        self._exported: dict[str, dict] | None = None  # Service ID -> what we registered
        self._export_want: dict[str, dict] = {}
        self._export_task: asyncio.Task | None = None
        self.address = address.rstrip("/")
        self.namespace = namespace
        self.datacenter = datacenter
        self.token = token
        self.exclude = set(exclude)
        self.only = set(services)
        self.wait = wait
        self.min_interval = min_interval
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None
        self._catalog_task: asyncio.Task | None = None
        self._service_tasks: dict[str, asyncio.Task] = {}
        self._pending: set[str] = set()  # services whose first health read is outstanding
        self._catalog_seen = asyncio.Event()
        self._slots = asyncio.Semaphore(max_connections - 1)

    @classmethod
    def from_config(cls, cfg: dict[str, Any], *, path: str) -> ConsulRegistry:
        f = Fields(
            cfg,
            path,
            {
                "name",
                "address",
                "namespace",
                "datacenter",
                "token",
                "exclude",
                "services",
                "wait",
                "min_interval",
                "max_connections",
                "connect_timeout",
                "export",
                "export_node",
                "export_address",
            },
        )
        export_address = ExportAddress.field(f)
        address = f.text("address", "http://127.0.0.1:8500")
        if not address.startswith(("http://", "https://")):
            raise f.err(
                "address", f"expected http://host:port or https://host:port, got {address!r}"
            )
        wait = f.num("wait", 30.0, minimum=0.1)
        if wait > 600:
            raise f.err("wait", "Consul caps blocking queries at 600s")
        return cls(
            address,
            name=f.text("name", "consul") or "consul",
            namespace=f.text("namespace", "default") or "default",
            datacenter=f.text("datacenter"),
            token=f.text("token"),
            exclude=f.str_list("exclude", ("consul",)),
            services=f.str_list("services"),
            wait=wait,
            min_interval=f.num("min_interval", 0.05),
            max_connections=int(f.num("max_connections", 100, minimum=2)),
            connect_timeout=f.num("connect_timeout", 10.0),
            export=f.bool("export", False),
            export_node=f.text("export_node", "sofamesh") or "sofamesh",
            export_address=export_address,
        )

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self, on_change: Callable[[str], None]) -> None:
        """Start watching; wait up to `connect_timeout` for the catalog and every service's
        first health read, so the pilot's first push has them."""
        self._on_change = on_change
        headers = {"X-Consul-Token": self.token} if self.token else {}
        # One blocking query per watched service holds one connection. The pool is bounded
        # (Consul's agent allows 200 HTTP connections per client by default); beyond it the
        # watches queue for a slot, each freed within `wait`, so updates slow down but none
        # is lost. Queue time is not a timeout: only connect and read are.
        self._slots = asyncio.Semaphore(self.max_connections - 1)  # one is the catalog's
        self._session = aiohttp.ClientSession(
            headers=headers,
            connector=aiohttp.TCPConnector(limit=self.max_connections),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5.0),
        )
        self._catalog_seen = asyncio.Event()
        self._catalog_task = asyncio.create_task(self._watch_catalog(), name=f"consul:{self.name}")
        deadline = asyncio.get_running_loop().time() + self.connect_timeout
        try:
            await asyncio.wait_for(self._catalog_seen.wait(), self.connect_timeout)
            while self._pending and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
        except TimeoutError:
            pass
        if not self._catalog_seen.is_set() or self._pending:
            self.stats["connect_timeouts"] += 1
            log.warning(
                "registry %s: Consul %s: no full read within %.1fs; still trying",
                self.name,
                self.address,
                self.connect_timeout,
            )

    async def stop(self) -> None:
        tasks = [
            t for t in [self._catalog_task, self._export_task, *self._service_tasks.values()] if t
        ]
        self._export_task = None
        self._catalog_task = None
        self._service_tasks.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # ---- blocking queries --------------------------------------------------------------

    async def _query(self, path: str, index: int) -> tuple[Any, int]:
        """One blocking query: returns (body, X-Consul-Index)."""
        assert self._session is not None
        params: dict[str, str] = {"index": str(index), "wait": f"{self.wait:g}s"}
        if self.datacenter:
            params["dc"] = self.datacenter
        # Consul adds up to wait/16 of jitter; allow for it and a slow network
        timeout = aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=5.0, sock_read=self.wait * 1.1 + 10.0
        )
        async with self._session.get(self.address + path, params=params, timeout=timeout) as r:
            if r.status != 200:
                text = (await r.text())[:200]
                raise ConsulQueryError(f"GET {path}: HTTP {r.status}: {text.strip()}")
            body = await r.json(content_type=None)
            try:
                new_index = int(r.headers.get("X-Consul-Index", "0"))
            except ValueError:
                new_index = 0
        return body, new_index

    async def _blocking_loop(
        self, path: str, handle: Callable[[Any], None], slots: asyncio.Semaphore | None = None
    ) -> None:
        index = 0
        backoff = 0.2
        while True:
            started = asyncio.get_running_loop().time()
            try:
                if slots is None:
                    body, new_index = await self._query(path, index)
                else:
                    # a fair (FIFO, no barging) share of the connection pool
                    async with slots:
                        body, new_index = await self._query(path, index)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - network or bad data: count, retry, keep serving
                self.stats["watch_errors"] += 1
                log.warning("registry %s: %s: %s; retrying in %.1fs", self.name, path, e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.2
            try:
                handle(body)
            except Exception:
                self.stats["bad_responses"] += 1
                log.exception("registry %s: %s: could not use the response", self.name, path)
            if new_index < index:
                new_index = 0  # the index went backwards (e.g. a restarted server): reset
            new_index = max(new_index, 1)
            if new_index == index:
                # nothing changed and it returned anyway: do not spin
                elapsed = asyncio.get_running_loop().time() - started
                if elapsed < self.min_interval:
                    await asyncio.sleep(self.min_interval - elapsed)
            index = new_index

    async def _watch_catalog(self) -> None:
        await self._blocking_loop("/v1/catalog/services", self._on_catalog)

    def _on_catalog(self, body: Any) -> None:
        if not isinstance(body, dict):
            raise ConsulQueryError(f"catalog: expected an object, got {type(body).__name__}")
        wanted = {
            n
            for n in body
            if isinstance(n, str) and n not in self.exclude and (not self.only or n in self.only)
        }
        removed: dict[str, tuple[Service, list[Instance]] | None] = {}
        for gone in set(self._service_tasks) - wanted:
            self._service_tasks.pop(gone).cancel()
            self._pending.discard(gone)
            removed[gone] = None
        for new in sorted(wanted - set(self._service_tasks)):
            self._pending.add(new)
            self._service_tasks[new] = asyncio.create_task(
                self._blocking_loop(
                    f"/v1/health/service/{quote(new, safe='')}",
                    functools.partial(self._on_health, new),
                    self._slots,
                ),
                name=f"consul:{self.name}:{new}",
            )
        # watches beyond the connection pool wait for a slot (see start())
        self.stats["watches_queued"] = max(0, len(self._service_tasks) + 1 - self.max_connections)
        self._catalog_seen.set()
        self.update(removed)

    def _on_health(self, service: str, body: Any) -> None:
        if service not in self._service_tasks:
            return  # removed meanwhile
        self._pending.discard(service)
        if not isinstance(body, list):
            raise ConsulQueryError(f"health {service}: expected a list")
        self.update({service: self._build(service, body)})

    # ---- export (export: true) ---------------------------------------------------------

    async def export(
        self, services: dict[str, Service], instances: dict[str, list[Instance]]
    ) -> None:
        """Make the export node's entries match the mesh (model.Exporter). Runs in the
        background, retried with backoff while Consul fails; the newest model wins."""
        if not self.exports:
            return
        want: dict[str, dict] = {}
        for name, insts in instances.items():
            for inst in insts:
                if inst.registry != self.name:  # never write back what we read
                    body = self._export_entry(name, inst)
                    want[body["Service"]["ID"]] = body
        self._export_want = want
        if self._export_task is None or self._export_task.done():
            self._export_task = asyncio.create_task(self._export_loop(), name=f"{self.name}:export")

    async def _export_loop(self) -> None:
        backoff = 0.2
        while True:
            want = self._export_want
            try:
                await self._reconcile(want)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - Consul down or refusing: retried
                self.stats["export_errors"] += 1
                log.warning("registry %s: export: %s; retrying in %.1fs", self.name, e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            if want is self._export_want:
                return

    async def _reconcile(self, want: dict[str, dict]) -> None:
        if self._exported is None:  # first time: what a previous run left on the node
            node = await self._call("GET", f"/v1/catalog/node/{quote(self.export_node, safe='')}")
            self._exported = {
                sid: {}
                for sid, svc in ((node or {}).get("Services") or {}).items()
                if (svc.get("Meta") or {}).get(EXPORT_MARK) == self.name
            }
        for sid in [sid for sid in self._exported if sid not in want]:
            body = {"Node": self.export_node, "ServiceID": sid}
            await self._call("PUT", "/v1/catalog/deregister", body)
            del self._exported[sid]
            self.stats["exports_removed"] += 1
        for sid, body in want.items():
            if self._exported.get(sid) != body:
                await self._call("PUT", "/v1/catalog/register", body)
                self._exported[sid] = body
                self.stats["exports_written"] += 1

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        if self._session is None:
            raise ConsulQueryError("not started")
        params = {"dc": self.datacenter} if self.datacenter else {}
        data = None if body is None else json.dumps(body)
        timeout = aiohttp.ClientTimeout(total=10.0)
        async with self._session.request(
            method, self.address + path, params=params, data=data, timeout=timeout
        ) as r:
            text = await r.text()
            if r.status != 200:
                raise ConsulQueryError(f"{method} {path}: HTTP {r.status}: {text[:200].strip()}")
            return json.loads(text) if text.strip() else None

    def _export_entry(self, name: str, inst: Instance) -> dict:
        sid = re.sub(r"[^A-Za-z0-9_.:-]", "-", f"sofamesh-{name}-{inst.instance_id}")
        host, port = self.export_to.of(inst)
        labels = dict(inst.labels)
        meta = {"protocol": inst.protocol, EXPORT_MARK: self.name}
        for k, v in sorted(labels.items()):  # Consul's limits: 64 keys, values of 512
            if _META_KEY.match(k) and k not in meta and len(v) <= 512 and len(meta) < 64:
                meta[k] = v
        body: dict[str, Any] = {
            "Node": self.export_node,
            "Address": "127.0.0.1",
            "NodeMeta": {"external-node": "true", "external-probe": "false"},
            "Service": {
                "ID": sid,
                "Service": name,
                "Address": host,
                "Port": port,
                "Tags": [f"{k}={v}" for k, v in sorted(labels.items())],
                "Meta": meta,
                "Weights": {"Passing": max(1, int(inst.weight)), "Warning": 1},
            },
            "Check": {
                "Node": self.export_node,
                "CheckID": f"service:{sid}",
                "Name": "sofamesh: the instance's health in the mesh",
                "Status": "passing" if inst.healthy else "critical",
                "ServiceID": sid,
            },
        }
        if self.datacenter:
            body["Datacenter"] = self.datacenter
        return body

    # ---- mapping -----------------------------------------------------------------------

    def _build(self, service: str, entries: list[Any]) -> tuple[Service, list[Instance]] | None:
        insts: list[Instance] = []
        seen_ids: set[str] = set()
        ports: Counter[tuple[int, str]] = Counter()
        for e in entries:
            inst = self._instance(service, e)
            if inst is None:
                continue
            if inst.instance_id in seen_ids:  # IDs are unique per agent node only
                node = (e.get("Node") or {}).get("Node", "")
                inst = _replace_id(inst, f"{node}/{inst.instance_id}")
            seen_ids.add(inst.instance_id)
            insts.append(inst)
            ports[(inst.port, inst.protocol)] += 1
        if not insts:
            return None
        (port, proto), _ = min(ports.items(), key=lambda kv: (-kv[1], kv[0]))
        svc = Service(
            name=service,
            namespace=self.namespace,
            ports=(Port(port, proto, proto),),
            registry=self.name,
        )
        return svc, sorted(insts, key=lambda i: i.instance_id)

    def _instance(self, service: str, entry: Any) -> Instance | None:
        try:
            node = entry.get("Node") or {}
            svc = entry["Service"]
            checks = entry.get("Checks") or []
            port = int(svc.get("Port") or 0)
            address = svc.get("Address") or node.get("Address") or ""
            if not address or not 0 < port < 65536:
                raise ValueError(f"no usable address/port ({address!r}, {port})")
            meta = {str(k): str(v) for k, v in (svc.get("Meta") or {}).items()}
            if EXPORT_MARK in meta:
                return None  # written by a pilot (ours or a replica's): not a Consul service
            tags = [str(t) for t in (svc.get("Tags") or [])]
            weights = svc.get("Weights") or {}
            weight = int(weights.get("Passing", 1) or 1)
            healthy = all(isinstance(c, dict) and c.get("Status") == "passing" for c in checks)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            self.stats["bad_entries"] += 1
            log.warning(
                "registry %s: service %s: skipping a bad health entry: %s", self.name, service, e
            )
            return None
        labels: dict[str, str] = {}
        bare: list[str] = []
        for t in tags:
            k, sep, v = t.partition("=")
            if sep and k:
                labels[k] = v
            else:
                bare.append(t)
        labels.update(meta)
        if bare:
            labels["consul.tags"] = ",".join(sorted(bare))
        protocol = meta.get("protocol", "http").lower()
        if protocol not in PROTOCOLS:
            self.stats["unknown_protocols"] += 1
            protocol = "http"
        return Instance(
            service=service,
            instance_id=str(svc.get("ID") or f"{address}:{port}"),
            address=address,
            port=port,
            protocol=protocol,
            labels=sorted_labels(labels),
            weight=max(weight, 1),
            healthy=healthy,
            locality=Locality(region=str(node.get("Datacenter") or ""), zone=meta.get("zone", "")),
            registry=self.name,
            namespace=self.namespace,
        )


EXPORT_MARK = "sofamesh-export"
_META_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _replace_id(inst: Instance, iid: str) -> Instance:
    from dataclasses import replace

    return replace(inst, instance_id=iid)
