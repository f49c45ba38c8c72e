"""Real registry servers for the adapter tests, one per module (each test uses its own
ZooKeeper root / Consul service names so tests do not see each other's data)."""

from __future__ import annotations

import pytest

from tests.support.servers import ConsulAgent, ZooKeeperServer


@pytest.fixture(scope="module")
def zookeeper():
    server = ZooKeeperServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def consul_agent():
    agent = ConsulAgent()
    try:
        agent.start()
        yield agent
    finally:
        agent.stop()
