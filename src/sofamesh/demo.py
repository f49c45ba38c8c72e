"""`sofamesh demo`: a small mesh (pilot, two apps, a sidecar in front of each: demo_mesh.py);
`sofamesh demo --simple`: a demo upstream plus one sidecar on the bundled examples/demo.yaml.

    sofamesh demo                       # the mesh; prints the commands to try
    sofamesh demo --free-ports --exit-after 30
    sofamesh demo --simple              # sidecar :10000 -> demo upstream :18080, admin :9901
    curl -i http://127.0.0.1:10000/any/path
    sofamesh demo --simple --listen-port 0 --upstream-port 0 --admin-port 0 --exit-after 5

The demo upstream answers every request with a JSON echo of what it received (method, path,
headers, body length), so you can see what the sidecar adds on the way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from importlib import resources
from typing import Any

import httptools


class EchoUpstream(asyncio.Protocol):
    """HTTP/1.1 keep-alive echo server (httptools parser)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body_len = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body_len = b"", [], 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.body_len += len(body)

    def on_message_complete(self) -> None:
        body = (
            json.dumps(
                {
                    "method": self.parser.get_method().decode(),
                    "path": self.url.decode("latin-1"),
                    "headers": self.headers,
                    "body_length": self.body_len,
                }
            ).encode()
            + b"\n"
        )
        keep = self.parser.should_keep_alive()
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n"
            % (len(body), b"" if keep else b"connection: close\r\n")
            + body
        )
        if not keep:
            self.transport.close()


def load_demo_bootstrap(
    listen_port: int | None, upstream_port: int | None, admin_port: int | None
) -> Any:
    text = resources.files("sofamesh.examples").joinpath("demo.yaml").read_text()
    try:
        from sofamesh.config import load_bootstrap

        bs = load_bootstrap(None, config_yaml=text)
    except ImportError:  # pragma: no cover - the config package ships with sofamesh
        import yaml
        from envoy.config.bootstrap.v3 import bootstrap_pb2
        from google.protobuf import json_format

        bs = json_format.ParseDict(yaml.safe_load(text), bootstrap_pb2.Bootstrap())
    if listen_port is not None:
        bs.static_resources.listeners[0].address.socket_address.port_value = listen_port
    if upstream_port is not None:
        ep = bs.static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0]
        ep.endpoint.address.socket_address.port_value = upstream_port
    if admin_port is not None:
        bs.admin.address.socket_address.port_value = admin_port
    return bs


async def run(args: argparse.Namespace) -> int:
    from sofamesh._core.stats import Store
    from sofamesh.proxy.server import Server

    loop = asyncio.get_running_loop()
    up_port = args.upstream_port if args.upstream_port is not None else 18080
    upstream = await loop.create_server(EchoUpstream, "127.0.0.1", up_port)
    up_port = upstream.sockets[0].getsockname()[1]
    bs = load_demo_bootstrap(args.listen_port, up_port, args.admin_port)
    store = Store()
    server = Server(bs, stats=store, options=None)
    await server.start()
    admin = None
    admin_addr = None
    try:
        from sofamesh.admin.backend import LocalBackend
        from sofamesh.admin.handlers import AdminState
        from sofamesh.admin.server import AdminServer
        from sofamesh.proxy.cli import Options

        state = AdminState(bs, Options(), LocalBackend(server, store))
        admin = AdminServer(state)
        sa = bs.admin.address.socket_address
        admin_addr = await admin.start(sa.address, sa.port_value)
    except (ImportError, OSError, ValueError) as e:  # a convenience: the demo runs without it
        print(f"admin API not started: {e}", file=sys.stderr)
        admin = None
    li = server.listeners[0]
    print(f"demo upstream: http://127.0.0.1:{up_port}", flush=True)
    print(
        f"sidecar:       http://{li.address[0]}:{li.address[1]}  "
        f"(try: curl -i http://{li.address[0]}:{li.address[1]}/hello/world)",
        flush=True,
    )
    if admin_addr:
        print(f"admin:         http://{admin_addr[0]}:{admin_addr[1]}/stats", flush=True)
    print("Ctrl-C to stop", flush=True)
    try:
        if args.exit_after is not None:
            await asyncio.sleep(args.exit_after)
        else:
            await asyncio.Event().wait()
    finally:
        if admin is not None:
            await admin.stop()
        await server.stop()
        upstream.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sofamesh demo", description=__doc__.splitlines()[0])
    p.add_argument(
        "--simple",
        action="store_true",
        help="one sidecar in front of a demo upstream, static config (no pilot)",
    )
    p.add_argument(
        "--free-ports",
        action="store_true",
        help="the mesh on any free ports instead of the defaults (15001.., 9901, 18081..)",
    )
    p.add_argument(
        "--listen-port", type=int, default=None, help="--simple: sidecar port (default 10000)"
    )
    p.add_argument(
        "--upstream-port",
        type=int,
        default=None,
        help="--simple: demo upstream port (default 18080)",
    )
    p.add_argument(
        "--admin-port", type=int, default=None, help="--simple: admin port (default 9901)"
    )
    p.add_argument(
        "--exit-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop after SECONDS (for scripts and tests)",
    )
    args = p.parse_args(argv)
    import uvloop

    simple_only = (args.listen_port, args.upstream_port, args.admin_port)
    if not args.simple and any(v is not None for v in simple_only):
        p.error("--listen-port, --upstream-port and --admin-port go with --simple")
    if args.simple:
        try:
            return uvloop.run(run(args))
        except KeyboardInterrupt:
            return 0
    from sofamesh import demo_mesh

    return uvloop.run(demo_mesh.run(args.free_ports, args.exit_after))
