"""The overload manager's fixed_heap monitor and its actions (proxy/overload.py), against
Envoy 1.40 on the same bootstraps: a heap limit the process is over makes
`stop_accepting_requests` answer every request with Envoy's 503 "envoy overloaded", and
`disable_http_keepalive` close HTTP/1.1 connections after their response; a limit far away
changes nothing. The same answers and the same stats from both proxies."""

from __future__ import annotations

import http.client
import os
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


# ---- scaled triggers and the other actions ----------------------------------------------

SCALED = """
  - name: envoy.overload_actions.{name}
    triggers:
    - name: envoy.resource_monitors.fixed_heap
      scaled: {{scaling_threshold: {scaling}, saturation_threshold: {saturation}}}
{extra}"""
REDUCE = """    typed_config:
      "@type": type.googleapis.com/envoy.config.overload.v3.ScaleTimersOverloadActionConfig
      timer_scale_factors:
      - timer: HTTP_DOWNSTREAM_CONNECTION_IDLE
        {minimum}
"""


def _start(kind: str, tmp_path, name: str, upstream: int, max_bytes: int, actions: str,
           hcm_extra: str = "") -> tuple:  # fmt: skip
    admin, port = free_ports(2)
    cfg = tmp_path / f"{kind}-{name}.yaml"
    text = BOOTSTRAP.format(admin=admin, port=port, upstream=upstream)
    if hcm_extra:
        text = text.replace("stat_prefix: ingress_http", "stat_prefix: ingress_http\n" + hcm_extra)
    cfg.write_text(text + OVERLOAD.format(max_bytes=max_bytes, actions=actions))
    if kind == "envoy":
        proc = start_envoy(cfg, admin)
    else:
        proc = start_sofamesh(cfg, admin, "--concurrency", "1", cwd=tmp_path)
    time.sleep(0.5)  # a few refreshes of the monitor
    return proc, admin, port


def _stats(admin: int, prefix: tuple) -> dict[str, int]:
    _, body = get(admin, "/stats")
    out = {}
    for line in body.splitlines():
        k, _, v = line.partition(": ")
        if k.startswith(prefix) and v.strip().isdigit():
            out[k] = int(v)
    return out


