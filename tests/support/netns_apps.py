"""The applications of the transparent-interception test, run inside its network namespace
(`ip netns exec NS python -m tests.support.netns_apps WEB GRPC TCP`, each HOST:PORT): an
HTTP/1.1 server answering with what it received, a gRPC server (generic handler
/test.Echo/Echo: "echo:" + the request bytes, and the request's metadata keys it saw) and a
TCP echo. Prints "ready" once all three listen."""

from __future__ import annotations

import socket
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.tcp_echo import EchoHandler, ThreadedServer


def _hp(s: str) -> tuple[str, int]:
    h, _, p = s.rpartition(":")
    return h, int(p)


class _Web(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # head and body leave in two writes: without TCP_NODELAY the second waits for the
    # caller's delayed ACK (40 ms a request on a kept-alive connection)
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        seen = [f"path={self.path}", f"peer={self.client_address[0]}"]
        for k in ("host", "x-forwarded-proto", "x-envoy-expected-rq-timeout-ms", "x-request-id"):
            v = self.headers.get(k)
            seen.append(f"{k}={'<id>' if k == 'x-request-id' and v else v}")
        body = ("\n".join(seen) + "\n").encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a: object) -> None:
        pass


def main() -> None:
    import grpc

    web, rpc, tcp = (_hp(a) for a in sys.argv[1:4])
    httpd = ThreadingHTTPServer(web, _Web)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    echo = ThreadedServer(tcp, EchoHandler)
    threading.Thread(target=echo.serve_forever, daemon=True).start()

    def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
        keys = sorted(k for k, _ in context.invocation_metadata() if not k.startswith(":"))
        return b"echo:" + request + b" saw:" + ",".join(keys).encode()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(handle)}
            ),
        )
    )
    server.add_insecure_port(f"{rpc[0]}:{rpc[1]}")
    server.start()
    for addr in (web, rpc, tcp):  # listening
        socket.create_connection(addr, timeout=2).close()
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    server.stop(0)


if __name__ == "__main__":
    main()
