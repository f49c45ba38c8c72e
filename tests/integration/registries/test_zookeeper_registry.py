"""The ZooKeeper (Dubbo layout) adapter against a real ZooKeeper server."""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import parse_qs, quote_plus, unquote_plus, urlsplit

import pytest
from kazoo.client import KazooClient

from sofamesh.pilot import registries
from sofamesh.pilot.model import Instance, Service
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)


def dubbo_node(host: str, port: int, iface: str, **params: str) -> str:
    """A provider node name exactly as Dubbo 2.7 writes it: URL.encode(url.toFullString())."""
    p = {
        "anyhost": "true",
        "application": "demo-provider",
        "deprecated": "false",
        "dubbo": "2.0.2",
        "dynamic": "true",
        "generic": "false",
        "interface": iface,
        "methods": "sayHello,sayHelloAsync",
        "pid": "4242",
        "release": "2.7.23",
        "side": "provider",
        "timestamp": "1700000000000",
    }
    p.update(params)
    query = "&".join(f"{k}={v}" for k, v in sorted(p.items()))
    return quote_plus(f"dubbo://{host}:{port}/{iface}?{query}", safe="*")


class Provider:
    """A Dubbo provider's registry side: its own ZooKeeper session, persistent
    `<root>/<iface>/providers`, an ephemeral node per exported service."""

    def __init__(self, hosts: str) -> None:
        self.zk = KazooClient(hosts=hosts, timeout=4.0)
        self.zk.start(timeout=10)

    def register(self, root: str, iface: str, node: str) -> str:
        self.zk.ensure_path(f"{root}/{iface}/providers")
        path = f"{root}/{iface}/providers/{node}"
        self.zk.create(path, b"127.0.0.1", ephemeral=True)
        return path

    def close(self) -> None:
        self.zk.stop()
        self.zk.close()


@pytest.fixture
def root() -> str:
    return f"/t{uuid.uuid4().hex[:10]}/dubbo"


@pytest.fixture
def provider(zookeeper):
    p = Provider(zookeeper.hosts)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
async def adapter_factory(zookeeper):
    made = []

    async def make(root: str, **extra):
        cfg = {"type": "zookeeper", "hosts": zookeeper.hosts, "root": root, **extra}
        reg = registries.build(cfg)
        changes: list[str] = []
        await reg.start(changes.append)
        made.append(reg)
        return reg, changes

    try:
        yield make
    finally:
        for reg in made:
            await reg.stop()


IFACE = "org.apache.dubbo.demo.DemoService"


async def test_existing_provider_appears_as_service(adapter_factory, provider, root):
    provider.register(
        root,
        IFACE,
        dubbo_node("10.1.2.3", 20880, IFACE, version="1.0.0", group="blue", weight="50"),
    )
    reg, changes = await adapter_factory(root)
    snap = reg.snapshot()
    assert set(snap.services) == {IFACE}
    svc = snap.services[IFACE]
    assert svc.registry == "zookeeper"
    assert [(p.number, p.protocol) for p in svc.ports] == [(20880, "dubbo")]
    [inst] = snap.instances[IFACE]
    assert (inst.address, inst.port, inst.protocol) == ("10.1.2.3", 20880, "dubbo")
    assert inst.weight == 50 and inst.healthy
    labels = inst.label_dict
    assert labels["version"] == "1.0.0"
    assert labels["group"] == "blue"
    assert labels["methods"] == "sayHello,sayHelloAsync"
    assert labels["application"] == "demo-provider"
    assert "timestamp" not in labels and "pid" not in labels
    assert inst.instance_id == "10.1.2.3:20880/blue:1.0.0"
    assert changes == ["zookeeper"]


