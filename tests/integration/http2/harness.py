"""Module-scoped proxies for the HTTP/2 conformance, differential and attack tests: one Envoy
1.40 and one `sofamesh proxy` per module, on the same bootstrap (conftest.bootstrap), each in
front of its own gRPC echo server (cluster "grpc", HTTP/2) and HTTP/1.1 recording upstream
(cluster "h1").

    @pytest.fixture(scope="module", params=KINDS)
    def proxy(request, tmp_path_factory):
        yield from started(request.param, tmp_path_factory, hcm={...})
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tests.conftest import envoy_binary, sofamesh_command
from tests.support.envoy import ProxyProcess
from tests.support.http_upstream import RecordingUpstream

from .conftest import EchoServer, Running, _distinct, bootstrap

KINDS = ["envoy", "sofamesh"]


def start(kind: str, tmp: Any, extra_args: list[str] | None = None, **kw: Any) -> Running:
    """`extra_args`: command-line flags both Envoy and sofamesh take (--drain-strategy...)."""
    echo = EchoServer().start()
    upstream = RecordingUpstream(["a"]).start()
    for attempt in range(3):
        port, admin, dead = _distinct(3)
        boot = bootstrap(port, admin, echo.port, upstream.ports["a"], dead, **kw)
        work = tmp.mktemp(f"{kind}-{attempt}")
        if kind == "envoy":
            proc = ProxyProcess.envoy(envoy_binary(), boot, work)
        else:
            proc = ProxyProcess.sofamesh(sofamesh_command(), boot, work)
        proc.argv += extra_args or []
        try:
            proc.start()
        except RuntimeError as e:
            proc.stop()
            if attempt < 2 and "in use" in str(e):
                continue
            echo.stop()
            upstream.stop()
            raise
        return Running(kind, port, admin, proc, echo, upstream)
    raise AssertionError("unreachable")


def started(kind: str, tmp: Any, **kw: Any) -> Iterator[Running]:
    r = start(kind, tmp, **kw)
    try:
        yield r
    finally:
        r.proc.stop()
        r.echo.stop()
        r.upstream.stop()


def alive(r: Running) -> None:
    """The process did not die under the test (a crash would otherwise look like a close)."""
    assert r.proc.proc is not None and r.proc.proc.poll() is None, r.proc.log_text()
