"""The `envoy.stat_sinks.statsd` sink over UDP (proxy/statsd_sink.py), against Envoy 1.40 on
the same bootstrap: one datagram a metric, `<prefix>.<stat>:<value>|c` for counters (what
they grew since the last flush) and `|g` for gauges, every stats_flush_interval; the
request counters' deltas add up to the requests sent, in both. (Envoy also sends each
histogram sample, `|ms`, as it is recorded; sofamesh keeps bucket counts, not samples, and
does not: those lines are left out of the comparison.)"""

from __future__ import annotations

import re
import socket
import time

import pytest

from tests.integration.admin.helpers import BOOTSTRAP, get, start_envoy, start_sofamesh, stop
from tests.support.http_upstream import RecordingUpstream
from tests.support.servers import free_ports

SINK = """
stats_flush_interval: 0.3s
stats_sinks:
- name: envoy.stat_sinks.statsd
  typed_config:
    "@type": type.googleapis.com/envoy.config.metrics.v3.StatsdSink
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
{prefix}"""
LINE = re.compile(r"^([A-Za-z_][\w.\-:/]*):(\d+)\|(c|g|ms)$")


def _observe(kind: str, tmp_path, upstream: int, prefix: str) -> dict:
    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    collector.settimeout(0.2)
    admin, port = free_ports(2)
    cfg = tmp_path / f"{kind}.yaml"
    extra = f"    prefix: {prefix}\n" if prefix else ""
    cfg.write_text(
        BOOTSTRAP.format(admin=admin, port=port, upstream=upstream)
        + SINK.format(port=collector.getsockname()[1], prefix=extra)
    )
    proc = start_envoy(cfg, admin) if kind == "envoy" else start_sofamesh(cfg, admin)
    datagrams: list[bytes] = []
    try:
        for _ in range(3):
            assert get(port, "/")[0] == 200
        deadline = time.monotonic() + 2.0  # several flushes
        while time.monotonic() < deadline:
            try:
                datagrams.append(collector.recv(65536))
            except TimeoutError:
                pass
    finally:
        stop(proc)
        collector.close()
    p = prefix or "envoy"
    sums: dict[str, int] = {}
    bad = []
    for d in datagrams:
        m = LINE.match(d.decode(errors="replace"))
        if m is None or not m.group(1).startswith(p + "."):
            bad.append(d)
            continue
        if m.group(3) == "c":
            sums[m.group(1)] = sums.get(m.group(1), 0) + int(m.group(2))
    keys = (
        f"{p}.http.ingress_http.downstream_rq_total",
        f"{p}.http.ingress_http.downstream_rq_2xx",
        f"{p}.cluster.backend.upstream_rq_total",
    )
    return {
        "one metric a datagram, well formed": bad[:3],
        "counted": {k: sums.get(k) for k in keys},
        "gauge sent": any(
            d.startswith(f"{p}.server.".encode()) and d.endswith(b"|g") for d in datagrams
        ),
    }


@pytest.mark.parametrize("prefix", ["", "mesh"], ids=["default-prefix", "prefix"])
def test_statsd_sink_as_envoy(tmp_path, prefix):
    up = RecordingUpstream(["a"]).start()
    try:
        envoy = _observe("envoy", tmp_path, up.ports["a"], prefix)
        ours = _observe("sofamesh", tmp_path, up.ports["a"], prefix)
    finally:
        up.stop()
    assert envoy["one metric a datagram, well formed"] == [], envoy
    assert set(envoy["counted"].values()) == {3}, envoy
    assert ours == envoy


def test_statsd_over_tcp_is_refused_by_name(tmp_path):
    import subprocess

    from tests.conftest import sofamesh_command

    cfg = tmp_path / "tcp.yaml"
    cfg.write_text(
        "stats_sinks:\n- name: envoy.stat_sinks.statsd\n  typed_config:\n"
        '    "@type": type.googleapis.com/envoy.config.metrics.v3.StatsdSink\n'
        "    tcp_cluster_name: statsd\n"
    )
    r = subprocess.run(
        [*sofamesh_command(), "proxy", "--mode", "validate", "-c", str(cfg)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 1
    assert (
        "stats_sinks[0].typed_config.tcp_cluster_name: statsd over TCP is not implemented "
        "by sofamesh" in r.stderr
    ), r.stderr[-2000:]
