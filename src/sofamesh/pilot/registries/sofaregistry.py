"""SOFARegistry adapter: subscribes to dataIds on a session server, as an SDK client does.

The pilot holds one Bolt connection to a session server (`address`, its Bolt port: 9600 on
a real one) and registers a `SubscriberRegister` per dataId; the server pushes
`ReceivedData` (every publisher's data, by zone) on subscribe and on each change
(`sofa_wire` has the protocol). Which dataIds: the `data_ids` list, plus, with
`discover: true`, those the session server's digest API lists (`GET
/digest/getDataInfoIdList` on `http_address`, its HTTP port: 9603 on a real one), polled
every `discover_interval` seconds and filtered to this entry's `instance_id` and `group`.
The digest lists what that one session server holds (its clients' publishers and
subscribers), so in a cluster of session servers a dataId published only through another
one is found only when listed in `data_ids`.

Mapping: service = the dataId (for SOFARPC the interface's unique name,
`interface:version[:uniqueId]`, the Bolt `service` header) made a host name, as the mesh's
service names are: every character outside `[A-Za-z0-9_.-]` becomes `-`
(`com.example.Echo:1.0` -> `com.example.Echo-1.0`); the dataId itself is the service
label `sofa.data_id`. Each
publisher datum is an instance: `[scheme://]host:port[?k=v&...]` (SOFARPC provider URLs)
or plain `host:port`. Protocol from the scheme or `protocol` param (default `bolt`), weight
from `weight` (0 = unhealthy), params as labels (`startTime` dropped), locality zone = the
publisher's zone, region = the pushing data center. A datum that does not parse is
counted (`parse_errors`) and logged once; the rest of the dataId is kept. A push whose
body is not a ReceivedData is counted (`bad_frames`) and refused; one older than the last
accepted version for its dataId is counted (`stale_pushes`) and ignored.

Disconnected, the adapter keeps its last snapshot and redials with backoff (0.2 s doubling
to `reconnect_max`), then registers every subscriber again; the server pushes anew.

With `export: true` it also writes the mesh's services known from other registries (the
REST API, other registries, peer clusters) into SOFARegistry, for SOFARPC consumers outside
the mesh: one publisher per service (dataId = the service's `sofa.data_id` label, else its
name; this entry's instance_id, group and zone), its data one SOFARPC provider URL per
healthy instance, `<protocol>://<host>:<port>?protocol=..&weight=..&<labels>&sofamesh.export=
<this registry's name>` (data with that mark are never read back, so nothing loops). The
address is the instance's, `export_address: HOST:PORT`, or `sidecar` (127.0.0.1, the service
port + the pilot's --tcp-port-offset: the consumer's own sidecar). A change republishes with
a higher version; a service gone is unregistered; after a reconnect everything is published
again (a session server drops a connection's publishers when it closes).

    registries:
      - type: sofaregistry
        address: 127.0.0.1:9600          # session server, Bolt
        http_address: 127.0.0.1:9603     # its HTTP port (only for discover)
        data_ids: [com.alipay.demo.HelloService:1.0]
        discover: false
        zone: DEFAULT_ZONE
        instance_id: DEFAULT_INSTANCE_ID
        group: SOFA                      # SOFARPC publishes in group SOFA
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp

from ..model import Instance, Locality, Port, Service
from ._base import ExportAddress, Fields, SnapshotHolder, parse_hostport, sorted_labels
from .sofa_conn import BoltPeer, CallError
from .sofa_wire import (
    DEFAULT_GROUP,
    DEFAULT_INSTANCE_ID,
    DEFAULT_ZONE,
    REGISTER,
    UNREGISTER,
    Message,
    PublisherRegister,
    ReceivedData,
    RegisterResponse,
    Result,
    SubscriberRegister,
    WireError,
    data_info_id,
    split_data_info_id,
)

log = logging.getLogger("sofamesh.pilot.registries.sofaregistry")

EXPORT_MARK = "sofamesh.export"

PROTOCOL_MAP = {
    "bolt": "bolt",
    "dubbo": "dubbo",
    "h2c": "http2",
    "triple": "grpc",
    "grpc": "grpc",
    "rest": "http",
    "http": "http",
    "tr": "tcp",
}
_HOST = re.compile(r"^[A-Za-z0-9_.:-]+$")  # a name or an IPv4/IPv6 address
_NOT_HOSTNAME = re.compile(r"[^A-Za-z0-9_.-]")


def service_name(data_id: str) -> str:
    """The mesh's (host) name for a dataId."""
    return _NOT_HOSTNAME.sub("-", data_id).strip(".-") or "-"


