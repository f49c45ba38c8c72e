"""Transparent interception as an Istio sidecar runs it, in network namespaces this test
makes. Outbound: the iptables rule Istio installs (every TCP connection the applications
open to the service range is REDIRECTed to 15001; the proxy's own, by its uid 1337, is not)
sends an unchanged curl, an unchanged gRPC client and a raw TCP client through the proxy,
which sees each connection's original destination (SO_ORIGINAL_DST). Inbound: a client in
another namespace, across a veth link, reaches the server namespace's applications through
Istio's PREROUTING REDIRECT to 15006 and a virtualInbound listener (original_dst listener
filter, chains by destination port, InboundPassthroughCluster for the rest).

The proxy's config is Istio's virtualOutbound shape (tests/fixtures/istio
sidecar_virtual_outbound.json): `virtualOutbound` on 0.0.0.0:15001 with `use_original_dst`
hands a connection to the listener at its original destination (`bind_to_port: false`
listeners `0.0.0.0_8080` for HTTP and `10.77.0.2_9090` for gRPC), and serves the rest with
its catch-all chain to `PassthroughCluster` (ORIGINAL_DST, CLUSTER_PROVIDED); a connection
made to 15001 itself matches the BlackHoleCluster chain. Envoy 1.40 and sofamesh run the same
config in turn; the clients and the applications see the same, and the stats that show the
path taken agree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT, envoy_binary, sofamesh_command

WEB, GRPC, TCP, OTHER = "10.77.0.1:8080", "10.77.0.2:9090", "10.77.0.3:7070", "10.77.0.4:7071"
UID = 1337  # Istio's proxy uid: its own connections are not redirected
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
H2 = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
ALS_FILE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def _addr(ip: str, port: int) -> dict:
    return {"socket_address": {"address": ip, "port_value": port}}


def _tcp(cluster: str) -> list[dict]:
    return [
        {
            "name": "envoy.filters.network.tcp_proxy",
            "typed_config": {"@type": TCP_PROXY, "stat_prefix": cluster, "cluster": cluster},
        }
    ]


def _hcm(prefix: str, cluster: str, log: Path) -> list[dict]:
    return [
        {
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": HCM,
                "stat_prefix": prefix,
                "codec_type": "AUTO",
                # the downstream's local address is its original destination
                "access_log": [
                    {
                        "name": "envoy.access_loggers.file",
                        "typed_config": {
                            "@type": ALS_FILE,
                            "path": str(log),
                            "log_format": {
                                "text_format_source": {
                                    "inline_string": f"{prefix} %DOWNSTREAM_LOCAL_ADDRESS%\n"
                                }
                            },
                        },
                    }
                ],
                "route_config": {
                    "name": prefix,
                    "virtual_hosts": [
                        {
                            "name": prefix,
                            "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
                        }
                    ],
                    "response_headers_to_add": [
                        {"header": {"key": "x-sidecar-route", "value": prefix}}
                    ],
                },
                "http_filters": [
                    {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}
                ],
            },
        }
    ]


def _static(name: str, hostport: str, h2: bool = False) -> dict:
    ip, port = hostport.split(":")
    c: dict = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(ip, int(port))}}]}],
        },
    }
    if h2:
        c["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": H2,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return c


def _original_dst(name: str) -> dict:
    return {
        "name": name,
        "type": "ORIGINAL_DST",
        "connect_timeout": "1s",
        "lb_policy": "CLUSTER_PROVIDED",
    }


def bootstrap(log: Path) -> dict:
    return {
        "admin": {"address": _addr("127.0.0.1", 15000)},
        "static_resources": {
            "listeners": [
                {
                    "name": "virtualOutbound",
                    "address": _addr("0.0.0.0", 15001),
                    "use_original_dst": True,
                    "traffic_direction": "OUTBOUND",
                    "filter_chains": [
                        {
                            "name": "virtualOutbound-blackhole",
                            "filter_chain_match": {"destination_port": 15001},
                            "filters": _tcp("BlackHoleCluster"),
                        },
                        {
                            "name": "virtualOutbound-catchall-tcp",
                            "filters": _tcp("PassthroughCluster"),
                        },
                    ],
                },
                {
                    "name": "0.0.0.0_8080",
                    "address": _addr("0.0.0.0", 8080),
                    "bind_to_port": False,
                    "traffic_direction": "OUTBOUND",
                    "filter_chains": [{"filters": _hcm("outbound_0.0.0.0_8080", "web", log)}],
                },
                {
                    "name": "10.77.0.2_9090",
                    "address": _addr("10.77.0.2", 9090),
                    "bind_to_port": False,
                    "traffic_direction": "OUTBOUND",
                    "filter_chains": [{"filters": _hcm("outbound_10.77.0.2_9090", "grpc", log)}],
                },
            ],
            "clusters": [
                _static("web", WEB),
                _static("grpc", GRPC, h2=True),
                _original_dst("PassthroughCluster"),
                {
                    "name": "BlackHoleCluster",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {"cluster_name": "BlackHoleCluster", "endpoints": []},
                },
            ],
        },
    }


class Namespace:
    """A network namespace with loopback up and `addresses` on it, and Istio's outbound
    REDIRECT once `intercept()` is called."""

    def __init__(self, addresses: tuple[str, ...] = (WEB, GRPC, TCP, OTHER)) -> None:
        self.name = f"smi-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.run(["ip", "link", "set", "lo", "up"])
        for a in addresses:
            self.run(["ip", "addr", "add", a.split(":")[0] + "/32", "dev", "lo"])

    def argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(argv), check=True, capture_output=True, text=True, **kw)

    def intercept(self) -> None:
        self.run(
            [
                "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "10.77.0.0/24",
                "-m", "owner", "!", "--uid-owner", str(UID),
                "-j", "REDIRECT", "--to-ports", "15001",
            ]
        )  # fmt: skip

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def _curl(ns: Namespace, *args: str) -> str:
    r = subprocess.run(  # noqa: PLW1510 (the output is what is looked at)
        ns.argv(["curl", "-s", "-i", "--max-time", "5", *args]),
        capture_output=True,
        text=True,
        timeout=20,
    )
    out = r.stdout.replace("\r\n", "\n")
    head, _, body = out.partition("\n\n")
    lines = head.split("\n")
    keep = [lines[0]] + sorted(
        h.lower() for h in lines[1:] if h.lower().startswith(("x-sidecar-route", "content-length"))
    )
    return "\n".join(keep) + "\n\n" + body


GRPC_CLIENT = """
import sys, grpc
ch = grpc.insecure_channel(sys.argv[1])
call = ch.unary_unary("/test.Echo/Echo")
print(call(b"ping", timeout=5).decode())
"""

TCP_CLIENT = """
import socket, sys
h, p = sys.argv[1].split(":")
try:
    s = socket.create_connection((h, int(p)), timeout=3)
    s.sendall(b"hello")
    s.settimeout(3)
    print(s.recv(100).decode() or "closed")
