"""The `envoy.stat_sinks.metrics_service` stats sink through Envoy 1.40 and sofamesh: requests
become istio_requests_total and istio_request_duration_milliseconds in `sofamesh mixer` from
stats flushes alone (no access log), both proxies send the same messages to a recording
metrics service, report bytes do not grow with requests, and a metrics service that is down
or hanging changes nothing for the traffic."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
from concurrent import futures
from typing import Self

import grpc
import pytest

from sofamesh.proxy.metrics_sink import messages
from tests.conftest import envoy_binary, sofamesh_command
from tests.integration.mixer.conftest import http_bootstrap, wait_metric
from tests.support.envoy import ProxyProcess, admin_get, admin_port
from tests.support.http_upstream import RecordingUpstream
from tests.support.servers import free_ports

SINK = "type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig"
Message, Response, _ = messages()
COUNTER, GAUGE, SUMMARY, HISTOGRAM = 0, 1, 2, 4


class RecordingMetrics:
    """A metrics service that keeps every StreamMetricsMessage and the bytes it received."""

    def __init__(self) -> None:
        self.messages: list = []
        self.bytes = 0
        self.sizes: list[int] = []
        self._cond = threading.Condition()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "envoy.service.metrics.v3.MetricsService",
                    {
                        "StreamMetrics": grpc.stream_unary_rpc_method_handler(
                            self._stream,
                            request_deserializer=self._decode,
                            response_serializer=Response.SerializeToString,
                        )
                    },
                ),
            )
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def _decode(self, raw: bytes):
        with self._cond:
            self.bytes += len(raw)
            self.sizes.append(len(raw))
        return Message.FromString(raw)

    def _stream(self, request_iterator, context):
        for m in request_iterator:
            with self._cond:
                self.messages.append(m)
                self._cond.notify_all()
        return Response()

    def values(self, name: str, kind: int, labels: dict | None = None) -> list[tuple[int, object]]:
        """(timestamp_ms, metric) of every metric of the family `name` of type `kind` (whose
        labels are `labels`, if given), in the order received."""
        out = []
        with self._cond:
            for msg in self.messages:
                for fam in msg.envoy_metrics:
                    if fam.name != name or fam.type != kind:
                        continue
                    for m in fam.metric:
                        got = {lp.name: lp.value for lp in m.label}
                        if labels is None or got == labels:
                            out.append((m.timestamp_ms, m))
        return out

    def wait(self, pred, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while True:
            got = pred()
            if got or time.monotonic() > deadline:
                return got
            with self._cond:
                self._cond.wait(0.2)

    def __enter__(self) -> Self:
        self.server.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop(0)


@pytest.fixture
def upstream():
    with RecordingUpstream(["a"]) as u:
        yield u


def _bootstrap(node: str, app: int, sink_port: int, flush: str = "0.5s", **sink) -> dict:
    admin, listen = free_ports(2)
    b = http_bootstrap(node=node, admin=admin, listen=listen, app=app, mixer=sink_port)
    b["stats_flush_interval"] = flush
    b["stats_sinks"] = [
        {
            "name": "envoy.stat_sinks.metrics_service",
            "typed_config": {
                "@type": SINK,
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": "mixer"}},
                **sink,
            },
        }
    ]
    return b


def _proxy(kind: str, b: dict, workdir) -> ProxyProcess:
    if kind == "envoy":
        return ProxyProcess.envoy(envoy_binary(), b, workdir / kind)
    return ProxyProcess.sofamesh(sofamesh_command(), b, workdir / kind)


def _listen(b: dict) -> int:
    return b["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]


def _send(port: int, n: int, status: int = 200) -> float:
    """`n` GETs on one kept-alive connection, each answered `status` by the upstream;
    returns the seconds they took."""
    headers = {"x-upstream-action": f"status={status}"} if status != 200 else {}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    t0 = time.monotonic()
    try:
        for _ in range(n):
            conn.request("GET", "/x", headers=headers)
            r = conn.getresponse()
            r.read()
            assert r.status == status
    finally:
        conn.close()
    return time.monotonic() - t0


@pytest.mark.parametrize("kind", ["envoy", "sofamesh"])
def test_requests_counted_by_the_mixer_from_stats(kind, tmp_path, upstream, mixer_factory):
    mixer = mixer_factory()
    b = _bootstrap(kind, upstream.ports["a"], mixer.grpc_port, histogram_emit_mode="HISTOGRAM")
    with _proxy(kind, b, tmp_path):
        _send(_listen(b), 25)
        _send(_listen(b), 7, status=404)
        lab = {"reporter": kind, "source": kind, "destination": "app"}
        assert wait_metric(mixer, "istio_requests_total", 25, 30, response_code="200", **lab) == 25
        assert wait_metric(mixer, "istio_requests_total", 7, 30, response_code="404", **lab) == 7
        n = wait_metric(mixer, "istio_request_duration_milliseconds_count", 32, 30, **lab)
        assert n == 32
        inf = mixer.metric("istio_request_duration_milliseconds_bucket", le="+Inf", **lab)
        assert inf == 32
        # more flushes of the same cumulative counters add nothing
        time.sleep(1.5)
        assert mixer.metric("istio_requests_total", response_code="200", **lab) == 25
        _, doc = mixer.get("/api/graph")
        edges = {(e["source"], e["destination"]): e for e in json.loads(doc)["edges"]}
        assert edges[(kind, "app")]["requests"] == 32
        assert edges[(kind, "app")]["codes"] == {"200": 25, "404": 7}
        _, raw = mixer.get("/metrics/reported")
        assert f'envoy_cluster_app_upstream_rq_200{{reporter="{kind}"}} 25' in raw, raw


def _run(kind: str, tmp_path, app: int, n: int, **sink) -> RecordingMetrics:
    rec = RecordingMetrics().__enter__()
    b = _bootstrap(kind, app, rec.port, **sink)
    try:
        with _proxy(kind, b, tmp_path / str(len(sink))):
            _send(_listen(b), n)
            labels = sink.get("emit_tags_as_labels", False)
            name, lab = (
                ("cluster.upstream_rq", {"envoy.cluster_name": "app", "envoy.response_code": "200"})
                if labels
                else ("cluster.app.upstream_rq_200", {})
            )

            def done():
                vals = [m.counter.value for _, m in rec.values(name, COUNTER, lab)]
                total = sum(vals) if sink.get("report_counters_as_deltas") else max(vals or [0])
                return total >= n

            assert rec.wait(done), kind
            time.sleep(1.2)  # a flush or two more
    finally:
        rec.__exit__()
    return rec


def _shape(rec: RecordingMetrics, labels: bool, deltas: bool) -> dict:
    first = rec.messages[0]
    if labels:
        rq = ("cluster.upstream_rq", {"envoy.cluster_name": "app", "envoy.response_code": "200"})
        xx = (
            "cluster.upstream_rq_xx",
            {"envoy.cluster_name": "app", "envoy.response_code_class": "2"},
        )
        tm = ("cluster.upstream_rq_time", {"envoy.cluster_name": "app"})
        total = ("cluster.upstream_rq_total", {"envoy.cluster_name": "app"})
    else:
        rq = ("cluster.app.upstream_rq_200", {})
        xx = ("cluster.app.upstream_rq_2xx", {})
        tm = ("cluster.app.upstream_rq_time", {})
        total = ("cluster.app.upstream_rq_total", {})

    def counter(fam):
        vals = [m.counter.value for _, m in rec.values(fam[0], COUNTER, fam[1])]
        return sum(vals) if deltas else max(vals)

    def of_app(fam, m) -> bool:
        if labels:
            return any(lp.name == "envoy.cluster_name" and lp.value == "app" for lp in m.label)
        return fam.name.startswith("cluster.app.")

    families = {
        (f.name, f.type, tuple(lp.name for lp in f.metric[0].label))
        for msg in rec.messages
        for f in msg.envoy_metrics
        if of_app(f, f.metric[0])
    }
    summaries = [m for _, m in rec.values(tm[0], SUMMARY, tm[1])]
    hists = [m for _, m in rec.values(tm[0], HISTOGRAM, tm[1])]
    return {
        "families": families,
        "identifier_first": first.HasField("identifier") and bool(first.identifier.node.id),
        "identifier_later": any(m.HasField("identifier") for m in rec.messages[1:]),
        "upstream_rq_200": counter(rq),
        "upstream_rq_2xx": counter(xx),
        "upstream_rq_total": counter(total),
        "summary_samples": sum(m.summary.sample_count for m in summaries),
        "summary_quantiles": [q.quantile for q in summaries[0].summary.quantile],
        "histogram_samples": sum(m.histogram.sample_count for m in hists),
        "histogram_bounds": [b.upper_bound for b in hists[0].histogram.bucket] if hists else [],
        "histogram_last_bucket": [
            m.histogram.bucket[-1].cumulative_count == m.histogram.sample_count for m in hists
        ][-1:],
        "timestamped": all(
            m.timestamp_ms > 1_700_000_000_000
            for msg in rec.messages
            for fam in msg.envoy_metrics
            for m in fam.metric
        ),
        "one_metric_per_family": all(
            len(fam.metric) == 1 for msg in rec.messages for fam in msg.envoy_metrics
        ),
    }


@pytest.mark.parametrize(
    "labels,deltas", [(False, False), (True, True)], ids=["names-cumulative", "labels-deltas"]
)
def test_sofamesh_sends_what_envoy_sends(labels, deltas, tmp_path, upstream):
    sink = {
        "emit_tags_as_labels": labels,
        "report_counters_as_deltas": deltas,
        "histogram_emit_mode": "SUMMARY_AND_HISTOGRAM",
    }
    shapes = {}
    for kind in ("envoy", "sofamesh"):
        rec = _run(kind, tmp_path / kind, upstream.ports["a"], 40, **sink)
        assert rec.messages[0].identifier.node.id == kind
        shapes[kind] = _shape(rec, labels, deltas)
    envoy, ours = shapes["envoy"], shapes["sofamesh"]
    assert envoy["upstream_rq_200"] == 40 and envoy["histogram_samples"] == 40
    assert envoy["identifier_first"] and not envoy["identifier_later"]
    # the cluster's families (name, type, label names): sofamesh sends a subset of Envoy's
    # (Envoy has more cluster stats: external.* sub-scopes, circuit breaker gauges, ...),
    # including every one the mixer reads
    fams = ours.pop("families")
    assert fams <= envoy.pop("families"), fams
    core = (
        {"upstream_rq", "upstream_rq_xx", "upstream_rq_total", "upstream_rq_time"}
        if labels
        else {"upstream_rq_200", "upstream_rq_2xx", "upstream_rq_total", "upstream_rq_time"}
    )
    names = {n.removeprefix("cluster.app.").removeprefix("cluster.") for n, _, _ in fams}
    assert core <= names, names
    assert ours == envoy


def test_batch_size_cuts_a_flush(tmp_path, upstream):
    counts = {}
    for kind in ("envoy", "sofamesh"):
        rec = _run(kind, tmp_path / kind, upstream.ports["a"], 5, batch_size=20)
        sizes = [len(m.envoy_metrics) for m in rec.messages]
        assert max(sizes) == 20, (kind, sizes)
        assert sum(1 for s in sizes if s == 20) > 1, (kind, sizes)  # a flush in several
        counts[kind] = sizes
    # only the first message of the stream names the node, in both
    assert all(counts.values())


def test_report_bytes_grow_with_series_not_requests(tmp_path, upstream):
    with RecordingMetrics() as rec:
        b = _bootstrap("sofamesh", upstream.ports["a"], rec.port)
        with _proxy("sofamesh", b, tmp_path):

            def flush_after(n: int) -> int:
                """Bytes of the first whole flush whose upstream_rq_200 is n."""
                msgs = rec.wait(
                    lambda: [
                        (i, m)
                        for i, m in enumerate(list(rec.messages))
                        if any(
                            f.name == "cluster.app.upstream_rq_200"
                            and f.metric[0].counter.value == n
                            for f in m.envoy_metrics
                        )
                        and i > 0
                    ]
                )
                assert msgs, n
                i = msgs[0][0]
                return rec.sizes[i]

            _send(_listen(b), 100)
            small = flush_after(100)
            _send(_listen(b), 1900)
            large = flush_after(2000)
            total_after = rec.bytes
            time.sleep(1.2)
            idle = rec.bytes - total_after
    print(f"flush bytes after 100 requests {small}, after 2000 {large}; idle 1.2 s {idle}")
    # 20x the requests, about the same flush: a few digits longer at most
    assert large < small * 1.05 + 64, (small, large)
    assert idle < 4 * large  # ~2 flushes a second whatever was served before
    assert small < 40_000


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) the process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timed(p: ProxyProcess, port: int, n: int) -> tuple[float, float]:
    """(wall seconds, the proxy's CPU seconds) for `n` requests."""
    c0 = _cpu(p.pid)
    wall = _send(port, n)
    return wall, _cpu(p.pid) - c0


def _least(p: ProxyProcess, port: int, n: int, runs: int = 3) -> tuple[float, float]:
    """`_timed` `runs` times: the least wall and the least CPU seconds (other work on a shared
    machine only adds to either)."""
    got = [_timed(p, port, n) for _ in range(runs)]
    return min(w for w, _ in got), min(c for _, c in got)


def _stat(b: dict, name: str) -> int:
    _, text = admin_get(admin_port(b), "/stats?filter=" + name.replace(".", "\\."))
    for line in text.splitlines():
        k, _, v = line.partition(": ")
        if k == name:
            return int(v)
    return 0


@pytest.mark.parametrize("down", ["refused", "hanging"])
def test_service_down_changes_nothing_for_traffic(down, tmp_path, upstream):
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    if down == "hanging":
        hole.listen(1)  # never accepted nor read: connects, then nothing
    port = hole.getsockname()[1]
    try:
        base = dict(_bootstrap("plain", upstream.ports["a"], port))
        del base["stats_sinks"]
        with _proxy("sofamesh", base, tmp_path / "plain") as p:
            _send(_listen(base), 200)  # warm
            plain = _least(p, _listen(base), 2000)
        b = _bootstrap("sinking", upstream.ports["a"], port, flush="0.1s")
        with _proxy("sofamesh", b, tmp_path / "sink") as p:
            _send(_listen(b), 200)
            sinking = _least(p, _listen(b), 2000)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                failed = _stat(b, "sofamesh.metrics_service.stream_failures")
                dropped = _stat(b, "sofamesh.metrics_service.flushes_dropped")
                if (failed if down == "refused" else dropped) > 0:
                    break
                time.sleep(0.2)
            assert (failed if down == "refused" else dropped) > 0, (failed, dropped)
            assert _stat(b, "cluster.app.upstream_rq_200") == 200 + 3 * 2000
    finally:
        hole.close()
    print(
        f"2000 requests (least of 3): {plain[0]:.3f} s, {plain[1]:.2f} s CPU without a sink; "
        f"{sinking[0]:.3f} s, {sinking[1]:.2f} s CPU with one {down}"
    )
    # full speed: the proxy's CPU within the noise of a shared machine (the wall time too,
    # more loosely: other processes share the 2 cores)
    assert sinking[1] < plain[1] * 1.5 + 0.05, (plain, sinking)
    assert sinking[0] < plain[0] * 3 + 0.5, (plain, sinking)


@pytest.mark.parametrize("kind", ["envoy", "sofamesh"])
def test_two_workers_with_access_log_and_deltas_counted_once(kind, tmp_path, mixer_factory):
    """--concurrency 2, counters as deltas to a mixer told so, and the access log to the same
    mixer: each request is counted once (from the stats), whichever worker served it."""
    mixer = mixer_factory(extra=["--metrics-counters", "delta"])
    with RecordingUpstream(["a"]) as up:
        b = _bootstrap(kind, up.ports["a"], mixer.grpc_port, report_counters_as_deltas=True)
        hcm = b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        hcm["typed_config"]["access_log"] = [
            {
                "name": "envoy.access_loggers.http_grpc",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3"
                    ".HttpGrpcAccessLogConfig",
                    "common_config": {
                        "log_name": "both",
                        "transport_api_version": "V3",
                        "grpc_service": {"envoy_grpc": {"cluster_name": "mixer"}},
                        "buffer_flush_interval": "0.1s",
                    },
                },
            }
        ]
        if kind == "envoy":
            p = ProxyProcess.envoy(envoy_binary(), b, tmp_path / kind, concurrency=2)
        else:
            p = ProxyProcess.sofamesh(sofamesh_command(), b, tmp_path / kind, concurrency=2)
        with p:
            assert wait_metric(mixer, "sofamesh_mixer_metrics_messages_total", 1, 30) >= 1
            for _ in range(8):  # new connections: spread over the workers
                _send(_listen(b), 5)
            lab = {"reporter": kind, "destination": "app", "response_code": "200"}
            assert wait_metric(mixer, "istio_requests_total", 40, 30, **lab) == 40
            skipped = wait_metric(mixer, "sofamesh_mixer_access_log_entries_skipped_total", 40, 30)
            assert skipped >= 40  # the access log's entries arrived, and were not counted
            time.sleep(1.5)  # more delta flushes (of 0) add nothing
            assert mixer.metric("istio_requests_total", **lab) == 40


