"""Clusters as network namespaces, for tests/integration/multicluster and
benchmarks/multicluster.py: the namespaces, their links, the pilots, edges and sidecars.

Per cluster i, two namespaces linked by a veth pair: ci (10.6i.1.2, the workloads and their
sidecars) and ei (10.6i.1.1, the cluster's pilot and its edge sidecar, `router~` node id).
The edges share one more network, 10.69.0.0/24 (ei is 10.69.0.i), a bridge in namespace
"wan"; no namespace has a default route and none forwards, so a workload reaches nothing
outside its cluster. The pilots sync their catalogs over the edge network (`--cluster/
--peer`), name their edges (`--edge` for their own sidecars, `--edge-public` for the other
edges) and sign with one root (`--ca-cert/--ca-key`, as Istio's plugged-in CAs).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import ROOT, envoy_binary, sofamesh_command
from tests.integration.pilot.conftest import ads_bootstrap
from tests.support.certs import make_ca

C1, E1_IN, E1_OUT, E2_OUT, E2_IN, C2 = (
    "10.61.1.2",
    "10.61.1.1",
    "10.69.0.1",
    "10.69.0.2",
    "10.62.1.1",
    "10.62.1.2",
)
EDGE_PORT = 15443
TCP_OFFSET = 10000  # the sidecar's TCP listeners: service port + 10000 (apps share the host)


class Net:
    """One network namespace, loopback up; processes started in it are stopped with it."""

    def __init__(self, tag: str, workdir: Path, kind: str) -> None:
        self.kind = kind  # the proxies it runs: "sofamesh" or "envoy"
        self.tag = tag
        self.name = f"smc-{tag}-{uuid.uuid4().hex[:6]}"
        self.devs: dict[str, str] = {}  # the namespace at the other end -> our device
        self.workdir = workdir / tag
        self.workdir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.run(["ip", "link", "set", "lo", "up"])
        self.procs: dict[str, subprocess.Popen] = {}

    def argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.argv(argv), check=check, capture_output=True, text=True, timeout=30, cwd=ROOT
        )

    def start(self, key: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.workdir / f"{key}.log", "ab")  # noqa: SIM115 (closed with the process)
        p = subprocess.Popen(
            self.argv(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.PIPE, cwd=ROOT
        )
        self.procs[key] = p
        return p

    def stop(self, key: str) -> None:
        p = self.procs.pop(key, None)
        if p is None:
            return
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)

    def log(self, key: str) -> str:
        path = self.workdir / f"{key}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def delete(self) -> None:
        for key in list(self.procs):
            self.stop(key)
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def wait_until(pred, timeout: float, message) -> object:
    """Polls `pred()` until truthy; AssertionError with `message()` (the logs) after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(message())


def link(a: Net, a_ip: str, b: Net, b_ip: str) -> str:
    """A veth pair between a and b, each side up with its address (none if ""); b's device."""
    v = f"v{uuid.uuid4().hex[:7]}"
    subprocess.run(
        ["ip", "link", "add", v + "a", "netns", a.name, "type", "veth",
         "peer", "name", v + "b", "netns", b.name],
        check=True, capture_output=True,
    )  # fmt: skip
    a.devs[b.tag], b.devs[a.tag] = v + "a", v + "b"
    for net, ip, dev in ((a, a_ip, v + "a"), (b, b_ip, v + "b")):
        if ip:
            net.run(["ip", "addr", "add", ip + "/24", "dev", dev])
        net.run(["ip", "link", "set", dev, "up"])
    return v + "b"


def start_proxy(net: Net, key: str, node_id: str, xds: str) -> None:
    """The sidecar or edge `key`, of the kind the mesh runs (net.kind)."""
    cfg = net.workdir / f"{key}.json"
    cfg.write_text(json.dumps(ads_bootstrap(15010, 15000, True, node_id, xds_host=xds)))
    if net.kind == "envoy":
        argv = [envoy_binary(), "--disable-hot-restart", "-l", "warning"]
    else:
        argv = [*sofamesh_command(), "proxy", "-l", "warning"]
    net.start(key, [*argv, "-c", str(cfg), "--concurrency", "1"])
    wait_until(
        lambda: admin(net, "/ready") == "LIVE\n",
        timeout=30,
        message=lambda: f"{key} not ready:\n{net.log(key)}",
    )


def admin(net: Net, path: str) -> str:
    r = net.run(["curl", "-s", "--max-time", "3", f"http://127.0.0.1:15000{path}"], check=False)
    return r.stdout


def stat(net: Net, name: str) -> int:
    for line in admin(net, "/stats?filter=" + name).splitlines():
        k, _, v = line.partition(": ")
        if k == name and v.strip().isdigit():
            return int(v)
    return 0


