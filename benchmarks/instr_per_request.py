"""Instructions per proxied request, counted by valgrind (callgrind): a repeatable figure for
hot-path changes on a noisy machine, where CPU-time benchmarks wander by 10-20 %.

    .venv/bin/python benchmarks/instr_per_request.py [--requests 2000]
        [--proto h1|h2|bolt|dubbo] [--rpc-tracing PCT] [--tracing PCT] [--src DIR]
        [--mixer all|rbac|rlqs|als] [--lua]

`sofamesh proxy` (the benchmark bootstrap of benchmarks/lib/bootstrap.py: local_ratelimit +
router, HTTP/1.1 upstream) runs under callgrind; a keep-alive client sends N and then 5N
small GETs on one connection (HTTP/1.1, or h2c with --proto h2, one stream at a time) to a
tiny in-process upstream; with --proto bolt|dubbo, Bolt v1 (SofaRequest, `service` and
method headers) or Dubbo (hessian2, one string argument) calls one at a time through a
bolt_proxy / dubbo_proxy listener to an in-process RPC upstream (framed with sofamesh's
codecs), and --rpc-tracing PCT adds the RPC tracing filter (Zipkin, random_sampling PCT, an
in-process collector answering 202). Instructions per request = (Ir(5N) - Ir(N)) / 4N:
start-up and shutdown cancel out. --src runs another tree's build (e.g. a git worktree of the previous
commit, built with `setup.py build_ext --inplace`), for a before/after comparison with the
same interpreter. valgrind makes the proxy ~50x slower: the figure is instructions, not time.
--mixer adds the Mixer-in-the-sidecar filters of `http1_e2e.py --mixer` (RBAC of 20 policies,
rate_limit_quota, the gRPC access log, the last two against a real `sofamesh mixer` run
outside valgrind), or one of them, to see what each costs per request. --lua routes with the
Lua cluster specifier of Envoy's lua-cluster-specifier example (one header read per request;
its clusters renamed to the benchmark's) instead of `cluster: upstream`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lib.bootstrap import MIXER_POLICY, bootstrap
from lib.proc import free_port


def _mixer_bootstrap(port: int, admin: int, up: int, part: str, mixer_port: int) -> dict:
    """bootstrap() with the mixer filters, all of them or one part (rbac, rlqs, als)."""
    boot = bootstrap(port, admin, up, 20 if part in ("all", "rbac") else 0, None, mixer_port)
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    hcm = hcm["typed_config"]
    if part not in ("all", "als"):
        del hcm["access_log"]
    if part not in ("all", "rlqs"):
        hcm["http_filters"] = [f for f in hcm["http_filters"] if "quota" not in f["name"]]
    return boot


def _start_mixer(td: str) -> tuple[subprocess.Popen, int]:
    policy = Path(td) / "mixer.yaml"
    policy.write_text(MIXER_POLICY)
    grpc_port = free_port()
    argv = [sys.executable, "-m", "sofamesh", "mixer", "--grpc-address"]
    argv += [f"127.0.0.1:{grpc_port}", "--http-address", "127.0.0.1:0", "--config", str(policy)]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    p.stdout.readline()  # "sofamesh mixer: grpc ... http ...": it is serving
    return p, grpc_port


REPLY = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: text/plain\r\n\r\nhello"


def _listen(serve) -> tuple[socket.socket, int]:
    """A loopback listener on a free port whose connections each get a `serve(conn)` thread;
    returns the listening socket (close it to stop) and its port."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)

    def accept() -> None:
        while True:
            try:
                c, _ = ls.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return ls, ls.getsockname()[1]


def _upstream() -> tuple[socket.socket, int]:
    """A keep-alive HTTP/1.1 upstream answering every request with 5 bytes."""

    def serve(c: socket.socket) -> None:
        buf = b""
        with c:
            while True:
                d = c.recv(65536)
                if not d:
                    return
                buf += d
                while b"\r\n\r\n" in buf:
                    _, buf = buf.split(b"\r\n\r\n", 1)
                    c.sendall(REPLY)

    return _listen(serve)


def _h1_client(port: int, n: int) -> None:
    req = b"GET /bench HTTP/1.1\r\nhost: bench.local\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        for _ in range(n):
            s.sendall(req)
            got = b""
            while not got.endswith(b"hello"):
                d = s.recv(65536)
                if not d:
                    raise RuntimeError("proxy closed the connection")
                got += d


def _h2_client(port: int, n: int) -> None:
    import h2.config
    import h2.connection
    import h2.events

    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        c.initiate_connection()
        s.sendall(c.data_to_send())
        hdrs = [
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "bench.local"),
            (":path", "/bench"),
        ]
        for _ in range(n):
            sid = c.get_next_available_stream_id()
            c.send_headers(sid, hdrs, end_stream=True)
            s.sendall(c.data_to_send())
            done = False
            while not done:
                d = s.recv(65536)
                if not d:
                    raise RuntimeError("proxy closed the connection")
                for ev in c.receive_data(d):
                    if isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                        done = True
                    elif isinstance(ev, h2.events.DataReceived):
                        c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                s.sendall(c.data_to_send())


