"""`sofamesh demo`: a small mesh on one machine, every part a sofamesh one.

    sofamesh pilot (embedded store, in a temporary directory)
        ^ registration API (REST)            | ADS (Delta): clusters, endpoints, routes
        |                                    v
    hello-1 app :18081 <- sidecar 1 (inbound :15101, outbound :15001, admin :9901)
    hello-2 app :18082 <- sidecar 2 (inbound :15102, outbound :15002, admin :9902)

Each demo app (in this process) registers itself with the pilot as an instance of service
`hello` at its sidecar's inbound address, so a call by name through either sidecar's
outbound listener (`Host: hello`) goes sidecar -> sidecar -> app. The sidecars take
clusters, endpoints and the outbound route table from the pilot (CDS, EDS, RDS over ADS);
their two listeners are static, so both run on one host without sharing a port. Ctrl-C
deregisters the apps and stops the sidecars and the pilot (their logs are in the temporary
directory, removed at exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

SERVICE = "hello"
SERVICE_PORT = 80
DEFAULT_PORTS = {
    "xds": 15010,
    "api": 15020,
    "out1": 15001,
    "out2": 15002,
    "in1": 15101,
    "in2": 15102,
    "app1": 18081,
    "app2": 18082,
    "admin1": 9901,
    "admin2": 9902,
}
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)
ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


class DemoError(RuntimeError):
    pass


# ---- the demo app -------------------------------------------------------------------------


class HelloApp(asyncio.Protocol):
    """An HTTP/1.1 app answering `hello from <instance>` and the request line it got."""

    def __init__(self, instance: str) -> None:
        import httptools

        self.instance = instance
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.url = b""
        self.via = ""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        import httptools

        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url, self.via = b"", ""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"x-request-id":
            self.via = value.decode("latin-1")

    def on_message_complete(self) -> None:
        body = (
            f"hello from {self.instance} (path {self.url.decode('latin-1')}, "
            f"x-request-id {self.via or '-'})\n"
        ).encode()
        keep = self.parser.should_keep_alive()
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n%s\r\n"
            % (len(body), b"" if keep else b"connection: close\r\n")
            + body
        )
        if not keep:
            self.transport.close()


# ---- configs ---------------------------------------------------------------------------------


def _addr(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _static_cluster(name: str, port: int, h2: bool = False) -> dict:
    c: dict = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(port)}}]}],
        },
    }
    if h2:
        c["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return c


def _hcm(stat_prefix: str, routes: dict) -> dict:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM,
            "stat_prefix": stat_prefix,
            **routes,
            "http_filters": [ROUTER],
        },
    }


def sidecar_bootstrap(i: int, ports: dict[str, int]) -> dict:
    """Sidecar i: outbound listener with routes by RDS (the pilot's route table, named by its
    outbound port), inbound listener to its app, clusters and endpoints by ADS."""
    ads = {"ads": {}, "resource_api_version": "V3"}
    outbound = {
        "rds": {"route_config_name": str(ports["out1"]), "config_source": ads},
    }
    inbound = {
        "route_config": {
            "name": "inbound",
            "virtual_hosts": [
                {
                    "name": "app",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "inbound|app"}}],
                }
            ],
        }
    }
    return {
        "node": {
            "id": f"sidecar~127.0.0.1~hello-{i}.demo~demo.svc.cluster.local",
            "cluster": "hello.demo",
            "metadata": {"NAMESPACE": "demo", "LABELS": {"app": "hello"}},
        },
        "admin": {"address": _addr(ports[f"admin{i}"])},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
            },
            "cds_config": ads,
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "outbound",
                    "address": _addr(ports[f"out{i}"]),
                    "traffic_direction": "OUTBOUND",
                    "filter_chains": [{"filters": [_hcm("outbound", outbound)]}],
                },
                {
                    "name": "inbound",
                    "address": _addr(ports[f"in{i}"]),
                    "traffic_direction": "INBOUND",
                    "filter_chains": [{"filters": [_hcm("inbound", inbound)]}],
                },
            ],
            "clusters": [
                _static_cluster("xds-grpc", ports["xds"], h2=True),
                _static_cluster("inbound|app", ports[f"app{i}"]),
            ],
        },
    }


# ---- processes ---------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log: str

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""


def _sofamesh() -> list[str]:
    exe = shutil.which("sofamesh", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "sofamesh"]


def _sofamesh_shown() -> list[str]:
    """The command as the user types it: `sofamesh` when it is on PATH as this one."""
    cmd = _sofamesh()
    found = shutil.which("sofamesh")
    if found and os.path.realpath(found) == os.path.realpath(cmd[0]):
        return ["sofamesh"]
    return cmd


def _spawn(name: str, argv: list[str], workdir: str) -> Child:
    log = os.path.join(workdir, f"{name}.log")
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            argv,
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            start_new_session=True,  # Ctrl-C reaches the demo, which stops them in order
        )
    return Child(name, proc, log)


def _http(
    method: str, url: str, body: dict | None = None, headers: dict | None = None
) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Interrupted(Exception):
    """Ctrl-C while the mesh starts."""


async def _wait(
    what: str, check: Any, children: list[Child], stop: asyncio.Event, timeout: float = 30.0
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        if stop.is_set():
            raise Interrupted
        for c in children:
            if c.proc.poll() is not None:
                raise DemoError(f"{c.name} exited with {c.proc.returncode}:\n{c.tail()}")
        try:
            got = await asyncio.to_thread(check)
            if got:
                return got
        except OSError:
            pass
        if time.monotonic() > deadline:
            detail = "\n".join(f"--- {c.name}:\n{c.tail()}" for c in children)
            raise DemoError(f"timed out waiting for {what}\n{detail}")
        await asyncio.sleep(0.1)


def pick_ports(free: bool) -> dict[str, int]:
    """The demo's ports: the defaults (checked free), or any free ones (`--free-ports`)."""
    if free:
        socks = []
        try:
            for _ in DEFAULT_PORTS:
                s = socket.socket()
                s.bind(("127.0.0.1", 0))
                socks.append(s)
            return {k: s.getsockname()[1] for k, s in zip(DEFAULT_PORTS, socks)}
        finally:
            for s in socks:
                s.close()
    for name, port in DEFAULT_PORTS.items():
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                raise DemoError(
                    f"port {port} ({name}) is in use: stop what uses it, or run "
                    "`sofamesh demo --free-ports`"
                ) from None
    return dict(DEFAULT_PORTS)