DROPPED_PARAMS = {"startTime"}  # differs per restart; a label would churn every push
SUBSCRIBE_BATCH = 500  # registers in flight at once (10k dataIds: 20 round trips)
HEARTBEAT_INTERVAL = 15.0


class SofaDataError(ValueError):
    pass


class SofaRegistry(SnapshotHolder):
    type = "sofaregistry"

    def __init__(
        self,
        address: str,
        *,
        name: str = "sofaregistry",
        namespace: str = "default",
        data_ids: tuple[str, ...] = (),
        discover: bool = False,
        http_address: str = "",
        discover_interval: float = 5.0,
        zone: str = DEFAULT_ZONE,
        instance_id: str = DEFAULT_INSTANCE_ID,
        group: str = DEFAULT_GROUP,
        app_name: str = "sofamesh-pilot",
        connect_timeout: float = 10.0,
        reconnect_max: float = 5.0,
        export: bool = False,
        export_address: str = "",
    ) -> None:
        super().__init__(name)
        self.exports = export
        self.export_to = ExportAddress(export_address)
        self._pub_want: dict[str, list[str]] = {}  # dataId -> the data we should publish
        self._pub_sent: dict[str, list[str]] = {}  # what this connection's server has
        self._pub_ids: dict[str, str] = {}  # dataId -> our publisher's registId
        self._pub_version = 0
        self._pub_wake = asyncio.Event()
        self.host, self.port = parse_hostport(address)
        self.namespace = namespace
        self.data_ids = list(dict.fromkeys(data_ids))
        self.discover = discover
        self.http_address = http_address
        self.discover_interval = discover_interval
        self.zone = zone
        self.instance_id = instance_id
        self.group = group
        self.app_name = app_name
        self.connect_timeout = connect_timeout
        self.reconnect_max = reconnect_max
        self._regist_ids: dict[str, str] = {}  # dataId -> our subscriber's registId
        self._versions: dict[str, int] = {}  # dataId -> last accepted push version
        self._data: dict[str, tuple[str, dict[str, list[str]]]] = {}  # dataId -> (dc, zones)
        self._first: set[str] = set()  # dataIds whose first push is outstanding
        self._bad: set[str] = set()
        self._dirty: set[str] = set()
        self._rebuild_handle: asyncio.Handle | None = None
        self._peer: BoltPeer | None = None
        self._task: asyncio.Task | None = None
        self._connected = asyncio.Event()
        for d in self.data_ids:
            self._want(d)

    @classmethod
    def from_config(cls, cfg: dict[str, Any], *, path: str) -> SofaRegistry:
        f = Fields(
            cfg,
            path,
            {
                "name",
                "address",
                "http_address",
                "namespace",
                "data_ids",
                "discover",
                "discover_interval",
                "zone",
                "instance_id",
                "group",
                "app_name",
                "connect_timeout",
                "reconnect_max",
                "export",
                "export_address",
            },
        )
        export = f.bool("export", False)
        export_address = ExportAddress.field(f)
        address = f.text("address", required=True)
        try:
            parse_hostport(address)
        except ValueError as e:
            raise f.err("address", str(e)) from None
        http_address = f.text("http_address")
        if http_address:
            try:
                parse_hostport(http_address)
            except ValueError as e:
                raise f.err("http_address", str(e)) from None
        discover = f.bool("discover", False)
        if discover and not http_address:
            raise f.err("http_address", "required when discover is true")
        data_ids = f.str_list("data_ids")
        if not data_ids and not discover and not export:
            raise f.err("data_ids", "required (or discover: true, or export: true)")
        if any(not d or "#@#" in d for d in data_ids):
            raise f.err("data_ids", "a dataId is a non-empty string without '#@#'")
        return cls(
            address,
            name=f.text("name", "sofaregistry") or "sofaregistry",
            namespace=f.text("namespace", "default") or "default",
            data_ids=data_ids,
            discover=discover,
            http_address=http_address,
            discover_interval=f.num("discover_interval", 5.0, minimum=0.1),
            zone=f.text("zone", DEFAULT_ZONE) or DEFAULT_ZONE,
            instance_id=f.text("instance_id", DEFAULT_INSTANCE_ID) or DEFAULT_INSTANCE_ID,
            group=f.text("group", DEFAULT_GROUP) or DEFAULT_GROUP,
            app_name=f.text("app_name", "sofamesh-pilot") or "sofamesh-pilot",
            connect_timeout=f.num("connect_timeout", 10.0),
            reconnect_max=f.num("reconnect_max", 5.0, minimum=0.2),
            export=export,
            export_address=export_address,
        )

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self, on_change: Callable[[str], None]) -> None:
        """Start the connection loop; wait up to `connect_timeout` for the first push of
        every configured dataId, so the pilot's first xDS push has them."""
        self._on_change = on_change
        self._task = asyncio.create_task(self._run(), name=f"sofaregistry:{self.name}")
        deadline = time.monotonic() + self.connect_timeout
        while time.monotonic() < deadline:
            if self._connected.is_set() and not self._first:
                return
            await asyncio.sleep(0.02)
        self.stats["connect_timeouts"] += 1
        log.warning(
            "registry %s: SOFARegistry %s:%d: %d dataIds without data after %.1fs; still trying",
            self.name,
            self.host,
            self.port,
            len(self._first),
            self.connect_timeout,
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._peer is not None:
            self._peer.close()
            self._peer = None
        if self._rebuild_handle is not None:
            self._rebuild_handle.cancel()
            self._rebuild_handle = None

    # ---- connection ------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.2
        loop = asyncio.get_running_loop()
        while True:
            try:
                _, peer = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: BoltPeer(on_request=self._on_request, stats=self.stats),
                        self.host,
                        self.port,
                    ),
                    timeout=5.0,
                )
            except (TimeoutError, OSError) as e:
                self.stats["connect_errors"] += 1
                log.warning(
                    "registry %s: cannot reach %s:%d: %s", self.name, self.host, self.port, e
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.reconnect_max)
                continue
            self.stats["connects"] += 1
            self._peer = peer
            self._versions.clear()  # a restarted server may count versions anew
            helpers = [asyncio.create_task(self._heartbeat(peer))]
            try:
                await self._subscribe(peer, list(self._regist_ids))
                self._connected.set()
                backoff = 0.2
                if self.discover:
                    helpers.append(asyncio.create_task(self._discover_loop(peer)))
                if self.exports:
                    self._pub_sent = {}  # a new connection has none of our publishers
                    helpers.append(asyncio.create_task(self._publish_loop(peer)))
                await peer.closed
            except CallError as e:
                log.warning("registry %s: subscribing failed: %s", self.name, e)
            finally:
                for h in helpers:
                    h.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
                peer.close()
                self._peer = None
                self._connected.clear()
            self.stats["disconnects"] += 1
            log.warning(
                "registry %s: connection to %s:%d lost; keeping the last snapshot",
                self.name,
                self.host,
                self.port,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.reconnect_max)

    async def _heartbeat(self, peer: BoltPeer) -> None:
        while peer.is_open:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            peer.ping()

    def _want(self, data_id: str) -> bool:
        if data_id in self._regist_ids:
            return False
        self._regist_ids[data_id] = str(uuid.uuid4())
        self._first.add(data_id)
        return True

    async def _subscribe(self, peer: BoltPeer, data_ids: list[str]) -> None:
        for i in range(0, len(data_ids), SUBSCRIBE_BATCH):
            batch = data_ids[i : i + SUBSCRIBE_BATCH]
            futs = [peer.push(self._register(d), timeout=10.0) for d in batch]
            for d, res in zip(batch, await asyncio.gather(*futs, return_exceptions=True)):
                if isinstance(res, CallError):
                    raise res
                if isinstance(res, BaseException):
                    raise CallError(str(res))
                if not isinstance(res, RegisterResponse) or not res.success or res.refused:
                    self.stats["subscribe_errors"] += 1
                    log.warning("registry %s: subscribing to %s refused: %s", self.name, d, res)
                else:
                    self.stats["subscribed"] += 1

    def _register(self, data_id: str) -> SubscriberRegister:
        return SubscriberRegister(
            data_id=data_id,
            regist_id=self._regist_ids[data_id],
            group=self.group,
            instance_id=self.instance_id,
            zone=self.zone,
            app_name=self.app_name,
            version=1,
            timestamp=int(time.time() * 1000),
            scope="zone",
        )

    async def _discover_loop(self, peer: BoltPeer) -> None:
        url = f"http://{self.http_address}/digest/getDataInfoIdList"
        timeout = aiohttp.ClientTimeout(total=10.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while peer.is_open:
                try:
                    async with session.get(url) as r:
                        if r.status != 200:
                            raise SofaDataError(f"HTTP {r.status}")
                        body = await r.json(content_type=None)
                    if not isinstance(body, list):
                        raise SofaDataError("not a JSON list")
                    new = []
                    for dii in body:
                        try:
                            did, inst, grp = split_data_info_id(str(dii))
                        except WireError:
                            self.stats["discover_errors"] += 1
                            continue
                        if inst == self.instance_id and grp == self.group and self._want(did):
                            new.append(did)
                    if new:
                        await self._subscribe(peer, new)
                except (TimeoutError, aiohttp.ClientError, SofaDataError, ValueError) as e:
                    self.stats["discover_errors"] += 1
                    log.warning("registry %s: listing dataIds at %s: %s", self.name, url, e)
                await asyncio.sleep(self.discover_interval)

    # ---- export (export: true) ---------------------------------------------------------

    async def export(
        self, services: dict[str, Service], instances: dict[str, list[Instance]]
    ) -> None:
        """What to publish now (model.Exporter); the connection's publish loop sends it."""
        if not self.exports:
            return
        want: dict[str, list[str]] = {}
        for name, insts in instances.items():
            data = sorted(
                {self._export_datum(i) for i in insts if i.registry != self.name and i.healthy}
            )
            if data:
                svc = services.get(name)
                did = dict(svc.labels).get("sofa.data_id", name) if svc is not None else name
                want[did] = data
        self._pub_want = want
        self._pub_wake.set()

    def _export_datum(self, inst: Instance) -> str:
        host, port = self.export_to.of(inst)
        params = {k: v for k, v in inst.labels if k not in ("zone", "protocol", "weight")}
        params.update(protocol=inst.protocol, weight=str(inst.weight))
        params[EXPORT_MARK] = self.name
        scheme = inst.protocol if inst.protocol in PROTOCOL_MAP else "bolt"
        return f"{scheme}://{host}:{port}?{urlencode(sorted(params.items()))}"

    async def _publish_loop(self, peer: BoltPeer) -> None:
        """Bring the server's copy of our publishers to `_pub_want`; a failed call ends the
        connection (the run loop redials and this starts again, publishing everything)."""
        while peer.is_open:
            self._pub_wake.clear()
            want = self._pub_want
            for did in [d for d in self._pub_sent if d not in want]:
                await self._publish(peer, did, [], UNREGISTER)
                del self._pub_sent[did]
                self.stats["exports_removed"] += 1
            for did, data in want.items():
                if self._pub_sent.get(did) != data:
                    await self._publish(peer, did, data, REGISTER)
                    self._pub_sent[did] = data
                    self.stats["exports_written"] += 1
            await self._pub_wake.wait()

    async def _publish(self, peer: BoltPeer, did: str, data: list[str], event: str) -> None:
        self._pub_version += 1
        reg = PublisherRegister(
            data_id=did,
            regist_id=self._pub_ids.setdefault(did, str(uuid.uuid4())),
            group=self.group,
            instance_id=self.instance_id,
            zone=self.zone,
            app_name=self.app_name,
            event_type=event,
            version=self._pub_version,
            timestamp=int(time.time() * 1000),
            data_list=data,
        )
        try:
            res = await peer.push(reg, timeout=10.0)
        except CallError:
            self.stats["export_errors"] += 1
            peer.close()
            raise
        if not isinstance(res, RegisterResponse) or not res.success or res.refused:
            self.stats["export_errors"] += 1
            log.warning("registry %s: publishing %s refused: %s", self.name, did, res)

    # ---- pushes ----------------------------------------------------------------------

    def _on_request(self, peer: BoltPeer, msg: Message) -> Message | None:
        if not isinstance(msg, ReceivedData):
            self.stats["unexpected_requests"] += 1
            return Result(False, f"unsupported {type(msg).__name__}")
        self.stats["pushes"] += 1
        did = msg.data_id
        mine = self._regist_ids.get(did)
        key = data_info_id(did, self.instance_id, self.group)
        if mine is None or msg.key != key:
            self.stats["unexpected_pushes"] += 1
            return Result(False, f"not subscribed to {msg.key}")
        last = self._versions.get(did)
        if last is not None and msg.version < last:
            self.stats["stale_pushes"] += 1
            return Result(True)
        self._versions[did] = msg.version
        self._data[did] = (msg.segment, msg.data)
        self._first.discard(did)
        self._dirty.add(did)
        if self._rebuild_handle is None:
            # coalesce the pushes of one read (a session server pushes in bursts)
            self._rebuild_handle = asyncio.get_running_loop().call_soon(self._rebuild)
        return Result(True)

    def _rebuild(self) -> None:
        self._rebuild_handle = None
        dirty, self._dirty = self._dirty, set()
        changes: dict[str, tuple[Service, list[Instance]] | None] = {}
        for did in dirty:
            dc, zones = self._data.get(did, ("", {}))
            changes[service_name(did)] = self._build(did, dc, zones)
        self.update(changes)

    def _build(
        self, did: str, dc: str, zones: dict[str, list[str]]
    ) -> tuple[Service, list[Instance]] | None:
        by_id: dict[str, Instance] = {}
        ports: Counter[tuple[int, str]] = Counter()
        for zone, items in zones.items():
            for datum in items:
                inst = self._parse(did, datum, dc, zone)
                if inst is None or inst.instance_id in by_id:
                    continue
                by_id[inst.instance_id] = inst
                ports[(inst.port, inst.protocol)] += 1
        if not by_id:
            return None
        (port, proto), _ = min(ports.items(), key=lambda kv: (-kv[1], kv[0]))
        svc = Service(
            name=service_name(did),
            namespace=self.namespace,
            ports=(Port(port, proto, proto),),
            labels=(("sofa.data_id", did),),
            registry=self.name,
        )
        return svc, list(by_id.values())

    def _parse(self, did: str, datum: str, dc: str, zone: str) -> Instance | None:
        if f"{EXPORT_MARK}=" in datum:
            return None  # what a pilot published (export): never read back
        try:
            return self._instance(did, datum, dc, zone)
        except SofaDataError as e:
            if datum not in self._bad:
                self._bad.add(datum)
                self.stats["parse_errors"] += 1
                log.warning(
                    "registry %s: ignoring publisher data %.200r of %s: %s",
                    self.name,
                    datum,
                    did,
                    e,
                )
            return None

    def _instance(self, did: str, datum: str, dc: str, zone: str) -> Instance:
        scheme, sep, rest = datum.partition("://")
        if not sep:
            scheme, rest = "", datum
        hostport, _, query = rest.partition("?")
        hostport = hostport.rstrip("/")
        try:
            host, port = parse_hostport(hostport)
        except ValueError as e:
            raise SofaDataError(str(e)) from None
        if not _HOST.match(host):
            raise SofaDataError(f"bad host {host!r}")
        params = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
        proto_name = (params.get("protocol") or scheme or "bolt").lower()
        weight_s = params.get("weight", "100")
        try:
            weight = int(weight_s)
        except ValueError:
            raise SofaDataError(f"bad weight {weight_s!r}") from None
        if weight < 0:
            raise SofaDataError(f"bad weight {weight}")
        labels = {k: v for k, v in params.items() if k not in DROPPED_PARAMS}
        labels["zone"] = zone
        return Instance(
            service=service_name(did),
            instance_id=sys.intern(f"{host}:{port}"),
            address=host,
            port=port,
            protocol=PROTOCOL_MAP.get(proto_name, "tcp"),
            labels=sorted_labels(labels),
            weight=max(weight, 1),
            healthy=weight > 0,
            locality=Locality(region=dc, zone=zone),
            registry=self.name,
            namespace=self.namespace,
        )