def register(net: Net, api: str, service: str, iid: str, body: dict) -> None:
    r = net.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT",
         "-H", "content-type: application/json", "-d", json.dumps(body),
         f"http://{api}:15020/v1/services/{service}/instances/{iid}"]
    )  # fmt: skip
    assert r.stdout in ("200", "201"), r.stdout


def deregister(net: Net, api: str, service: str, iid: str) -> None:
    net.run(
        ["curl", "-s", "-X", "DELETE", f"http://{api}:15020/v1/services/{service}/instances/{iid}"]
    )


def curl(net: Net, *args: str) -> tuple[str, str]:
    """(status code, body) of a curl in `net`; code "000" when no answer came."""
    r = net.run(["curl", "-s", "--max-time", "5", "-w", "\n%{http_code}", *args], check=False)
    body, _, code = r.stdout.rpartition("\n")
    return code, body


GRPC_CLIENT = """
import sys, grpc
ch = grpc.insecure_channel("127.0.0.1:15001", options=[("grpc.default_authority", "b:9090")])
print(ch.unary_unary("/test.Echo/Echo")(b"ping", timeout=5).decode())
"""


def tx_bytes(net: Net, towards: str) -> int:
    """Bytes `net` sent on its link towards namespace `towards`."""
    dev = net.devs[towards]
    return int(net.run(["cat", f"/sys/class/net/{dev}/statistics/tx_bytes"]).stdout)


BULK_CLIENT = """
import socket
s = socket.create_connection(("127.0.0.1", %d), timeout=10)
data = bytes(range(256)) * 4096  # 1 MiB
s.sendall(data)
s.settimeout(10)
got = bytearray()
while len(got) - got.count(b"echo:") * 5 < len(data):  # the echo prefixes each chunk it got
    b = s.recv(65536)
    if not b:
        break
    got += b
back = bytes(got).replace(b"echo:", b"")
print(len(back), back == data)
"""

TCP_CLIENT = """
import socket
s = socket.create_connection(("127.0.0.1", %d), timeout=5)
s.sendall(b"hello over the edges")
s.settimeout(5)
print(s.recv(100).decode())
"""


def py(net: Net, code: str) -> str:
    r = net.run([sys.executable, "-c", code], check=False)
    return r.stdout.strip() or (r.stderr.strip().splitlines() or ["?"])[-1]


def apps(net: Net, key: str, ip: str) -> None:
    p = net.start(
        key,
        [
            sys.executable,
            "-m",
            "tests.support.netns_apps",
            f"{ip}:8080",
            f"{ip}:9090",
            f"{ip}:7070",
        ],
    )
    del p  # its log says "ready"
    wait_until(lambda: "ready" in net.log(key), timeout=20, message=lambda: net.log(key))


DUBBO_PORT, BOLT_PORT = 20880, 12200  # the services' ports (their servers take any port)


def rpc_server(net: Net, kind: str, ip: str) -> int:
    """tests/peers/rpc_server.js (sofa-rpc-node; dubbo-remoting for Dubbo) on ip:0, its port."""
    from tests.integration.rpc.conftest import node_ready

    key = f"rpc-{kind}"
    argv = ["node", str(node_ready() / "rpc_server.js"), "--host", ip, "--tag", net.name[4:6]]
    net.start(key, argv + (["--dubbo"] if kind == "dubbo" else []))
    line = wait_until(
        lambda: next((x for x in net.log(key).splitlines() if x.startswith('{"port"')), None),
        20,
        lambda: net.log(key),
    )
    return int(json.loads(str(line))["port"])


def rpc_call(net: Net, kind: str, port: int) -> list:
    """tests/peers/rpc_client.js against the sidecar's listener for `port`: who() and plus()."""
    from tests.integration.rpc.conftest import node_ready

    calls = json.dumps([{"method": "who"}, {"method": "plus", "args": [20, 22]}])
    argv = [
        "node",
        str(node_ready() / "rpc_client.js"),
        "--target",
        f"127.0.0.1:{port + TCP_OFFSET}",
    ]
    r = net.run(argv + ["--calls", calls] + (["--dubbo"] if kind == "dubbo" else []), check=False)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return [r.stdout, r.stderr]


def register_b(net: Net, api: str, ip: str, prefix: str) -> None:
    for port, proto in ((8080, "http"), (9090, "grpc"), (7070, "tcp")):
        register(
            net,
            api,
            "b",
            f"{prefix}-{port}",
            {"address": ip, "port": port, "protocol": proto, "service_port": port},
        )