RPC_SERVICE = "com.alipay.bench.EchoService"


def _rpc_frames(proto: str):
    from sofamesh._core.codecs import bolt, dubbo
    from sofamesh._core.codecs.hessian import h2_encode_str

    if proto == "bolt":
        hdrs = {"service": RPC_SERVICE + ":1.0", "sofa_head_method_name": "echo"}

        def request(i: int) -> bytes:
            return bolt.BoltFrame(
                request_id=i,
                timeout=3000,
                class_name=bolt.SOFA_REQUEST_CLASS,
                headers=hdrs,
                content=b"x" * 64,
            ).encode()

        def reply(f) -> bytes:
            return bolt.BoltFrame(
                type=0, cmdcode=2, request_id=f.request_id, status=0, content=b"y" * 16
            ).encode()

        return bolt.BoltDecoder, request, reply

    arg = h2_encode_str("x" * 64)

    def request(i: int) -> bytes:
        return dubbo.encode_request(
            i, "2.0.2", RPC_SERVICE, None, "echo", "Ljava/lang/String;", arg, {"path": RPC_SERVICE}
        )

    def reply(f) -> bytes:
        return dubbo.encode_response(f.request_id, h2_encode_str("y" * 16))

    return dubbo.DubboDecoder, request, reply


def _rpc_upstream(proto: str) -> tuple[socket.socket, int]:
    """An RPC upstream answering every request (framed with sofamesh's codecs)."""
    decoder, _, reply = _rpc_frames(proto)

    def serve(c: socket.socket) -> None:
        dec = decoder()
        with c:
            while True:
                d = c.recv(65536)
                if not d:
                    return
                out = [reply(f) for f in dec.feed(d) if getattr(f, "is_request", False)]
                if out:
                    c.sendall(b"".join(out))

    return _listen(serve)


def _rpc_client(proto: str, port: int, n: int) -> None:
    decoder, request, _ = _rpc_frames(proto)
    dec = decoder()
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        for i in range(1, n + 1):
            s.sendall(request(i))
            got: list = []
            while not got:
                d = s.recv(65536)
                if not d:
                    raise RuntimeError("proxy closed the connection")
                got = dec.feed(d)
            if proto == "bolt" and got[0].status != 0 or proto == "dubbo" and got[0].status != 20:
                raise RuntimeError(f"error reply: {got[0]!r}")


def _collector() -> tuple[socket.socket, int]:
    """A Zipkin collector that takes every POST (202), keep-alive."""

    def serve(c: socket.socket) -> None:
        buf = b""
        with c:
            while True:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                head, _, buf = buf.partition(b"\r\n\r\n")
                m = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
                need = int(m.group(1)) if m else 0
                while len(buf) < need:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                buf = buf[need:]
                c.sendall(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")

    return _listen(serve)


def _rpc_bootstrap(
    proto: str, port: int, admin: int, up: int, tracing: float | None, zipkin: int = 0
) -> dict:
    def cluster(name: str, p: int) -> dict:
        ep = {
            "endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}
        }
        return {
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [ep]}]},
        }

    routes = [
        {
            "name": "rc",
            "interface": RPC_SERVICE,
            "routes": [{"match": {}, "route": {"cluster": "upstream"}}],
        }
    ]
    filters = []
    if tracing is not None:
        filters.append(
            {
                "name": "sofamesh.filters.rpc.tracing",
                "config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network"
                    ".http_connection_manager.v3.HttpConnectionManager.Tracing",
                    "provider": {
                        "name": "envoy.tracers.zipkin",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
                            "collector_cluster": "zipkin",
                            "collector_endpoint": "/api/v2/spans",
                            "collector_endpoint_version": "HTTP_JSON",
                        },
                    },
                    "random_sampling": {"value": tracing},
                },
            }
        )
    if proto == "bolt":
        name = "sofamesh.filters.network.bolt_proxy"
        tc = {
            "@type": "type.googleapis.com/sofamesh.filters.network.bolt_proxy.v1.BoltProxy",
            "stat_prefix": "bench",
            "route_config": routes,
            "bolt_filters": [*filters, {"name": "sofamesh.filters.bolt.router"}],
        }
    else:
        name = "envoy.filters.network.dubbo_proxy"
        tc = {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.dubbo_proxy.v3"
            ".DubboProxy",
            "stat_prefix": "bench",
            "route_config": routes,
            "dubbo_filters": [*filters, {"name": "envoy.filters.dubbo.router"}],
        }
    listener = {
        "name": "rpc",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": name, "typed_config": tc}]}],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [listener],
            "clusters": [cluster("upstream", up), cluster("zipkin", zipkin or free_port())],
        },
    }


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