def test_web_page_shows_metrics_only_sidecars(tmp_path, mixer_factory):
    """Two sidecars reporting only stats (Envoy 1.40 calling `ratings`, sofamesh calling
    `reviews`): the mixer's page, in a real headless Chromium, draws both edges with their
    requests, codes and latency (from the HISTOGRAM upstream_rq_time)."""
    from tests.integration.mixer.test_mixer_web import _rows_when
    from tests.support.browser import HeadlessChromium

    mixer = mixer_factory()
    with RecordingUpstream(["a", "b"]) as up:
        procs = []
        try:
            for kind, node, dest, port in (
                ("sofamesh", "productpage", "reviews", up.ports["a"]),
                ("envoy", "reviews", "ratings", up.ports["b"]),
            ):
                b = _bootstrap(node, port, mixer.grpc_port, histogram_emit_mode="HISTOGRAM")
                b = json.loads(json.dumps(b).replace('"app"', json.dumps(dest)))
                procs.append(_proxy(kind, b, tmp_path / node).start())
                _send(_listen(b), 12 if kind == "sofamesh" else 8)
                if kind == "envoy":
                    _send(_listen(b), 2, status=503)
            assert wait_metric(mixer, "istio_requests_total", 22, 30) == 22
            assert wait_metric(mixer, "istio_request_duration_milliseconds_count", 22, 30) == 22
            with HeadlessChromium(tmp_path) as browser:
                page = browser.open(f"http://127.0.0.1:{mixer.http_port}/")
                rows = _rows_when(
                    page,
                    "rows['productpage \\u2192 reviews']?.requests === '12'"
                    " && rows['reviews \\u2192 ratings']?.requests === '10'",
                )
                front, mid = rows["productpage \u2192 reviews"], rows["reviews \u2192 ratings"]
                assert front["codes"] == "200: 12" and front["reporters"] == "productpage"
                assert mid["codes"] == "200: 8, 503: 2" and mid["errors"] == "20.0%"
                assert front["p50"].endswith("ms") and mid["p99"].endswith("ms")
                assert page.errors == []
        finally:
            for p in procs:
                p.stop()


