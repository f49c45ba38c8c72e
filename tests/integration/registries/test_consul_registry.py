"""The Consul adapter against a real Consul 1.8.7 agent in -dev mode, with services
registered the way Spring Cloud Consul registers them (agent API: Name, ID, Tags, Meta,
a TTL or HTTP check), here through py-consul."""

from __future__ import annotations

import asyncio
import uuid

import consul
import pytest
from aiohttp import web

from sofamesh.pilot import registries
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def agent_api(consul_agent):
    return consul.Consul(host="127.0.0.1", port=consul_agent.port)


@pytest.fixture
def name() -> str:
    return f"orders-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def adapter(consul_agent, name):
    # `services:` limits it to this test's service (the module shares one agent);
    # wait 30s: changes must arrive through blocking queries waking up, not by polling
    reg = registries.build(
        {"type": "consul", "address": consul_agent.http_addr, "services": [name], "wait": 30}
    )
    changes: list[str] = []
    await reg.start(changes.append)
    try:
        yield reg, changes
    finally:
        await reg.stop()


def register_spring_style(api, name: str, iid: str, port: int, check, **kw):
    """What Spring Cloud Consul's ConsulServiceRegistry sends: ID = app-name-port(-hash),
    Meta with its metadata (secure, zone, ...), Tags, Address, Port, one check."""
    api.agent.service.register(
        name,
        service_id=iid,
        address="127.0.0.1",
        port=port,
        check=check,
        meta={"secure": "false", "zone": "zone-a", "version": "v2", **kw.pop("meta", {})},
        tags=kw.pop("tags", ["spring", "team=payments"]),
        **kw,
    )


async def test_ttl_service_health_follows_its_check(agent_api, adapter, name):
    reg, changes = adapter
    iid = f"{name}-8081"
    register_spring_style(
        agent_api, name, iid, 8081, consul.Check.ttl("30s"), weights={"Passing": 5, "Warning": 1}
    )
    try:
        # a TTL check starts critical: present, not healthy
        [inst] = await until(lambda: reg.snapshot().instances.get(name), what="registration")
        assert not inst.healthy
        assert (inst.address, inst.port, inst.instance_id) == ("127.0.0.1", 8081, iid)
        assert inst.protocol == "http" and inst.weight == 5
        assert inst.label_dict == {
            "secure": "false",
            "zone": "zone-a",
            "version": "v2",
            "team": "payments",
            "consul.tags": "spring",
        }
        assert inst.locality.region == "dc1" and inst.locality.zone == "zone-a"
        assert inst.registry == "consul"
        svc = reg.snapshot().services[name]
        assert [(p.number, p.protocol) for p in svc.ports] == [(8081, "http")]

        t0 = asyncio.get_running_loop().time()
        agent_api.agent.check.ttl_pass(f"service:{iid}")
        await until(lambda: reg.snapshot().instances[name][0].healthy, what="passing")
        # a blocking query woke up: far sooner than the 30s wait
        assert asyncio.get_running_loop().time() - t0 < 2.0

        agent_api.agent.check.ttl_warn(f"service:{iid}")
        await until(lambda: not reg.snapshot().instances[name][0].healthy, what="warning")
        assert len(changes) >= 3 and set(changes) == {"consul"}  # on_change(registry name)
    finally:
        agent_api.agent.service.deregister(iid)
    await until(lambda: name not in reg.snapshot().services, what="deregistration")
    assert reg.snapshot().instances == {}


async def test_http_check_and_two_instances(agent_api, adapter, name, unused_port):
    reg, _ = adapter

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "UP"})

    app = web.Application()
    app.router.add_get("/actuator/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", unused_port)
    await site.start()
    up_id, down_id = f"{name}-a", f"{name}-b"
    try:
        register_spring_style(
            agent_api,
            name,
            up_id,
            unused_port,
            consul.Check.http(f"http://127.0.0.1:{unused_port}/actuator/health", "1s", "1s"),
        )
        register_spring_style(
            agent_api,
            name,
            down_id,
            9,  # nothing listens on the discard port
            consul.Check.http("http://127.0.0.1:9/actuator/health", "1s", "1s"),
        )
        await until(
            lambda: (
                {i.instance_id: i.healthy for i in reg.snapshot().instances.get(name, [])}
                == {up_id: True, down_id: False}
            ),
            timeout=10,
            what="HTTP checks",
        )

        # the healthy one's server goes away: its HTTP check fails
        await runner.cleanup()
        await until(
            lambda: not any(i.healthy for i in reg.snapshot().instances[name]),
            timeout=10,
            what="HTTP check failing",
        )
    finally:
        await runner.cleanup()
        agent_api.agent.service.deregister(up_id)
        agent_api.agent.service.deregister(down_id)