async def test_watch_sees_providers_come_and_go(adapter_factory, zookeeper, provider, root):
    reg, changes = await adapter_factory(root)
    assert reg.snapshot().services == {}

    # a new interface (root child) and its first provider
    p1 = provider.register(root, IFACE, dubbo_node("10.0.0.1", 20880, IFACE))
    await until(lambda: len(reg.snapshot().instances.get(IFACE, [])) == 1, what="first provider")
    assert changes, "on_change was not called"

    # a second provider on another session: both listed, default Dubbo weight 100
    other = Provider(zookeeper.hosts)
    try:
        other.register(root, IFACE, dubbo_node("10.0.0.2", 20881, IFACE))
        insts = await until(
            lambda: (
                len(reg.snapshot().instances.get(IFACE, [])) == 2
                and reg.snapshot().instances[IFACE]
            ),
            what="second provider",
        )
        assert {(i.address, i.port, i.weight) for i in insts} == {
            ("10.0.0.1", 20880, 100),
            ("10.0.0.2", 20881, 100),
        }

        # explicit removal of a node
        provider.zk.delete(p1)
        await until(
            lambda: [i.address for i in reg.snapshot().instances.get(IFACE, [])] == ["10.0.0.2"],
            what="removal",
        )
    finally:
        # the provider process dies: its session ends, the ephemeral node goes
        other.close()
    await until(lambda: IFACE not in reg.snapshot().services, what="session end removes it")
    assert reg.snapshot().instances == {}


async def test_providers_node_created_after_interface(adapter_factory, provider, root):
    """The interface node can exist before its providers/ node: the adapter must still
    notice the providers when they come (an exists watch, not a dead children watch)."""
    reg, _ = await adapter_factory(root)
    provider.zk.ensure_path(f"{root}/{IFACE}")
    await asyncio.sleep(0.2)
    provider.register(root, IFACE, dubbo_node("10.0.0.9", 20880, IFACE))
    await until(lambda: IFACE in reg.snapshot().services, what="late providers node")


async def test_bad_nodes_are_counted_and_skipped(adapter_factory, provider, root):
    provider.register(root, IFACE, "not-a-url")
    provider.register(root, IFACE, quote_plus(f"dubbo://10.0.0.3/{IFACE}?side=provider"))  # no port
    provider.register(root, IFACE, dubbo_node("10.0.0.4", 20880, IFACE, weight="heavy"))
    provider.register(root, IFACE, dubbo_node("10.0.0.5", 20880, IFACE))
    # a consumer-side URL that landed under providers/ is not a provider
    provider.register(root, IFACE, dubbo_node("10.0.0.6", 1, IFACE, side="consumer"))
    reg, _ = await adapter_factory(root)
    assert [i.address for i in reg.snapshot().instances[IFACE]] == ["10.0.0.5"]
    assert reg.stats["parse_errors"] == 3


async def test_disabled_and_zero_weight_are_unhealthy(adapter_factory, provider, root):
    provider.register(root, IFACE, dubbo_node("10.0.0.7", 20880, IFACE, weight="0"))
    provider.register(root, IFACE, dubbo_node("10.0.0.8", 20880, IFACE, enabled="false"))
    provider.register(root, IFACE, dubbo_node("10.0.0.9", 20880, IFACE))
    reg, _ = await adapter_factory(root)
    health = {i.address: i.healthy for i in reg.snapshot().instances[IFACE]}
    assert health == {"10.0.0.7": False, "10.0.0.8": False, "10.0.0.9": True}


def consumer_read(zk: KazooClient, root: str, iface: str) -> list[dict]:
    """What a Dubbo consumer does: list <root>/<iface>/providers, URL-decode each child and
    parse the provider URL."""
    out = []
    for child in zk.get_children(f"{root}/{iface}/providers"):
        url = unquote_plus(child)
        parts = urlsplit(url)
        params = {k: v[0] for k, v in parse_qs(parts.query).items()}
        out.append(
            {
                "scheme": parts.scheme,
                "host": parts.hostname,
                "port": parts.port,
                "path": parts.path.lstrip("/"),
                **params,
            }
        )
    return out


