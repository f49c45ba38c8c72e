"""Triple (Dubbo 3's gRPC-compatible protocol over HTTP/2) through the proxy: calls from
Apache's dubbo-python client to dubbo-python providers, routed by service and method, the
same through real Envoy 1.40 and `sofamesh proxy`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT, free_port
from tests.integration.registries.test_dubbo_python_interop import DubboProvider

from .conftest import _cluster

pytestmark = pytest.mark.timeout(180)

GREETER = "org.apache.dubbo.samples.Greeter"
BILLING = "org.apache.dubbo.samples.Billing"


def _call(port: int, service: str, method: str, message: str) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.support.dubbo_peer",
            "call",
            f"127.0.0.1:{port}",
            service,
            method,
            message,
        ],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    lines = [
        ln
        for ln in out.stdout.decode(errors="replace").splitlines()
        if ln.startswith(("RESULT", "ERROR"))
    ]
    assert lines, (out.stdout[-2000:], out.stderr[-2000:])
    return lines[-1]


def test_triple_calls_routed_by_service_and_method(proxies, tmp_path):
    greeter_port, billing_port = free_port(), free_port()
    greeter = DubboProvider("-", greeter_port, GREETER, tmp_path / "greeter.log")
    billing = DubboProvider("-", billing_port, BILLING, tmp_path / "billing.log")
    try:
        routes = [
            # by service and method: only Greeter/greet is open
            {"match": {"path": f"/{GREETER}/greet", "grpc": {}}, "route": {"cluster": "greeter"}},
            # by service: any method of Billing
            {"match": {"prefix": f"/{BILLING}/", "grpc": {}}, "route": {"cluster": "billing"}},
        ]
        p = proxies(
            routes=routes,
            clusters=[
                _cluster("greeter", greeter_port, True),
                _cluster("billing", billing_port, True),
            ],
        )
        assert _call(p.port, GREETER, "greet", "triple") == "RESULT b'hello triple'"
        assert _call(p.port, BILLING, "greet", "bill") == "RESULT b'hello bill'"
        # a method the routes do not name: the proxy's own gRPC reply (no route ->
        # UNIMPLEMENTED), which the Dubbo client raises
        err = _call(p.port, GREETER, "other", "x")
        assert err.startswith("ERROR"), err
        assert "UNIMPLEMENTED" in err, err
        s = p.stats()
        assert s["cluster.greeter.upstream_rq_200"] == 1
        assert s["cluster.billing.upstream_rq_200"] == 1
        assert s["http.ingress.no_route"] == 1
    finally:
        greeter.stop()
        billing.stop()