async def test_protocol_from_meta_and_catalog_filters(agent_api, consul_agent, name):
    other = f"{name}-grpc"
    reg = registries.build(
        {"type": "consul", "address": consul_agent.http_addr, "services": [name, other]}
    )
    agent_api.agent.service.register(
        other, service_id=other, address="127.0.0.1", port=9090, meta={"protocol": "grpc"}
    )
    agent_api.agent.service.register(
        name, service_id=name, address="127.0.0.1", port=9091, meta={"protocol": "carrier-pigeon"}
    )
    try:
        await reg.start(lambda n: None)
        snap = reg.snapshot()
        # start() returned with everything read; a service without checks is healthy
        assert [(i.protocol, i.healthy) for i in snap.instances[other]] == [("grpc", True)]
        assert [i.protocol for i in snap.instances[name]] == ["http"]
        assert reg.stats["unknown_protocols"] >= 1
        assert "consul" not in snap.services  # the agent's own service is not a mesh service
    finally:
        await reg.stop()
        agent_api.agent.service.deregister(other)
        agent_api.agent.service.deregister(name)


async def test_consul_down_then_up(unused_port):
    """No agent at start: start() returns, errors are counted, the pilot keeps serving."""
    reg = registries.build(
        {"type": "consul", "address": f"http://127.0.0.1:{unused_port}", "connect_timeout": 0.5}
    )
    try:
        await reg.start(lambda n: None)
        assert reg.snapshot().services == {}
        assert reg.stats["connect_timeouts"] == 1
        assert reg.stats["watch_errors"] >= 1
    finally:
        await reg.stop()


async def test_more_services_than_connections(agent_api, consul_agent, name):
    """Watches beyond the connection pool queue for a slot: slower, but nothing is lost."""
    names = [f"{name}-{i}" for i in range(4)]
    for n in names:
        agent_api.agent.service.register(
            n, service_id=n, address="127.0.0.1", port=7000, check=consul.Check.ttl("60s")
        )
    reg = registries.build(
        {
            "type": "consul",
            "address": consul_agent.http_addr,
            "services": names,
            "wait": 1,
            "max_connections": 2,  # the catalog watch and one service watch at a time
        }
    )
    try:
        await reg.start(lambda n: None)
        assert set(reg.snapshot().services) == set(names)
        assert reg.stats["watches_queued"] == 3
        for n in names:
            agent_api.agent.check.ttl_pass(f"service:{n}")
        await until(
            lambda: all(reg.snapshot().instances[n][0].healthy for n in names),
            timeout=15,
            what="every queued watch to see its change",
        )
        assert reg.stats["watch_errors"] == 0
    finally:
        await reg.stop()
        for n in names:
            agent_api.agent.service.deregister(n)


async def test_acl_token():
    """An agent with ACLs on (default deny): the catalog is only visible with a token."""
    from tests.support.servers import ConsulAgent

    root = "root-token-0000-0000-000000000001"
    agent = ConsulAgent(
        hcl=(f'acl {{ enabled = true default_policy = "deny" tokens {{ master = "{root}" }} }}',),
        token=root,
    )
    regs = []
    try:
        await asyncio.to_thread(agent.start)
        api = consul.Consul(host="127.0.0.1", port=agent.port, token=root)
        api.agent.service.register(
            "billing", service_id="billing-1", address="127.0.0.1", port=8443
        )
        anon = registries.build({"type": "consul", "address": agent.http_addr})
        authed = registries.build({"type": "consul", "address": agent.http_addr, "token": root})
        regs += [anon, authed]
        await anon.start(lambda n: None)
        await authed.start(lambda n: None)
        assert anon.snapshot().services == {}  # Consul filters what the token may not read
        assert [i.instance_id for i in authed.snapshot().instances["billing"]] == ["billing-1"]
    finally:
        for reg in regs:
            await reg.stop()
        await asyncio.to_thread(agent.stop)