async def test_export_writes_consumable_provider_nodes(adapter_factory, provider, root):
    reg, _ = await adapter_factory(root, export=True)
    assert getattr(reg, "exports", False) is True
    mesh_iface = "com.example.mesh.GreeterService"
    services = {
        mesh_iface: Service(mesh_iface, registry="api"),
        "web": Service("web", registry="api"),  # HTTP: a Dubbo consumer cannot call it
    }
    instances = {
        mesh_iface: [
            Instance(
                mesh_iface,
                "a",
                "127.0.0.11",
                20880,
                protocol="dubbo",
                registry="api",
                labels=(("group", "g1"), ("methods", "greet"), ("version", "2.0.0")),
            ),
            Instance(
                mesh_iface, "b", "127.0.0.12", 20880, protocol="dubbo", registry="api", weight=7
            ),
            Instance(
                mesh_iface,
                "c",
                "127.0.0.13",
                20880,
                protocol="dubbo",
                registry="api",
                healthy=False,
            ),
        ],
        "web": [Instance("web", "w", "127.0.0.20", 8080, protocol="http", registry="api")],
    }
    await reg.export(services, instances)

    urls = sorted(consumer_read(provider.zk, root, mesh_iface), key=lambda u: u["host"])
    assert [u["host"] for u in urls] == ["127.0.0.11", "127.0.0.12"]
    a, b = urls
    assert a["scheme"] == "dubbo" and a["port"] == 20880
    assert a["path"] == mesh_iface and a["interface"] == mesh_iface
    assert a["side"] == "provider"
    assert (a["version"], a["group"], a["methods"]) == ("2.0.0", "g1", "greet")
    assert b["weight"] == "7" and "version" not in b
    # the nodes are ephemeral (they go with the pilot's session)
    for child in provider.zk.get_children(f"{root}/{mesh_iface}/providers"):
        _, stat = provider.zk.get(f"{root}/{mesh_iface}/providers/{child}")
        assert stat.ephemeralOwner != 0
    assert not provider.zk.exists(f"{root}/web")

    # not re-imported as a ZooKeeper service
    await asyncio.sleep(0.3)
    assert mesh_iface not in reg.snapshot().services

    # an instance leaving the mesh leaves ZooKeeper
    instances[mesh_iface] = instances[mesh_iface][:1]
    await reg.export(services, instances)
    assert [u["host"] for u in consumer_read(provider.zk, root, mesh_iface)] == ["127.0.0.11"]

    # another pilot replica reading the same root does not import the export either
    reg2, _ = await adapter_factory(root)
    assert reg2.snapshot().services == {}

    # the pilot stops: its session closes and the exported nodes go
    await reg.stop()
    assert consumer_read(provider.zk, root, mesh_iface) == []


async def test_export_skips_own_services_and_recreates_deleted_nodes(
    adapter_factory, provider, root
):
    provider.register(root, IFACE, dubbo_node("10.0.0.1", 20880, IFACE))
    reg, _ = await adapter_factory(root, export=True)
    snap = reg.snapshot()
    mesh = "com.example.Other"
    services = dict(snap.services) | {mesh: Service(mesh, registry="api")}
    instances = dict(snap.instances) | {
        mesh: [Instance(mesh, "x", "127.0.0.30", 20880, protocol="dubbo", registry="api")]
    }
    await reg.export(services, instances)
    # its own Dubbo provider is not written back next to itself
    assert [u["host"] for u in consumer_read(provider.zk, root, IFACE)] == ["10.0.0.1"]
    # someone deletes our exported node: the adapter notices and writes it again
    [child] = provider.zk.get_children(f"{root}/{mesh}/providers")
    provider.zk.delete(f"{root}/{mesh}/providers/{child}")
    await until(
        lambda: provider.zk.get_children(f"{root}/{mesh}/providers"), what="re-created export"
    )
    assert IFACE in reg.snapshot().services and mesh not in reg.snapshot().services


async def test_unreachable_zookeeper_does_not_block_start(unused_port):
    reg = registries.build(
        {"type": "zookeeper", "hosts": f"127.0.0.1:{unused_port}", "connect_timeout": 0.3}
    )
    try:
        await reg.start(lambda name: None)
        assert reg.snapshot().services == {}
        assert reg.stats["connect_timeouts"] == 1
    finally:
        await reg.stop()


def expire_session(hosts: str, zk: KazooClient) -> None:
    """Expire `zk`'s session the way ZooKeeper's own tests do: a second client attaches to
    the same session id and password and closes it."""
    session_id, password = zk.client_id
    thief = KazooClient(hosts=hosts, client_id=(session_id, password), timeout=2.0)
    thief.start(timeout=10)
    thief.stop()
    thief.close()


async def test_session_expiry_rewatches_and_reexports(adapter_factory, zookeeper, provider, root):
    provider.register(root, IFACE, dubbo_node("10.0.0.1", 20880, IFACE))
    reg, _ = await adapter_factory(root, export=True)
    mesh = "com.example.Exported"
    await reg.export(
        {mesh: Service(mesh)},
        {mesh: [Instance(mesh, "e", "127.0.0.40", 20880, protocol="dubbo", registry="api")]},
    )
    assert len(provider.zk.get_children(f"{root}/{mesh}/providers")) == 1

    expire_session(zookeeper.hosts, reg._zk)
    await until(lambda: reg.stats["sessions_lost"] == 1, what="session loss seen")
    # the ephemeral export went with the old session; the new session writes it again
    await until(
        lambda: len(provider.zk.get_children(f"{root}/{mesh}/providers")) == 1,
        timeout=10,
        what="export re-created on the new session",
    )
    # what ZooKeeper had is still served, and watches work on the new session
    assert [i.address for i in reg.snapshot().instances[IFACE]] == ["10.0.0.1"]
    provider.register(root, IFACE, dubbo_node("10.0.0.2", 20880, IFACE))
    await until(
        lambda: len(reg.snapshot().instances.get(IFACE, [])) == 2, what="watch after a new session"
    )


