"""Small threaded TCP servers for tests: a raw echo ("echo:" + what arrived) and an HTTP/1.1
server that answers each request with the values of one request header it got."""

from __future__ import annotations

import socketserver


class ThreadedServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class EchoHandler(socketserver.BaseRequestHandler):
    """Sends back "echo:" + each chunk received, until the peer closes."""

    def handle(self) -> None:
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.request.sendall(b"echo:" + data)


def header_echo(name: bytes, prefix: bytes = b"") -> type[socketserver.BaseRequestHandler]:
    """An HTTP/1.1 handler answering each (body-less) request with `prefix` and the values of
    request header `name` it got, one a line, or `-` without one."""

    class HeaderEcho(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            buf = b""
            while True:
                data = self.request.recv(65536)
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    got = [
                        line.partition(b":")[2].strip()
                        for line in head.split(b"\r\n")[1:]
                        if line.partition(b":")[0].strip().lower() == name
                    ]
                    body = prefix + (b"\n".join(got) or b"-")
                    self.request.sendall(
                        b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
                    )

    return HeaderEcho