def instructions(ports: dict[str, int], workdir: str) -> str:
    api = f"http://127.0.0.1:{ports['api']}"
    out1, out2 = ports["out1"], ports["out2"]
    return f"""\
sofamesh demo: a mesh of sofamesh parts is running
  pilot      xDS 127.0.0.1:{ports["xds"]}, registration API {api}
  hello-1    app 127.0.0.1:{ports["app1"]} behind sidecar 1: inbound :{ports["in1"]}, \
outbound :{out1}, admin http://127.0.0.1:{ports["admin1"]}
  hello-2    app 127.0.0.1:{ports["app2"]} behind sidecar 2: inbound :{ports["in2"]}, \
outbound :{out2}, admin http://127.0.0.1:{ports["admin2"]}
  logs       {workdir}

Try:
  # call service "hello" by name through sidecar 1 (answers alternate: hello-1, hello-2)
  for i in 1 2 3 4; do curl -s -H 'host: hello' http://127.0.0.1:{out1}/; done
  # deregister hello-2; within a second every call reaches hello-1 (try sidecar 2 too)
  curl -s -X DELETE {api}/v1/services/hello/instances/hello-2
  for i in 1 2 3 4; do curl -s -H 'host: hello' http://127.0.0.1:{out2}/; done
  # what the pilot told sidecar 1: its clusters and endpoints (admin API)
  curl -s http://127.0.0.1:{ports["admin1"]}/clusters | grep hello
  # the sidecars the pilot serves, and whether each has ACKed its latest config
  {" ".join(_sofamesh_shown())} proxy-status --pilot {api}
Ctrl-C to stop"""


async def run(free_ports: bool, exit_after: float | None) -> int:
    try:
        ports = pick_ports(free_ports)
    except DemoError as e:
        print(f"sofamesh demo: {e}", file=sys.stderr)
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    workdir = tempfile.mkdtemp(prefix="sofamesh-demo-")
    children: list[Child] = []
    apps: list[Any] = []
    registered: list[str] = []
    api = f"http://127.0.0.1:{ports['api']}"
    try:
        pilot = _spawn(
            "pilot",
            [
                *_sofamesh(),
                "pilot",
                "--xds-address",
                f"127.0.0.1:{ports['xds']}",
                "--api-address",
                f"127.0.0.1:{ports['api']}",
                "--outbound-port",
                str(ports["out1"]),
                "--listener-address",
                "127.0.0.1",
                "--data-dir",
                os.path.join(workdir, "pilot-data"),
            ],
            workdir,
        )
        children.append(pilot)
        await _wait("the pilot", lambda: _http("GET", api + "/healthz")[0] == 200, children, stop)
        for i in (1, 2):
            name = f"hello-{i}"
            srv = await loop.create_server(
                functools.partial(HelloApp, name), "127.0.0.1", ports[f"app{i}"]
            )
            apps.append(srv)
            # the app registers itself: its address is its sidecar's inbound listener
            body = {
                "address": "127.0.0.1",
                "port": ports[f"in{i}"],
                "protocol": "http",
                "service_port": SERVICE_PORT,
                "labels": {"version": f"v{i}"},
                "ttl_seconds": 0,
            }
            url = f"{api}/v1/services/{SERVICE}/instances/{name}"
            status, text = await asyncio.to_thread(_http, "PUT", url, body)
            if status not in (200, 201):
                raise DemoError(f"registering {name}: {status} {text!r}")
            registered.append(name)
        for i in (1, 2):
            path = os.path.join(workdir, f"sidecar-{i}.json")
            with open(path, "w") as f:  # noqa: ASYNC230 - a small file, once
                json.dump(sidecar_bootstrap(i, ports), f, indent=1)
            children.append(
                _spawn(f"sidecar-{i}", [*_sofamesh(), "proxy", "-c", path, "-l", "info"], workdir)
            )
        for i in (1, 2):
            out = ports[f"out{i}"]

            def by_name(out: int = out) -> bool:
                status, body = _http("GET", f"http://127.0.0.1:{out}/", headers={"host": SERVICE})
                return status == 200 and body.startswith(b"hello from")

            await _wait(f"a call by name through sidecar {i}", by_name, children, stop)
        print(instructions(ports, workdir), flush=True)
        if exit_after is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), exit_after)
        else:
            await stop.wait()
        print("sofamesh demo: stopping", flush=True)
        return 0
    except DemoError as e:
        print(f"sofamesh demo: {e}", file=sys.stderr)
        return 1
    except Interrupted:
        print("sofamesh demo: stopping", flush=True)
        return 0
    finally:
        for name in registered:  # the apps leave the registry as they stop
            with contextlib.suppress(OSError):
                await asyncio.to_thread(
                    _http, "DELETE", f"{api}/v1/services/{SERVICE}/instances/{name}"
                )
        for c in reversed(children):  # sidecars, then the pilot
            await asyncio.to_thread(c.stop)
        for srv in apps:
            srv.close()
        shutil.rmtree(workdir, ignore_errors=True)
