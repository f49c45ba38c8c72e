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
    return page.wait_for(
        f"(() => {{ const rows = {ROWS}; return ({cond}) ? rows : null; }})()", timeout
    )


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


# a shop of 21 services and 24 calls (one cycle: payment calls back into checkout)
SHOP = [
    ("ingress", "frontend"), ("frontend", "productpage"), ("productpage", "reviews"),
    ("productpage", "details"), ("reviews", "ratings"), ("frontend", "cart"),
    ("cart", "checkout"), ("checkout", "payment"), ("checkout", "shipping"),
    ("checkout", "email"), ("checkout", "currency"), ("frontend", "recommendation"),
    ("recommendation", "catalog"), ("frontend", "ads"), ("cart", "redis-cart"),
    ("payment", "fraud-check"), ("shipping", "outbound|80||quote.shop.svc.cluster.local"),
    ("frontend", "catalog"), ("catalog", "mysql"), ("ratings", "mongodb"),
    ("reviews", "catalog"), ("email", "smtp-relay"), ("ads", "catalog"), ("payment", "checkout"),
]  # fmt: skip


def _report(grpc_port: int, calls: list[tuple[str, str, str]]) -> None:
    """Access log entries over Envoy's ALS wire, one stream per calling service."""
    import grpc
    from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc

    by_source: dict[str, list[tuple[str, str]]] = {}
    for src, dst, code in calls:
        by_source.setdefault(src, []).append((dst, code))
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
        stub = als_pb2_grpc.AccessLogServiceStub(ch)
        for src, entries in by_source.items():
            msg = als_pb2.StreamAccessLogsMessage()
            msg.identifier.node.id = f"{src}-0"
            msg.identifier.node.cluster = src
            msg.identifier.log_name = "mesh"
            for dst, code in entries:
                e = msg.http_logs.log_entry.add()
                e.common_properties.upstream_cluster = dst
                e.common_properties.duration.FromMilliseconds(3)
                e.response.response_code.value = int(code)
            stub.StreamAccessLogs(iter([msg]), timeout=10)


def test_page_lays_out_twenty_services_readably(tmp_path, mixer_factory):
    mixer = mixer_factory()
    calls = [(s, d, "200") for s, d in SHOP for _ in range(10)]
    calls += [("checkout", "payment", "503")] * 5
    _report(mixer.grpc_port, calls)
    with HeadlessChromium(tmp_path) as browser:
        page = browser.open(f"http://127.0.0.1:{mixer.http_port}/")
        page.call(
            "Emulation.setDeviceMetricsOverride",
            width=1400,
            height=1000,
            deviceScaleFactor=1,
            mobile=False,
        )
        page.wait_for("document.querySelectorAll('#edges tbody tr').length === 24")
        boxes = page.wait_for(
            "(() => { const g = [...document.querySelectorAll('#graph g.node')];"
            " return g.length === 21 ? Object.fromEntries(g.map(n => { const r ="
            " n.querySelector('rect').getBoundingClientRect();"
            " return [n.dataset.node, [r.left, r.top, r.right, r.bottom]]; })) : null; })()"
        )
        assert "quote.shop" in boxes  # Istio's outbound|port||host named by its host
        svg = page.eval(
            "(() => { const r = document.getElementById('graph').getBoundingClientRect();"
            " return [r.left, r.top, r.right, r.bottom]; })()"
        )
        names = sorted(boxes)
        for i, a in enumerate(names):
            ax0, ay0, ax1, ay1 = boxes[a]
            # inside the drawing, and no two services on top of each other
            assert svg[0] <= ax0 and ax1 <= svg[2] and svg[1] <= ay0 and ay1 <= svg[3], a
            for b in names[i + 1 :]:
                bx0, by0, bx1, by1 = boxes[b]
                assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, (a, b)
        # every call but the one closing the cycle goes left to right
        leftward = [
            (s, d)
            for s, d in SHOP
            if boxes[s][0] >= boxes[d.split("|")[-1].removesuffix(".svc.cluster.local")][0]
        ]
        assert leftward == [("payment", "checkout")]
        # each edge drawn once; the one with 5 errors in 15 red, the others green
        health = page.eval(
            "[...document.querySelectorAll('#graph path.edge')].map(p => p.dataset.health)"
        )
        assert sorted(health) == ["bad"] + ["ok"] * 23
        # clicking a service focuses on its calls: the table keeps only them
        page.eval(
            "document.querySelector('#graph g.node[data-node=checkout]')"
            ".dispatchEvent(new MouseEvent('click', {bubbles: true}))"
        )
        focused = page.wait_for(
            "(() => { const r = [...document.querySelectorAll('#edges tbody tr')]"
            ".map(tr => tr.dataset.edge); return r.length < 24 ? r.sort() : null; })()"
        )
        assert focused == sorted(f"{s} \u2192 {d}" for s, d in SHOP if "checkout" in (s, d))
        assert page.errors == []
