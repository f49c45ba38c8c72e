"""ZooKeeper adapter for Dubbo's registry layout, and registry sync back into it.

Reads `/<root>/<interface>/providers/<URL-encoded provider URL>` (Dubbo 2.7/3 interface-level
registration) with ZooKeeper watches: a children watch on the root (interfaces appear and
go) and one on each interface's `providers` node (an `exists` watch while it is missing).
Each provider URL becomes an Instance of the service named after the interface (protocol
from the URL's scheme, labels from its params). A provider's ephemeral node vanishes when
its session ends, so a dead provider leaves the snapshot.

With `export: true` the mesh's Dubbo services (instances with protocol `dubbo`, or those in
`export_protocols`) are written back as ephemeral provider nodes carrying the params a Dubbo
consumer matches on (interface, version, group, methods, side=provider), at the instance's
address, at `export_address` (HOST:PORT), or with `export_address: sidecar` at the
consumer's own sidecar (127.0.0.1, the service port + the pilot's --tcp-port-offset: its
tcp_proxy listener, so calls to services in other clusters cross the edges), plus a
`sofamesh.export` marker: nodes with that marker are never read back as services, so a
pilot does not re-import what it (or another pilot replica) exported.

All ZooKeeper calls go through kazoo's async API; results and watch events are handed to the
asyncio loop, where one task applies them in batches (kazoo's threads never touch state).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import NodeExistsError, NoNodeError
from kazoo.retry import KazooRetry

from ..model import Instance, Port, Service
from . import dubbo_url
from ._base import ExportAddress, Fields, SnapshotHolder, sorted_labels
from .dubbo_url import EXPORT_MARK, PROTOCOL_MAP, DubboURLError, ProviderURL

log = logging.getLogger("sofamesh.pilot.registries.zookeeper")

_ROOT = "\0root"  # dirty-set key for the root's children
READ_WINDOW = 256  # providers reads in flight during a resync


class ZooKeeperRegistry(SnapshotHolder):
    type = "zookeeper"

    def __init__(
        self,
        hosts: str,
        *,
        name: str = "zookeeper",
        root: str = "/dubbo",
        namespace: str = "default",
        export: bool = False,
        export_protocols: tuple[str, ...] = ("dubbo",),
        export_address: str = "",
        export_application: str = "sofamesh",
        session_timeout: float = 10.0,
        auth: str = "",
        connect_timeout: float = 10.0,
    ) -> None:
        super().__init__(name)
        self.hosts = hosts
        self.root = "/" + root.strip("/")
        self.namespace = namespace
        self.exports = export
        self.export_protocols = export_protocols
        self.export_to = ExportAddress(export_address)
        self.export_application = export_application
        self.session_timeout = session_timeout
        self.auth = auth  # "user:password": ZooKeeper digest auth, as Dubbo's username/password
        self.connect_timeout = connect_timeout

        self._zk: KazooClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._synced = asyncio.Event()
        self._connected = False
        self._interfaces: set[str] = set()
        self._children: dict[str, list[str]] = {}  # interface -> provider node names
        self._bad: set[str] = set()  # node names that did not parse (counted once)
        # export state: desired node paths, and those this session created
        self._export_want: dict[str, str] = {}  # full path -> interface
        self._export_have: set[str] = set()
        self._export_lock = asyncio.Lock()
        self._export_dirty = False

    @classmethod
    def from_config(cls, cfg: dict[str, Any], *, path: str) -> ZooKeeperRegistry:
        f = Fields(
            cfg,
            path,
            {
                "name",
                "hosts",
                "root",
                "namespace",
                "export",
                "export_protocols",
                "export_address",
                "export_application",
                "session_timeout",
                "auth",
                "connect_timeout",
            },
        )
        protocols = f.str_list("export_protocols", ("dubbo",))
        for p in protocols:
            if p not in PROTOCOL_MAP.values() and p != "tcp":
                raise f.err("export_protocols", f"unknown protocol {p!r}")
        export_address = ExportAddress.field(f)
        root = f.text("root", "/dubbo")
        if not root.startswith("/"):
            raise f.err("root", f"must be an absolute path, got {root!r}")
        return cls(
            f.text("hosts", required=True),
            name=f.text("name", "zookeeper") or "zookeeper",
            root=root,
            namespace=f.text("namespace", "default") or "default",
            export=f.bool("export", False),
            export_protocols=protocols,
            export_address=export_address,
            export_application=f.text("export_application", "sofamesh") or "sofamesh",
            session_timeout=f.num("session_timeout", 10.0, minimum=1.0),
            auth=_check_auth(f, f.text("auth")),
            connect_timeout=f.num("connect_timeout", 10.0, minimum=0.0),
        )

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self, on_change: Callable[[str], None]) -> None:
        """Connect and watch. Waits up to `connect_timeout` for the first full read so the
        pilot's first push already has the Dubbo services; if ZooKeeper is not reachable by
        then it goes on connecting in the background (the pilot keeps serving)."""
        self._on_change = on_change
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._synced = asyncio.Event()
        self._export_lock = asyncio.Lock()
        retry = KazooRetry(max_tries=-1, delay=0.2, max_delay=5.0)
        self._zk = KazooClient(
            hosts=self.hosts,
            timeout=self.session_timeout,
            auth_data=[("digest", self.auth)] if self.auth else None,
            connection_retry=retry,
            command_retry=KazooRetry(max_tries=3, delay=0.1, max_delay=1.0),
        )
        self._zk.add_listener(self._on_state)
        self._zk.start_async()
        self._task = asyncio.create_task(self._run(), name=f"zookeeper:{self.name}")
        try:
            await asyncio.wait_for(self._synced.wait(), self.connect_timeout)
        except TimeoutError:
            self.stats["connect_timeouts"] += 1
            log.warning(
                "registry %s: ZooKeeper %s not reachable within %.1fs; still trying",
                self.name,
                self.hosts,
                self.connect_timeout,
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        zk, self._zk = self._zk, None
        if zk is not None:
            # closing the session removes our ephemeral exports at once
            await asyncio.get_running_loop().run_in_executor(None, _close_client, zk)
        self._export_have.clear()

    # ---- kazoo thread -> loop ----------------------------------------------------------

    def _on_state(self, state: str) -> None:  # kazoo's connection thread
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._state_changed, state)

    def _on_watch(self, event: Any) -> None:  # kazoo's callback thread
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._mark_path, event.path)

    def _state_changed(self, state: str) -> None:
        if state == KazooState.CONNECTED:
            self._connected = True
            self.stats["connects"] += 1
            # After any reconnect re-read everything and re-arm watches: a new session has
            # none, and kazoo's restored watches (same session) proved unreliable across a
            # server restart. The last snapshot is served meanwhile and only differences are
            # published. After a new session our ephemeral exports are gone: recreate them.
            self._mark(_ROOT)
            for iface in self._interfaces:
                self._mark(iface)
            self._export_dirty = True
        else:
            self._connected = False
            if state == KazooState.LOST:
                self.stats["sessions_lost"] += 1
                self._export_have.clear()
            else:
                self.stats["disconnects"] += 1
        self._wake.set()

    def _mark_path(self, path: str | None) -> None:
        if not path:
            return
        if path == self.root:
            self._mark(_ROOT)
            return
        prefix = self.root + "/"
        if path.startswith(prefix):
            rest = path[len(prefix) :]
            iface = rest.split("/", 1)[0]
            if iface:
                self._mark(iface)

    def _mark(self, key: str) -> None:
        self._dirty.add(key)
        self._wake.set()

    def _aio(self, async_result: Any) -> asyncio.Future:
        """A kazoo IAsyncResult as an asyncio future."""
        loop = self._loop
        assert loop is not None
        fut = loop.create_future()

        def settle(res: Any) -> None:
            if fut.done():
                return
            try:
                fut.set_result(res.get_nowait())
            except BaseException as e:  # noqa: BLE001 - handed to the awaiting task
                fut.set_exception(e)

        async_result.rawlink(lambda res: loop.call_soon_threadsafe(settle, res))
        return fut

    # ---- the sync task -----------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._connected:
                continue
            dirty, self._dirty = self._dirty, set()
            try:
                await self._sync(dirty)
                if self.exports and self._export_dirty:
                    await self._reconcile_export()
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - ZooKeeper errors: retry, keep serving
                self.stats["sync_errors"] += 1
                log.warning("registry %s: sync failed (%s); retrying", self.name, e)
                self._dirty |= dirty
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                self._wake.set()
                continue
            if not self._dirty:
                self._synced.set()

    async def _sync(self, dirty: set[str]) -> None:
        zk = self._zk
        assert zk is not None
        if _ROOT in dirty:
            dirty.discard(_ROOT)
            names = await self._children_or_watch(self.root)
            now = set(names)
            gone = self._interfaces - now
            for iface in gone:
                self._bad.difference_update(self._children.pop(iface, ()))
            dirty |= now - self._interfaces
            self._interfaces = now
            changed = set(gone)
        else:
            changed = set()
        dirty &= self._interfaces
        changed |= dirty
        if dirty:
            ifaces = sorted(dirty)
            # a bounded window of reads in flight: pipelined, without queueing thousands
            # of requests on the one ZooKeeper connection at once
            window = asyncio.Semaphore(READ_WINDOW)

            async def read(iface: str) -> list[str]:
                async with window:
                    return await self._children_or_watch(f"{self.root}/{iface}/providers")

            results = await asyncio.gather(*(read(i) for i in ifaces))
            for iface, kids in zip(ifaces, results):
                if self._bad:
                    self._bad.difference_update(set(self._children.get(iface, ())) - set(kids))
                self._children[iface] = kids
                if self.exports:
                    # an exported node we count as there may have gone, e.g. another
                    # replica's that left with its session: create it ourselves
                    for p, w in self._export_want.items():
                        if (
                            w == iface
                            and p in self._export_have
                            and p.rsplit("/", 1)[1] not in kids
                        ):
                            self._export_have.discard(p)
                            self._export_dirty = True
        self._rebuild(changed)

    async def _children_or_watch(self, path: str) -> list[str]:
        """Children of `path` with a children watch; if it does not exist, an exists watch
        (fires when it is created) and []."""
        zk = self._zk
        assert zk is not None
        while True:
            try:
                return list(await self._aio(zk.get_children_async(path, watch=self._on_watch)))
            except NoNodeError:
                stat = await self._aio(zk.exists_async(path, watch=self._on_watch))
                if stat is None:
                    return []
                # created in between: read it again

    def _rebuild(self, changed: set[str]) -> None:
        """Recompute the interfaces in `changed` only and publish the difference: a change
        to one interface costs O(its providers), whatever the registry's size."""
        changes: dict[str, tuple[Service, list[Instance]] | None] = {}
        for iface in changed:
            kids = self._children.get(iface)
            changes[iface] = self._build_interface(iface, kids) if kids else None
        self.update(changes)

    def _build_interface(
        self, iface: str, kids: list[str]
    ) -> tuple[Service, list[Instance]] | None:
        by_id: dict[str, tuple[int, Instance]] = {}
        ports: Counter[tuple[int, str, str]] = Counter()
        for node in kids:
            url = self._parse(node)
            if url is None or url.exported_by_mesh or url.side != "provider":
                continue
            inst = self._instance(url, iface)
            try:
                ts = int(url.params.get("timestamp", "0"))
            except ValueError:
                ts = 0
            prev = by_id.get(inst.instance_id)
            if prev is None or ts >= prev[0]:  # a re-registration supersedes the old node
                by_id[inst.instance_id] = (ts, inst)
            ports[(inst.port, inst.protocol, url.protocol)] += 1
        if not by_id:
            return None
        # the port most instances use (Dubbo has no service port; ties: the lowest)
        (port, proto, pname), _ = min(ports.items(), key=lambda kv: (-kv[1], kv[0]))
        svc = Service(
            name=iface,
            namespace=self.namespace,
            ports=(Port(port, proto, pname),),
            labels=(("interface", iface),),
            registry=self.name,
        )
        return svc, [i for _, i in by_id.values()]

    def _parse(self, node: str) -> ProviderURL | None:
        """Parsed on each rebuild of its interface (cheap; keeping 50k parsed URLs is not)."""
        try:
            url = dubbo_url.parse_node_name(node)
            _ = url.weight  # a bad weight is a bad node, found now rather than later
            return url
        except DubboURLError as e:
            if node not in self._bad:
                self._bad.add(node)
                self.stats["parse_errors"] += 1
                log.warning("registry %s: ignoring provider node %r: %s", self.name, node, e)
            return None

    def _instance(self, url: ProviderURL, service: str) -> Instance:
        proto = PROTOCOL_MAP.get(url.protocol, "tcp")
        weight = url.weight
        return Instance(
            service=service,
            instance_id=url.instance_id,
            address=url.host,
            port=url.port,
            protocol=proto,
            labels=sorted_labels(url.labels()),
            weight=max(weight, 1),
            healthy=url.enabled and weight > 0,
            registry=self.name,
            namespace=self.namespace,
        )

    # ---- export (registry sync) --------------------------------------------------------

    async def export(
        self, services: dict[str, Service], instances: dict[str, list[Instance]]
    ) -> None:
        """Make the exported provider nodes match the mesh: create what is new, delete what
        went. No-op unless the entry has `export: true`."""
        if not self.exports:
            return
        want: dict[str, str] = {}
        for name, insts in instances.items():
            for inst in insts:
                if inst.registry == self.name or not inst.healthy:
                    continue  # never export back what we read (the model may be merged)
                if inst.protocol not in self.export_protocols:
                    continue
                path, iface = self._export_path(name, inst)
                want[path] = iface
        self._export_want = want
        self._export_dirty = True
        if self._connected and self._zk is not None:
            try:
                await self._reconcile_export()
            except Exception as e:  # noqa: BLE001 - retried by the sync task on reconnect
                self.stats["export_errors"] += 1
                self._export_dirty = True
                log.warning("registry %s: export failed (%s); will retry", self.name, e)
        self._wake.set()

    def _export_path(self, name: str, inst: Instance) -> tuple[str, str]:
        labels = inst.label_dict
        iface = labels.get("interface") or name
        params = {
            "application": labels.get("application") or self.export_application,
            "version": labels.get("version", ""),
            "group": labels.get("group", ""),
            "methods": labels.get("methods", ""),
            "weight": str(inst.weight) if inst.weight != dubbo_url.DEFAULT_WEIGHT else "",
            EXPORT_MARK: self.name,
        }
        host, port = self.export_to.of(inst)
        scheme = (
            "dubbo"
            if inst.protocol == "dubbo"
            else (
                "tri"
                if inst.protocol in ("grpc", "http2")
                else "rest"
                if inst.protocol == "http"
                else inst.protocol
            )
        )
        url = dubbo_url.format_url(iface, host, port, protocol=scheme, params=params)
        node = dubbo_url.encode_node_name(url)
        return f"{self.root}/{iface}/providers/{node}", iface

    async def _reconcile_export(self) -> None:
        zk = self._zk
        assert zk is not None
        async with self._export_lock:
            self._export_dirty = False
            want = dict(self._export_want)
            for path in sorted(set(want) - self._export_have):
                parent = path.rsplit("/", 1)[0]
                await self._aio(zk.ensure_path_async(parent))
                try:
                    await self._aio(zk.create_async(path, b"", ephemeral=True))
                    self.stats["export_created"] += 1
                except NodeExistsError:
                    # ours from before a reconnect, or another replica's: it counts as there
                    pass
                self._export_have.add(path)
            for path in sorted(self._export_have - set(want)):
                try:
                    await self._aio(zk.delete_async(path))
                    self.stats["export_deleted"] += 1
                except NoNodeError:
                    pass
                self._export_have.discard(path)


def _close_client(zk: KazooClient) -> None:
    try:
        zk.stop()
        zk.close()
    except Exception:
        log.debug("closing kazoo client failed", exc_info=True)


def _check_auth(f: Fields, auth: str) -> str:
    if auth and (":" not in auth or auth.startswith(":")):
        raise f.err("auth", "expected user:password")
    return auth