def test_mixer_stopped_and_back(tmp_path, upstream, mixer_factory):
    """The mixer stops: sofamesh serves on at the same speed and counts failed streams; a new
    mixer on the same port gets the sidecar's reports again (backoff) and, from the cumulative
    counters, every request served meanwhile."""
    from tests.integration.mixer.conftest import MixerProcess

    mixer = mixer_factory()
    b = _bootstrap("front", upstream.ports["a"], mixer.grpc_port)
    with _proxy("sofamesh", b, tmp_path) as p:
        port = _listen(b)
        _send(port, 200)
        before = _timed(p, port, 1000)
        lab = {"reporter": "front", "destination": "app", "response_code": "200"}
        assert wait_metric(mixer, "istio_requests_total", 1200, 30, **lab) == 1200
        mixer.stop()
        during = _timed(p, port, 1000)
        deadline = time.monotonic() + 20
        while _stat(b, "sofamesh.metrics_service.stream_failures") == 0:
            assert time.monotonic() < deadline, "no failed stream counted"
            time.sleep(0.2)
        (tmp_path / "again").mkdir()
        again = MixerProcess(tmp_path / "again", "")
        again.start(grpc_port=mixer.grpc_port)
        try:
            assert wait_metric(again, "istio_requests_total", 2200, 60, **lab) == 2200
        finally:
            again.stop()
    print(
        f"1000 requests: {before[0]:.3f} s, {before[1]:.2f} s CPU with the mixer up; "
        f"{during[0]:.3f} s, {during[1]:.2f} s CPU with it stopped"
    )
    assert during[1] < before[1] * 1.5 + 0.05, (before, during)
    assert during[0] < before[0] * 3 + 0.5, (before, during)