def _idle_close(port: int, request: bool = True) -> float:
    """One request on a kept-alive connection (or none), then how long until the proxy
    closes it."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        t0 = time.monotonic()
        if request:
            s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            got = b""
            while b"\r\n\r\n" not in got:
                got += s.recv(4096)
            t0 = time.monotonic()
        try:
            while s.recv(4096):
                pass
        except TimeoutError:
            return 10.0
        return time.monotonic() - t0


@pytest.mark.parametrize(
    "minimum", ["min_timeout: 0.4s", "min_scale: {value: 2}"], ids=["min_timeout", "min_scale"]
)
def test_reduce_timeouts_as_envoy(tmp_path, minimum):
    """reduce_timeouts on a saturated scaled trigger: the 30 s idle timeout of the HCM
    becomes its minimum (0.4 s, or 2% of 30 s = 0.6 s). A connection that never sent a
    byte closes then; one idle after a request goes through Envoy's drain sequence first
    (the HCM's drain_timeout, 5 s, then the delayed close, 1 s). Both proxies close them
    at the same times, well before 30 s, and count two idle timeouts."""
    up = RecordingUpstream(["a"]).start()
    acts = SCALED.format(name="reduce_timeouts", scaling=0.5, saturation=0.9,
                         extra=REDUCE.format(minimum=minimum))  # fmt: skip
    hcm = "          common_http_protocol_options: {idle_timeout: 30s}"
    seen = {}
    try:
        for kind in ("envoy", "sofamesh"):
            proc, admin, port = _start(kind, tmp_path, "reduce", up.ports["a"], 1, acts, hcm)
            try:
                took = (_idle_close(port, request=False), _idle_close(port))
                time.sleep(0.2)
                st = _stats(admin, ("overload.envoy.overload_actions.reduce_timeouts",
                                    "http.ingress_http.downstream_cx_idle_timeout"))  # fmt: skip
                seen[kind] = (took, st)
            finally:
                stop(proc)
    finally:
        up.stop()
    low = 0.4 if "min_timeout" in minimum else 0.6
    assert abs(seen["envoy"][0][0] - low) < 0.3 and abs(seen["envoy"][0][1] - (low + 6.0)) < 0.5
    for ours, envoy in zip(seen["sofamesh"][0], seen["envoy"][0]):
        assert abs(ours - envoy) < 0.3, seen
    assert seen["envoy"][1]["http.ingress_http.downstream_cx_idle_timeout"] == 2, seen
    assert seen["sofamesh"][1] == seen["envoy"][1]


def test_reject_incoming_connections_as_envoy(tmp_path):
    """reject_incoming_connections saturated: every new connection is closed before it is
    read (the client's request gets no answer) and counted per listener, as in Envoy."""
    import socket

    up = RecordingUpstream(["a"]).start()
    acts = SCALED.format(name="reject_incoming_connections", scaling=0.1, saturation=0.2, extra="")
    seen = {}
    try:
        for kind in ("envoy", "sofamesh"):
            proc, admin, port = _start(kind, tmp_path, "reject", up.ports["a"], 1, acts)
            try:
                outcomes = []
                for _ in range(3):
                    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
                        try:
                            s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                            outcomes.append("closed" if s.recv(100) == b"" else "answered")
                        except ConnectionError:
                            outcomes.append("closed")
                st = _stats(admin, ("overload.envoy.overload_actions.reject",
                                    f"listener.127.0.0.1_{port}.downstream_cx_overload_reject"))  # fmt: skip
                seen[kind] = (outcomes, {k.replace(str(port), "PORT"): v for k, v in st.items()})
            finally:
                stop(proc)
    finally:
        up.stop()
    assert seen["envoy"][0] == ["closed"] * 3, seen
    assert seen["envoy"][1]["listener.127.0.0.1_PORT.downstream_cx_overload_reject"] == 3, seen
    assert seen["sofamesh"] == seen["envoy"]


def _used_heap(kind: str, admin: int, pid: int) -> int:
    """What the fixed_heap monitor divides by its maximum: Envoy's tcmalloc heap in use,
    sofamesh's RSS."""
    import json

    if kind == "envoy":
        _, body = get(admin, "/memory")
        m = json.loads(body)
        return int(m["heap_size"]) - int(m["pageheap_unmapped"]) - int(m["pageheap_free"])
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_scaled_stop_accepting_requests_rejects_its_share(tmp_path):
    """A scaled trigger half way: each proxy, its maximum heap set to twice what it uses,
    answers about that share of 300 requests with 503 "envoy overloaded" (Envoy's
    bernoulli(value) per request), and shows the value as scale_percent, not active."""
    up = RecordingUpstream(["a"]).start()
    acts = SCALED.format(name="stop_accepting_requests", scaling=0.1, saturation=0.9, extra="")
    seen = {}
    try:
        for kind in ("envoy", "sofamesh"):
            proc, admin, _ = _start(kind, tmp_path, "probe", up.ports["a"], 1 << 40, acts)
            try:
                used = _used_heap(kind, admin, proc.pid)
            finally:
                stop(proc)
            proc, admin, port = _start(kind, tmp_path, "scaled", up.ports["a"], 2 * used, acts)
            try:
                statuses = []
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                for _ in range(300):
                    conn.request("GET", "/")
                    r = conn.getresponse()
                    r.read()
                    statuses.append(r.status)
                conn.close()
                st = _stats(admin, ("overload.envoy.overload_actions.stop_accepting_requests",
                                    "http.ingress_http.downstream_rq_overload_close"))  # fmt: skip
            finally:
                stop(proc)
            pfx = "overload.envoy.overload_actions.stop_accepting_requests."
            seen[kind] = {
                "share": statuses.count(503) / len(statuses),
                "scale": st[pfx + "scale_percent"] / 100,
                "active": st[pfx + "active"],
                "counted": st["http.ingress_http.downstream_rq_overload_close"]
                == statuses.count(503),
                "others_200": set(statuses) <= {200, 503},
            }
    finally:
        up.stop()
    for kind, s in seen.items():
        assert 0.1 <= s["scale"] <= 0.95, seen  # in the scaled range, not saturated
        assert abs(s["share"] - s["scale"]) < 0.15, seen
        assert s["active"] == 0 and s["counted"] and s["others_200"], seen


def test_disable_http_keepalive_on_http2_drains_as_envoy(tmp_path):
    """disable_http_keepalive saturated on an HTTP/2 (h2c) connection: before the first
    response, GOAWAY (last stream 2^31-1, then, after drain_timeout, the stream taken), the
    response itself, and the connection closed; counted once."""
    from tests.support.h2raw import GOAWAY, H2Client

    up = RecordingUpstream(["a"]).start()
    acts = ACTION.format(name="disable_http_keepalive", threshold=0.5)
    hcm = "          drain_timeout: 0.3s"
    seen = {}
    try:
        for kind in ("envoy", "sofamesh"):
            proc, admin, port = _start(kind, tmp_path, "h2ka", up.ports["a"], 1, acts, hcm)
            try:
                with H2Client(port) as c:
                    c.handshake()
                    c.request(1)
                    o = c.outcome(1)
                    rest = c.outcome(None, timeout=2.0)
                    goaways = [f.last_stream_id for f in o.frames + rest.frames if f.type == GOAWAY]
                    result = (o.status, goaways, rest.closed)
                st = _stats(admin, ("http.ingress_http.downstream_cx_overload_disable_keepalive",))
                seen[kind] = (result, st)
            finally:
                stop(proc)
    finally:
        up.stop()
    assert seen["envoy"][0] == (200, [2**31 - 1, 1], True), seen
    assert seen["envoy"][1] == {"http.ingress_http.downstream_cx_overload_disable_keepalive": 1}
    assert seen["sofamesh"] == seen["envoy"]
