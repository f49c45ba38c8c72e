"""The mixer's web page in a real headless Chromium: traffic through a sofamesh sidecar and an
Envoy 1.40 sidecar, reported over the access log service, shows up as the services, edges,
counts, error rates and quota buckets the page draws, and the open page follows new traffic
without a reload."""

from __future__ import annotations

import http.client
import json

import pytest

from tests.conftest import envoy_binary, sofamesh_command
from tests.integration.mixer.conftest import http_bootstrap, wait_metric
from tests.integration.mixer.test_mixer_envoy import als_logger, rlqs_filter
from tests.support.browser import HeadlessChromium
from tests.support.envoy import ProxyProcess
from tests.support.http_upstream import RecordingUpstream
from tests.support.servers import free_ports


@pytest.fixture
def upstream():
    with RecordingUpstream(["a", "b"]) as u:
        yield u


def _sidecar(node: str, upstream_name: str, app: int, mixer: int, **kw) -> dict:
    """A sidecar of service `node` whose one route calls the service `upstream_name`."""
    admin, listen = free_ports(2)
    b = http_bootstrap(
        node=node,
        admin=admin,
        listen=listen,
        app=app,
        mixer=mixer,
        access_log=[als_logger("0.1s")],
        **kw,
    )
    text = json.dumps(b).replace('"app"', json.dumps(upstream_name))
    return json.loads(text)


def _listen(p: ProxyProcess) -> int:
    return p.bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"][
        "port_value"
    ]


def _send(port: int, n: int, status: int = 200) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        for _ in range(n):
            conn.request("GET", "/", headers={"x-upstream-action": f"status={status}"})
            r = conn.getresponse()
            r.read()
            assert r.status == status
    finally:
        conn.close()


ROWS = """Object.fromEntries([...document.querySelectorAll('#edges tbody tr')].map(tr =>
  [tr.dataset.edge, Object.fromEntries([...tr.querySelectorAll('td')].map(td =>
    [td.dataset.col, td.textContent]))]))"""


def _rows_when(page, cond: str, timeout: float = 30.0) -> dict:
    """The edge table's rows once `cond` (JS over `rows`) holds."""
    return page.wait_for(f"(() => {{ const rows = {ROWS}; return ({cond}) ? rows : null; }})()")


def test_page_shows_the_mesh_and_follows_traffic(tmp_path, mixer_factory, upstream):
    mixer = mixer_factory("quotas:\n  - bucket: {name: checkout}\n    requests_per_second: 500\n")
    front = _sidecar("productpage", "reviews", upstream.ports["a"], mixer.grpc_port)
    # sofamesh's gRPC client speaks HTTP/2 itself; its HTTP pools do not yet (issue 9)
    for c in front["static_resources"]["clusters"]:
        c.pop("typed_extension_protocol_options", None)
    mid = _sidecar(
        "reviews",
        "ratings",
        upstream.ports["b"],
        mixer.grpc_port,
        http_filters=[rlqs_filter()],
    )
    sofamesh = ProxyProcess.sofamesh(sofamesh_command(), front, tmp_path / "productpage").start()
    envoy = ProxyProcess.envoy(envoy_binary(), mid, tmp_path / "reviews").start()
    try:
        _send(_listen(sofamesh), 30)
        _send(_listen(envoy), 20)
        _send(_listen(envoy), 5, status=503)
        assert wait_metric(mixer, "istio_requests_total", 55, timeout=20) == 55
        with HeadlessChromium(tmp_path) as browser:
            page = browser.open(f"http://127.0.0.1:{mixer.http_port}/")
            rows = _rows_when(
                page,
                "rows['productpage \u2192 reviews'] && rows['reviews \u2192 ratings']"
                " && rows['reviews \u2192 ratings'].requests === '25'",
            )
            front_row = rows["productpage \u2192 reviews"]
            mid_row = rows["reviews \u2192 ratings"]
            assert set(rows) == {"productpage \u2192 reviews", "reviews \u2192 ratings"}
            assert front_row["requests"] == "30"
            assert front_row["errors"] == "0.0%"
            assert front_row["codes"] == "200: 30"
            assert front_row["reporters"] == "productpage"
            assert mid_row["errors"] == "20.0%"  # 5 of 25 were 503s
            assert mid_row["codes"] == "200: 20, 503: 5"
            assert float(front_row["rps"]) > 0
            assert mid_row["p50"].endswith("ms") and mid_row["p99"].endswith("ms")
            # the graph: three services, two edges, coloured by their error rates
            nodes = page.eval(
                "[...document.querySelectorAll('#graph g.node')].map(g => g.dataset.node).sort()"
            )
            assert nodes == ["productpage", "ratings", "reviews"]
            health = page.eval(
                "Object.fromEntries([...document.querySelectorAll('#graph path.edge')]"
                ".map(p => [p.dataset.edge, p.dataset.health]))"
            )
            assert health == {
                "productpage \u2192 reviews": "ok",
                "reviews \u2192 ratings": "bad",
            }
            # callers to the left of the services they call
            xs = page.eval(
                "Object.fromEntries([...document.querySelectorAll('#graph g.node')].map(g =>"
                " [g.dataset.node, g.getBoundingClientRect().left]))"
            )
            assert xs["productpage"] < xs["reviews"] < xs["ratings"]
            assert page.eval("document.getElementById('n-requests').textContent") == "55"
            # quota use: the Envoy sidecar's RLQS bucket with its limit and its share
            bucket = page.wait_for(
                "(() => { const tr = document.querySelector('#quota tr.bucket');"
                " return tr && tr.querySelector('[data-col=assigned]').textContent === '500'"
                " ? tr.textContent : null; })()"
            )
            assert "name=checkout" in bucket and "500" in bucket
            assert page.eval("document.querySelectorAll('#quota tr[data-client]').length") == 1

            # more traffic: the open page follows without a reload
            _send(_listen(sofamesh), 15)
            _send(_listen(envoy), 10, status=503)
            rows = _rows_when(
                page,
                "rows['productpage \u2192 reviews']?.requests === '45'"
                " && rows['reviews \u2192 ratings']?.requests === '35'",
            )
            assert rows["reviews \u2192 ratings"]["codes"] == "200: 20, 503: 15"
            assert page.eval("document.getElementById('n-requests').textContent") == "80"
            assert page.errors == []
    finally:
        sofamesh.stop()
        envoy.stop()
