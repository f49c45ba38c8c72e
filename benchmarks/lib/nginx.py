"""The fixed upstream for HTTP benchmarks: Debian's nginx, one worker process, a small static body."""

from __future__ import annotations

import shutil
from pathlib import Path

from .proc import Proc, http_get

BODY = "hello from the benchmark upstream\n"

_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 4096; multi_accept on; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "{body}";
        }}
    }}
{h2_server}}}
"""

# A second server speaking h2c with prior knowledge (nginx's `listen ... http2` without TLS):
# the HTTP/2 upstream of benchmarks/h2_bench.py, same body; and under GRPC_PATH a canned gRPC
# unary reply (a fast gRPC upstream): status 200, content-type application/grpc, the
# length-prefixed GRPC_MESSAGE as a static file, trailer grpc-status 0. A POST to a static file
# is nginx's 405, which error_page turns into an internal GET of the same file, answered 200.
_H2_SERVER = """\
    server {{
        listen 127.0.0.1:{port} http2 reuseport backlog=4096;
        http2_max_concurrent_streams 1024;
        location / {{
            default_type text/plain;
            return 200 "{body}";
        }}
        location /{grpc_service}/ {{
            root {dir}/www;
            default_type application/grpc;
            etag off;
            add_trailer grpc-status 0;
            error_page 405 =200 $uri;
        }}
    }}
"""
GRPC_SERVICE = "bench.Fast"
GRPC_PATH = f"/{GRPC_SERVICE}/Echo"
GRPC_MESSAGE = b"sofamesh-h2-bench-012345"


def nginx_binary() -> str:
    path = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(path).exists():
        raise RuntimeError("nginx not found: run `bash ci/install.d/bench.sh` (as root)")
    return path


def start(workdir: Path, port: int, core: int | None, h2_port: int | None = None) -> Proc:
    """nginx serving HTTP/1.1 on port and, with h2_port, h2c (prior knowledge) on h2_port."""
    conf = workdir / "nginx.conf"
    body = BODY.replace("\n", "\\n")
    h2 = ""
    if h2_port:
        h2 = _H2_SERVER.format(port=h2_port, body=body, dir=workdir, grpc_service=GRPC_SERVICE)
        reply = workdir / "www" / GRPC_PATH.lstrip("/")
        reply.parent.mkdir(parents=True, exist_ok=True)
        reply.write_bytes(b"\0" + len(GRPC_MESSAGE).to_bytes(4, "big") + GRPC_MESSAGE)
    conf.write_text(_CONF.format(dir=workdir, port=port, body=body, h2_server=h2))
    proc = Proc(
        "nginx", [nginx_binary(), "-p", str(workdir), "-c", str(conf)], workdir / "nginx.log", core
    ).start()
    proc.wait_ready(lambda: http_get(port)[0] == 200, timeout=10)
    return proc
