"""A Dubbo consumer in cluster 1 that knows only ZooKeeper calls a provider that exists only in
cluster 2, registered there through the open registration API.

Cluster 1's registry is ZooKeeper (in e1, on 10.61.1.1:2181); cluster 2's is the REST API.
c2's pilot syncs the provider to c1's pilot, which writes it into c1's ZooKeeper in Dubbo's
layout (`export: true`) with `export_address: sidecar`: the provider node points at the
consumer's own sidecar (127.0.0.1:20880 + --tcp-port-offset), whose tcp_proxy sends the call
through the two edges. The consumer is sofa-rpc-node with its ZookeeperRegistry on /dubbo and
dubbo-remoting (tests/peers/zk_consumer.js); the provider, sofa-rpc-node's Dubbo server."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.integration.rpc.conftest import node_ready
from tests.support.multicluster import (
    C2,
    DUBBO_PORT,
    E1_IN,
    Net,
    clusters,
    register,
    rpc_server,
    stat,
    wait_until,
)
from tests.support.servers import SLF4J_SIMPLE, ZOOKEEPER_JAR

pytestmark = pytest.mark.multicluster

IFACE = "com.nodejs.test.TestService"  # the interface rpc_server.js serves


def start_zookeeper(e1: Net) -> None:
    d = e1.workdir / "zookeeper"
    (d / "data").mkdir(parents=True)
    (d / "zoo.cfg").write_text(
        f"tickTime=500\ndataDir={d / 'data'}\nclientPort=2181\nclientPortAddress={E1_IN}\n"
        "admin.enableServer=false\n4lw.commands.whitelist=ruok\n"
    )
    cp = ZOOKEEPER_JAR + (":" + SLF4J_SIMPLE if os.path.exists(SLF4J_SIMPLE) else "")
    java = shutil.which("java") or "/usr/bin/java"
    e1.start(
        "zookeeper",
        [java, "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-cp", cp,
         "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(d / "zoo.cfg")],
    )  # fmt: skip
    ruok = (
        f"import socket\ns = socket.create_connection(('{E1_IN}', 2181), timeout=1)\n"
        "s.sendall(b'ruok')\nprint(s.recv(4).decode())"
    )
    wait_until(
        lambda: e1.run(["python3", "-c", ruok], check=False).stdout.strip() == "imok",
        30,
        lambda: e1.log("zookeeper"),
    )


def consume(c1: Net) -> object:
    calls = json.dumps([{"method": "who"}, {"method": "plus", "args": [20, 22]}])
    argv = ["node", str(node_ready() / "zk_consumer.js"), "--zk", f"{E1_IN}:2181",
            "--interface", IFACE, "--calls", calls]  # fmt: skip
    r = c1.run(argv, check=False)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return [r.stdout, r.stderr]


@pytest.mark.parametrize("kind", ["sofamesh", "envoy"])
def test_zookeeper_consumer_reaches_a_provider_of_the_other_cluster(tmp_path, kind):
    cfg = tmp_path / "pilot-c1.yaml"
    cfg.write_text(
        "registries:\n"
        f"  - {{type: zookeeper, hosts: '{E1_IN}:2181', export: true, export_address: sidecar}}\n"
    )
    with clusters(
        tmp_path / "mesh",
        kind,
        {1: [2], 2: [1]},
        pilot_args={1: ["--config", str(cfg)]},
        before_pilots=lambda nets: start_zookeeper(nets["e1"]),
    ) as nets:
        c1, c2, e2 = nets["c1"], nets["c2"], nets["e2"]
        port = rpc_server(c2, "dubbo", C2)
        body = {"address": C2, "port": port, "protocol": "dubbo", "service_port": DUBBO_PORT}
        register(e2, "127.0.0.1", IFACE, "p1", body)
        want = [{"ok": True, "result": "c2"}, {"ok": True, "result": 42}]
        wait_until(lambda: consume(c1) == want, 20, lambda: f"{consume(c1)}\n{c1.log('sidecar')}")
        assert stat(e2, f"cluster.edge_in|{DUBBO_PORT}||{IFACE}.upstream_cx_total") >= 1