except (ConnectionResetError, BrokenPipeError):
    print("closed")  # a FIN or a RST: which one is a race, for either proxy
except OSError as e:
    print(type(e).__name__)
"""


def _py(ns: Namespace, code: str, arg: str) -> str:
    r = subprocess.run(  # noqa: PLW1510 (the output is what is looked at)
        ns.argv([sys.executable, "-c", code, arg]),
        capture_output=True,
        text=True,
        timeout=20,
        cwd=ROOT,
    )
    if r.stdout.strip():
        return r.stdout.strip()
    err = r.stderr.strip().splitlines()
    return err[-1] if err else "?"


def _stats(ns: Namespace) -> dict[str, int]:
    r = subprocess.run(  # noqa: PLW1510 (the output is what is looked at)
        ns.argv(["curl", "-s", "--max-time", "5", "http://127.0.0.1:15000/stats"]),
        capture_output=True,
        text=True,
        timeout=20,
    )
    out = {}
    for line in r.stdout.splitlines():
        k, _, v = line.partition(": ")
        if v.isdigit():
            out[k] = int(v)
    return out


def _start(ns: Namespace, argv: list[str], workdir: Path, config: dict) -> subprocess.Popen:
    cfg = workdir / "bootstrap.json"
    cfg.write_text(json.dumps(config))
    cfg.chmod(0o644)
    log = open(workdir / "proxy.log", "wb")  # noqa: SIM115 (closed with the process)
    p = subprocess.Popen(
        ns.argv(
            ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", *argv, "-c", str(cfg)]
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "HOME": str(workdir)},
    )
    deadline = time.monotonic() + 30
    while True:
        if p.poll() is not None:
            raise RuntimeError((workdir / "proxy.log").read_text()[-4000:])
        r = subprocess.run(  # noqa: PLW1510 (the output is what is looked at)
            ns.argv(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "1",
                     "http://127.0.0.1:15000/ready"]),
            capture_output=True, text=True,
        )  # fmt: skip
        if r.stdout == "200":
            return p
        if time.monotonic() > deadline:
            p.kill()
            raise RuntimeError("not ready: " + (workdir / "proxy.log").read_text()[-4000:])
        time.sleep(0.1)


def _stop(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, 15)
    except ProcessLookupError:
        return
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        p.wait(timeout=5)


STAT_KEYS = (
    "http.outbound_0.0.0.0_8080.downstream_rq_total",
    "http.outbound_10.77.0.2_9090.downstream_rq_total",
    "cluster.web.upstream_rq_total",
    "cluster.grpc.upstream_rq_total",
    "cluster.PassthroughCluster.upstream_cx_total",
    "cluster.BlackHoleCluster.upstream_cx_none_healthy",
)


def _argv(kind: str) -> list[str]:
    if kind == "envoy":
        return [envoy_binary(), "--concurrency", "1", "-l", "warning", "--disable-hot-restart"]
    return [*sofamesh_command(), "proxy", "--concurrency", "1", "-l", "warning"]


def _exercise(kind: str, ns: Namespace, workdir: Path) -> dict:
    p = _start(ns, _argv(kind), workdir, bootstrap(workdir / "access.log"))
    try:
        seen = {
            "curl web": _curl(ns, f"http://{WEB}/hello?x=1"),
            "curl web by name": _curl(ns, "-H", "host: web.mesh", f"http://{WEB}/named"),
            "grpc": _py(ns, GRPC_CLIENT, GRPC),
            "tcp passthrough": _py(ns, TCP_CLIENT, TCP),
            "tcp passthrough, nobody listening": _py(ns, TCP_CLIENT, OTHER),
            "to 15001 itself": _py(ns, TCP_CLIENT, "127.0.0.1:15001"),
        }
        st = _stats(ns)
        seen["stats"] = {k: st.get(k, 0) for k in STAT_KEYS}
    finally:
        _stop(p)
    seen["access log"] = sorted((workdir / "access.log").read_text().splitlines())
    return seen


@pytest.fixture
def namespace():
    if shutil.which("iptables") is None:
        pytest.fail("iptables is needed (ci/install.sh installs it)")
    ns = Namespace()
    apps = subprocess.Popen(
        ns.argv([sys.executable, "-m", "tests.support.netns_apps",
                 WEB, GRPC, TCP]),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, text=True,
    )  # fmt: skip
    try:
        assert apps.stdout is not None
        assert apps.stdout.readline().strip() == "ready"
        ns.intercept()
        yield ns
    finally:
        if apps.stdin:
            apps.stdin.close()
        apps.kill()
        apps.wait()
        ns.delete()


def test_istio_outbound_interception_as_envoy(namespace):
    work = Path(tempfile.mkdtemp(prefix="smi-"))
    work.chmod(0o777)  # the proxies run as uid 1337
    try:
        for k in ("envoy", "sofamesh"):
            (work / k).mkdir()
            (work / k).chmod(0o777)
        envoy = _exercise("envoy", namespace, work / "envoy")
        ours = _exercise("sofamesh", namespace, work / "sofamesh")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert ours == envoy, json.dumps({"envoy": envoy, "sofamesh": ours}, indent=1)
    # and what they agree on is interception at work
    assert "x-sidecar-route: outbound_0.0.0.0_8080" in ours["curl web"]
    assert "path=/hello?x=1" in ours["curl web"]
    assert "x-envoy-expected-rq-timeout-ms=15000" in ours["curl web"]
    assert ours["grpc"].startswith("echo:ping saw:")
    assert ours["tcp passthrough"] == "echo:hello"
    assert ours["stats"]["cluster.PassthroughCluster.upstream_cx_total"] >= 2
    assert "outbound_0.0.0.0_8080 10.77.0.1:8080" in ours["access log"]


# -- inbound: a client in another namespace, Istio's PREROUTING REDIRECT to 15006 ------------
POD = "10.88.0.2"  # the server namespace's address on the link between the two


def inbound_bootstrap(log: Path) -> dict:
    """Istio's virtualInbound shape: chains by destination port (HTTP 8080, gRPC 9090) to
    the local applications, anything else to InboundPassthroughCluster (ORIGINAL_DST)."""

    def chain(name: str, port: int, filters: list[dict]) -> dict:
        return {"name": name, "filter_chain_match": {"destination_port": port}, "filters": filters}

    return {
        "admin": {"address": _addr("127.0.0.1", 15000)},
        "static_resources": {
            "listeners": [
                {
                    "name": "virtualInbound",
                    "address": _addr("0.0.0.0", 15006),
                    "traffic_direction": "INBOUND",
                    "listener_filters": [
                        {
                            "name": "envoy.filters.listener.original_dst",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters."
                                "listener.original_dst.v3.OriginalDst"
                            },
                        }
                    ],
                    "filter_chains": [
                        chain(
                            "0.0.0.0_8080",
                            8080,
                            _hcm("inbound_0.0.0.0_8080", "inbound|8080||", log),
                        ),
                        chain(
                            "0.0.0.0_9090",
                            9090,
                            _hcm("inbound_0.0.0.0_9090", "inbound|9090||", log),
                        ),
                        {
                            "name": "virtualInbound-catchall",
                            "filters": _tcp("InboundPassthroughCluster"),
                        },
                    ],
                }
            ],
            "clusters": [
                _static("inbound|8080||", "127.0.0.1:8080"),
                _static("inbound|9090||", "127.0.0.1:9090", h2=True),
                _original_dst("InboundPassthroughCluster"),
            ],
        },
    }


INBOUND_STATS = (
    "http.inbound_0.0.0.0_8080.downstream_rq_total",
    "http.inbound_0.0.0.0_9090.downstream_rq_total",
    "cluster.inbound|8080||.upstream_rq_total",
    "cluster.inbound|9090||.upstream_rq_total",
    "cluster.InboundPassthroughCluster.upstream_cx_total",
)


@pytest.fixture
def pod():
    """(client namespace, server namespace): a veth link between them, the server's
    applications on 0.0.0.0 (HTTP 8080, gRPC 9090, TCP 7070) and Istio's inbound REDIRECT of
    what arrives on the link to 15006."""
    if shutil.which("iptables") is None:
        pytest.fail("iptables is needed (ci/install.sh installs it)")
    client, server = Namespace(()), Namespace(())
    apps = None
    try:
        veth = f"v{uuid.uuid4().hex[:6]}"
        subprocess.run(
            ["ip", "link", "add", veth + "c", "netns", client.name, "type", "veth",
             "peer", "name", veth + "s", "netns", server.name],
            check=True, capture_output=True,
        )  # fmt: skip
        client.run(["ip", "addr", "add", "10.88.0.1/24", "dev", veth + "c"])
        client.run(["ip", "link", "set", veth + "c", "up"])
        server.run(["ip", "addr", "add", POD + "/24", "dev", veth + "s"])
        server.run(["ip", "link", "set", veth + "s", "up"])
        apps = subprocess.Popen(
            server.argv([sys.executable, "-m", "tests.support.netns_apps",
                         "0.0.0.0:8080", "0.0.0.0:9090", "0.0.0.0:7070"]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, text=True,
        )  # fmt: skip
        assert apps.stdout is not None
        assert apps.stdout.readline().strip() == "ready"
        server.run(
            ["iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "-i", veth + "s",
             "-j", "REDIRECT", "--to-ports", "15006"]
        )  # fmt: skip
        yield client, server
    finally:
        if apps is not None:
            if apps.stdin:
                apps.stdin.close()
            apps.kill()
            apps.wait()
        client.delete()
        server.delete()


def _exercise_inbound(kind: str, client: Namespace, server: Namespace, workdir: Path) -> dict:
    p = _start(server, _argv(kind), workdir, inbound_bootstrap(workdir / "access.log"))
    try:
        seen = {
            "curl": _curl(client, f"http://{POD}:8080/in?y=2"),
            "grpc": _py(client, GRPC_CLIENT, f"{POD}:9090"),
            "tcp passthrough": _py(client, TCP_CLIENT, f"{POD}:7070"),
            "tcp passthrough, nobody listening": _py(client, TCP_CLIENT, f"{POD}:7071"),
        }
        st = _stats(server)
        seen["stats"] = {k: st.get(k, 0) for k in INBOUND_STATS}
    finally:
        _stop(p)
    seen["access log"] = sorted((workdir / "access.log").read_text().splitlines())
    return seen


def test_istio_inbound_interception_as_envoy(pod):
    client, server = pod
    work = Path(tempfile.mkdtemp(prefix="smi-"))
    work.chmod(0o777)
    try:
        got = {}
        for k in ("envoy", "sofamesh"):
            (work / k).mkdir()
            (work / k).chmod(0o777)
            got[k] = _exercise_inbound(k, client, server, work / k)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ours, envoy = got["sofamesh"], got["envoy"]
    assert ours == envoy, json.dumps(got, indent=1)
    assert "x-sidecar-route: inbound_0.0.0.0_8080" in ours["curl"]
    assert "path=/in?y=2" in ours["curl"]
    assert ours["grpc"].startswith("echo:ping saw:")
    assert ours["tcp passthrough"] == "echo:hello"
    assert ours["stats"]["cluster.InboundPassthroughCluster.upstream_cx_total"] >= 1
    assert f"inbound_0.0.0.0_8080 {POD}:8080" in ours["access log"]