@pytest.mark.timeout(120)
async def test_zookeeper_restart(root):
    """The server goes away and comes back on the same port: the adapter keeps its last
    snapshot meanwhile and watches again after reconnecting."""
    from tests.support.servers import ZooKeeperServer

    server = ZooKeeperServer()
    reg = None
    p = None
    try:
        server.start()
        p = Provider(server.hosts)
        p.register(root, IFACE, dubbo_node("10.0.0.1", 20880, IFACE))
        reg = registries.build(
            {"type": "zookeeper", "hosts": server.hosts, "root": root, "session_timeout": 30}
        )
        await reg.start(lambda n: None)
        assert IFACE in reg.snapshot().services

        server.kill()
        await until(lambda: reg.stats["disconnects"] >= 1, what="disconnect seen")
        assert IFACE in reg.snapshot().services  # no flapping while ZooKeeper is away
        await asyncio.to_thread(server.start)
        # the provider reconnects (its session may or may not have outlived the restart:
        # the server caps sessions at 20 ticks) and registers a second node
        # a freshly started JVM on a busy 2-core machine can let the first connects time
        # out (read timeout ~2/3 of the 4 s session) before it answers: allow for a few
        await until(lambda: p.zk.connected, timeout=30, what="provider reconnected")
        await asyncio.to_thread(p.register, root, IFACE, dubbo_node("10.0.0.2", 20880, IFACE))
        await until(
            lambda: "10.0.0.2" in {i.address for i in reg.snapshot().instances.get(IFACE, [])},
            timeout=30,
            what="watch after reconnect",
        )
    finally:
        if reg is not None:
            await reg.stop()
        if p is not None:
            p.close()
        server.stop()


async def test_export_address_advertises_a_gateway(adapter_factory, provider, root):
    """With `export_address`, Dubbo consumers are pointed at one mesh address (e.g. an
    ingress sidecar) instead of each instance: one node per interface/group/version."""
    reg, _ = await adapter_factory(root, export=True, export_address="127.0.0.50:20880")
    mesh = "com.example.Gateway"
    insts = [
        Instance(mesh, f"i{n}", f"127.0.0.{60 + n}", 20880 + n, protocol="dubbo", registry="api")
        for n in range(3)
    ]
    await reg.export({mesh: Service(mesh)}, {mesh: insts})
    urls = consumer_read(provider.zk, root, mesh)
    assert [(u["host"], u["port"]) for u in urls] == [("127.0.0.50", 20880)]


async def test_digest_auth(adapter_factory, zookeeper, root):
    """A registry locked with a digest ACL (Dubbo's registry username/password): readable
    with `auth`, refused (and counted) without."""
    from kazoo.security import make_digest_acl

    acl = [make_digest_acl("dubbo", "s3cret", all=True)]
    owner = KazooClient(hosts=zookeeper.hosts, auth_data=[("digest", "dubbo:s3cret")])
    owner.start(timeout=10)
    try:
        path = root
        for part in [f"{IFACE}", "providers"]:
            owner.ensure_path(path.rsplit("/", 1)[0])
            if not owner.exists(path):
                owner.create(path, b"", acl=acl)
            path = f"{path}/{part}"
        owner.create(path, b"", acl=acl)
        owner.create(
            f"{path}/{dubbo_node('10.0.0.77', 20880, IFACE)}", b"", acl=acl, ephemeral=True
        )

        locked, _ = await adapter_factory(root, connect_timeout=1)
        assert locked.snapshot().services == {}
        assert locked.stats["sync_errors"] >= 1

        reg, _ = await adapter_factory(root, auth="dubbo:s3cret")
        assert [i.address for i in reg.snapshot().instances[IFACE]] == ["10.0.0.77"]
    finally:
        owner.stop()
        owner.close()