def addresses(i: int) -> tuple[str, str, str]:
    """Cluster i's (workload, edge's side of that link, edge on the edge network)."""
    return f"10.6{i}.1.2", f"10.6{i}.1.1", f"10.69.0.{i}"


def edge_id(i: int) -> str:
    return f"router~{addresses(i)[1]}~edge.mesh-system~mesh-system.svc.cluster.local"


def start_edge(nets: dict[str, Net], i: int) -> None:
    start_proxy(nets[f"e{i}"], "edge", edge_id(i), "127.0.0.1")


@contextlib.contextmanager
def clusters(
    work: Path,
    kind: str,
    peers: dict[int, list[int]],
    pilot_args: dict[int, list[str]] | None = None,
    before_pilots=None,
) -> Iterator[dict[str, Net]]:
    """Clusters 1..n (the keys of `peers`: which pilots each pilot syncs with), `kind`
    ("sofamesh" or "envoy") as every sidecar and edge. Cluster i: namespace ci (workloads,
    10.6i.1.2; a sidecar, node a.default, started) linked to ei (10.6i.1.1: its pilot and edge
    sidecar); the edges share the edge network 10.69.0.0/24 (ei is 10.69.0.i), a bridge in
    namespace "wan". Nothing else links the clusters, and nothing forwards. `pilot_args`:
    more arguments for pilot i; `before_pilots(nets)`: run once the namespaces are linked."""
    nets: dict[str, Net] = {}
    try:
        wan = nets["wan"] = Net("wan", work, kind)
        wan.run(["ip", "link", "add", "br0", "type", "bridge"])
        wan.run(["ip", "link", "set", "br0", "up"])
        root_cert, root_key = make_ca("sofamesh multicluster root").write(work, "root")
        pilots: dict[int, list[str]] = {}
        for i in sorted(peers):
            c, e = nets[f"c{i}"], nets[f"e{i}"] = Net(f"c{i}", work, kind), Net(f"e{i}", work, kind)
            work_ip, edge_in, edge_out = addresses(i)
            link(c, work_ip, e, edge_in)
            port = link(e, edge_out, wan, "")
            wan.run(["ip", "link", "set", port, "master", "br0"])
            argv = [
                *sofamesh_command(), "pilot", "--cluster", f"c{i}", "--peer-lease", "3",
                "--xds-address", "0.0.0.0:15010", "--api-address", "0.0.0.0:15020",
                "--listener-address", "0.0.0.0", "--tcp-port-offset", str(TCP_OFFSET),
                "--edge", f"{edge_in}:{EDGE_PORT}", "--edge-public", f"{edge_out}:{EDGE_PORT}",
                "--ca-cert", root_cert, "--ca-key", root_key,
                "--data-dir", str(e.workdir / "pilot-data"),
            ]  # fmt: skip
            for j in peers[i]:
                argv += ["--peer", f"http://{addresses(j)[2]}:15020"]
            pilots[i] = argv + (pilot_args or {}).get(i, [])
        if before_pilots is not None:
            before_pilots(nets)
        for i in sorted(peers):
            nets[f"e{i}"].start("pilot", pilots[i])
        for i in sorted(peers):
            e = nets[f"e{i}"]
            wait_until(
                lambda e=e: "sofamesh pilot: xds=" in e.log("pilot"), 30, lambda e=e: e.log("pilot")
            )
        for i in sorted(peers):
            start_edge(nets, i)
            work_ip, edge_in, _ = addresses(i)
            node = f"sidecar~{work_ip}~a.default~default.svc.cluster.local"
            start_proxy(nets[f"c{i}"], "sidecar", node, edge_in)
        yield nets
    finally:
        for net in nets.values():
            net.delete()


@contextlib.contextmanager
def two_clusters(work: Path, kind: str, rpc: bool = True) -> Iterator[dict[str, Net]]:
    """Clusters 1 and 2 (`clusters`), b (HTTP 8080, gRPC 9090, TCP 7070) in c2 only,
    registered with c2's pilot; with `rpc`, a Dubbo and a Bolt server in c2 too (services
    dubbosvc:20880, boltsvc:12200)."""
    with clusters(work, kind, {1: [2], 2: [1]}) as nets:
        c2, e2 = nets["c2"], nets["e2"]
        apps(c2, "apps", C2)
        register_b(e2, "127.0.0.1", C2, "c2")
        if rpc:
            for proto, port in (("dubbo", DUBBO_PORT), ("bolt", BOLT_PORT)):
                actual = rpc_server(c2, proto, C2)
                register(e2, "127.0.0.1", f"{proto}svc", "c2", {"address": C2, "port": actual,
                         "protocol": proto, "service_port": port})  # fmt: skip
        yield nets