LUA = False  # --lua
EXAMPLES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "envoy-examples"


def _lua_route(cfg: dict) -> None:
    """The route's cluster becomes the lua-cluster-specifier example's inline Lua plugin."""
    import yaml

    ex = yaml.safe_load((EXAMPLES / "lua-cluster-specifier_envoy.yaml").read_text())
    hcm = ex["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    plugin = hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    plugin = plugin["inline_cluster_specifier_plugin"]
    tc = plugin["extension"]["typed_config"]
    tc["source_code"]["inline_string"] = tc["source_code"]["inline_string"].replace(
        "example_cluster", "upstream"
    )
    tc["default_cluster"] = "upstream"
    ours = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    route = ours["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    del route["cluster"]
    route["inline_cluster_specifier_plugin"] = plugin


def count(
    n: int,
    proto: str,
    src: str | None,
    rpc_tracing: float | None = None,
    mixer: str | None = None,
    tracing: float | None = None,
    keep: str | None = None,
) -> int:
    """Instructions of one proxy run serving n requests (callgrind's total Ir); `keep`: a
    path to copy callgrind's profile to (for callgrind_annotate)."""
    rpc = proto in ("bolt", "dubbo")
    ls, up = _rpc_upstream(proto) if rpc else _upstream()
    zls, zport = _collector() if rpc and rpc_tracing is not None else (None, 0)
    port, admin = free_port(), free_port()
    with tempfile.TemporaryDirectory() as td:
        boot = Path(td) / "b.json"
        mixer_proc = None
        if rpc:
            cfg = _rpc_bootstrap(proto, port, admin, up, rpc_tracing, zport)
        elif mixer:
            mixer_proc, mixer_port = _start_mixer(td)
            cfg = _mixer_bootstrap(port, admin, up, mixer, mixer_port)
        else:
            cfg = bootstrap(port, admin, up, 0, tracing)
            if LUA:
                _lua_route(cfg)
        boot.write_text(json.dumps(cfg))
        out = Path(td) / "cg.out"
        env = dict(os.environ)
        if src:
            env["PYTHONPATH"] = str(Path(src) / "src")
        argv = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            "--dump-instr=no",
            sys.executable,
            "-m",
            "sofamesh",
            "proxy",
            "-c",
            str(boot),
            "--concurrency",
            "1",
            "-l",
            "error",
        ]
        p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 300
            while not _accepts(port):
                if p.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(p.stderr.read().decode(errors="replace")[-3000:])
                time.sleep(0.5)
            if rpc:
                _rpc_client(proto, port, n)
            else:
                (_h2_client if proto == "h2" else _h1_client)(port, n)
        finally:
            p.terminate()
            err = p.communicate(timeout=300)[1].decode(errors="replace")
            ls.close()
            if zls is not None:
                zls.close()
            if mixer_proc is not None:
                mixer_proc.terminate()
                mixer_proc.wait()
        if keep:
            shutil.copyfile(out, f"{keep}.{n}")
        m = re.search(r"Collected : (\d+)", err)
        if m:
            return int(m.group(1))
        text = out.read_text(errors="replace")
        m = re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE)
        if not m:
            raise RuntimeError("no callgrind total:\n" + err[-3000:])
        return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--proto", choices=("h1", "h2", "bolt", "dubbo"), default="h1")
    ap.add_argument("--rpc-tracing", type=float, help="bolt/dubbo: RPC tracing at PCT %%")
    ap.add_argument("--src", help="another source tree's build (before/after)")
    ap.add_argument(
        "--tracing",
        type=float,
        help="h1/h2: HCM tracing (Zipkin) at PCT %% random sampling (spans to the upstream)",
    )
    ap.add_argument(
        "--mixer",
        choices=("all", "rbac", "rlqs", "als"),
        help="with the mixer filters of http1_e2e.py --mixer (all), or one of them",
    )
    ap.add_argument("--lua", action="store_true", help="h1/h2: route through the Lua example")
    ap.add_argument("--profile", help="keep callgrind's profiles as PROFILE.<N> and PROFILE.<5N>")
    a = ap.parse_args()
    global LUA
    LUA = a.lua
    n1, n2 = a.requests, 5 * a.requests
    i1 = count(n1, a.proto, a.src, a.rpc_tracing, a.mixer, a.tracing, a.profile)
    i2 = count(n2, a.proto, a.src, a.rpc_tracing, a.mixer, a.tracing, a.profile)
    per = (i2 - i1) / (n2 - n1)
    label = a.proto + (f"+mixer:{a.mixer}" if a.mixer else "")
    label += f"+tracing:{a.tracing:g}%" if a.tracing is not None else ""
    label += "+lua" if a.lua else ""
    print(
        f"{label}: {per:,.0f} instructions per request "
        f"({i1:,} for {n1}, {i2:,} for {n2}){' [' + a.src + ']' if a.src else ''}"
    )


if __name__ == "__main__":
    main()
