"""The overload manager's fixed_heap monitor and its actions (proxy/overload.py), against
Envoy 1.40 on the same bootstraps: a heap limit the process is over makes
`stop_accepting_requests` answer every request with Envoy's 503 "envoy overloaded", and
`disable_http_keepalive` close HTTP/1.1 connections after their response; a limit far away
changes nothing. The same answers and the same stats from both proxies."""

from __future__ import annotations

import http.client
import re
import time

import pytest

from tests.integration.admin.helpers import BOOTSTRAP, get, start_envoy, start_sofamesh, stop
from tests.support.http_upstream import RecordingUpstream
from tests.support.servers import free_ports

OVERLOAD = """
overload_manager:
  refresh_interval: 0.1s
  resource_monitors:
  - name: envoy.resource_monitors.fixed_heap
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig
      max_heap_size_bytes: {max_bytes}
  actions:
{actions}
"""
ACTION = """  - name: envoy.overload_actions.{name}
    triggers:
    - name: envoy.resource_monitors.fixed_heap
      threshold: {{value: {threshold}}}
"""
CASES = {
    # (max heap bytes, {action: threshold})
    "over_the_limit": (1, {"stop_accepting_requests": 0.99, "disable_http_keepalive": 0.95}),
    "keepalive_off_only": (1, {"disable_http_keepalive": 0.5}),
    "far_from_it": (1 << 40, {"stop_accepting_requests": 0.99, "disable_http_keepalive": 0.95}),
}
STATS = (
    "http.ingress_http.downstream_rq_overload_close",
    "http.ingress_http.downstream_cx_overload_disable_keepalive",
    "overload.envoy.overload_actions.stop_accepting_requests.active",
    "overload.envoy.overload_actions.disable_http_keepalive.active",
    "overload.envoy.overload_actions.stop_accepting_requests.scale_percent",
)


def _exercise(kind: str, tmp_path, case: str, upstream: int) -> dict:
    max_bytes, actions = CASES[case]
    admin, port = free_ports(2)
    cfg = tmp_path / f"{kind}-{case}.yaml"
    text = BOOTSTRAP.format(admin=admin, port=port, upstream=upstream)
    acts = "".join(ACTION.format(name=n, threshold=t) for n, t in actions.items())
    cfg.write_text(text + OVERLOAD.format(max_bytes=max_bytes, actions=acts))
    proc = start_envoy(cfg, admin) if kind == "envoy" else start_sofamesh(cfg, admin, cwd=tmp_path)
    try:
        time.sleep(0.5)  # a few refreshes of the monitor
        out: dict = {"answers": []}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        for path in ("/a", "/b"):
            try:
                conn.request("GET", path)
                r = conn.getresponse()
                body = re.sub(r" attempt=\d+", "", r.read().decode())  # the upstream's count
                out["answers"].append((r.status, body, r.getheader("connection")))
            except (ConnectionError, http.client.HTTPException) as e:
                out["answers"].append(type(e).__name__)  # closed after a "connection: close"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.close()
        _, body = get(admin, "/stats")
        got = {}
        for line in body.splitlines():
            k, _, v = line.partition(": ")
            if k in STATS:
                got[k] = int(v)
        out["stats"] = {k: got.get(k, 0) for k in STATS}
        return out
    finally:
        stop(proc)


@pytest.mark.parametrize("case", sorted(CASES))
def test_fixed_heap_actions_as_envoy(tmp_path, case):
    up = RecordingUpstream(["a"]).start()
    try:
        envoy = _exercise("envoy", tmp_path, case, up.ports["a"])
        ours = _exercise("sofamesh", tmp_path, case, up.ports["a"])
    finally:
        up.stop()
    assert ours == envoy
    if case == "over_the_limit":
        assert envoy["answers"][0][:2] == (503, "envoy overloaded")
    if case == "far_from_it":
        assert [a[0] for a in envoy["answers"]] == [200, 200]
