"""proxy.health_check's state machine (Envoy's handleSuccess/handleFailure and interval
rules), flag text, config reading and the cluster's view; no sockets."""

from __future__ import annotations

import asyncio
import json

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import json_format

from sofamesh._core.stats import Store
from sofamesh._core.upstream import Host
from sofamesh.proxy import health_check as hc
from sofamesh.proxy import health_probes as hp
from sofamesh.proxy.errors import UnsupportedConfig

FAILED = hc.FAILED_ACTIVE_HC


def _cluster(**check) -> cluster_pb2.Cluster:
    d = {
        "name": "c",
        "health_checks": [
            {
                "timeout": "1s",
                "interval": "2s",
                "unhealthy_threshold": 3,
                "healthy_threshold": 2,
                "http_health_check": {"path": "/h"},
                **check,
            }
        ],
    }
    return json_format.ParseDict(d, cluster_pb2.Cluster())


class Rig:
    """A checker with one host; `traffic` toggles Envoy's "cluster has connected"."""

    def __init__(self, **check) -> None:
        self.published: list[dict] = []
        self.traffic = True
        self.store = Store()
        cfg = hc.parse(_cluster(**check), "c")
        self.ck = hc.ClusterChecker(
            "c", cfg, self.store, lambda n, f, i: self.published.append(f), lambda: self.traffic
        )
        self.ck.set_hosts([("10.0.0.1", 80)])
        self.s = self.ck.sessions[("10.0.0.1", 80)]

    def run(self, res: int) -> float:
        return self.ck.record(self.s, res)

    @property
    def flags(self) -> int:
        return self.s.state.flags

    def stat(self, name: str) -> int:
        return self.store.counter(f"cluster.c.health_check.{name}").value


def test_hosts_start_failed_and_first_success_is_healthy_at_once():
    r = Rig()
    assert r.flags == FAILED
    assert r.run(hp.OK) == 2.0
    assert r.flags == 0 and r.published == [{("10.0.0.1", 80): 0}]
    assert r.ck.first_round.is_set()


def test_active_failure_ignores_unhealthy_threshold():
    r = Rig()
    r.run(hp.OK)
    r.run(hp.FAIL_ACTIVE)
    assert r.flags == FAILED
    assert r.stat("failure") == 1 and r.stat("network_failure") == 0


@pytest.mark.parametrize("res", [hp.FAIL_NETWORK, hp.FAIL_RETRIABLE, hp.FAIL_TIMEOUT])
def test_network_and_retriable_failures_count_to_the_threshold(res):
    r = Rig(unhealthy_edge_interval="0.5s")
    r.run(hp.OK)
    assert r.run(res) == 0.5  # pending: unhealthy_edge_interval
    assert r.run(res) == 0.5
    assert r.flags == 0
    r.run(res)
    assert r.flags & FAILED
    assert bool(r.flags & hc.ACTIVE_HC_TIMEOUT) == (res == hp.FAIL_TIMEOUT)
    net = 3 if res != hp.FAIL_RETRIABLE else 0
    assert r.stat("network_failure") == net and r.stat("failure") == 3


def test_a_success_resets_the_failure_count():
    r = Rig()
    r.run(hp.OK)
    r.run(hp.FAIL_NETWORK)
    r.run(hp.FAIL_NETWORK)
    r.run(hp.OK)
    r.run(hp.FAIL_NETWORK)
    r.run(hp.FAIL_NETWORK)
    assert r.flags == 0


def test_recovery_takes_healthy_threshold_and_uses_edge_intervals():
    r = Rig(healthy_edge_interval="0.25s", unhealthy_interval="4s")
    r.run(hp.FAIL_ACTIVE)  # first check fails: stays failed
    assert r.flags == FAILED
    assert r.run(hp.FAIL_ACTIVE) == 4.0  # unhealthy, unchanged: unhealthy_interval
    assert r.run(hp.OK) == 0.25  # 1 of 2: healthy_edge_interval
    assert r.flags == FAILED
    assert r.run(hp.OK) == 2.0
    assert r.flags == 0


def test_timeout_flag_toggles_with_the_failure_kind():
    r = Rig()
    r.run(hp.FAIL_TIMEOUT)
    assert r.flags == FAILED | hc.ACTIVE_HC_TIMEOUT
    r.run(hp.FAIL_ACTIVE)
    assert r.flags == FAILED
    assert hc.health_flags_text(FAILED | hc.ACTIVE_HC_TIMEOUT, True) == (
        "/failed_active_hc/active_hc_timeout"
    )
    assert hc.health_flags_text(FAILED, False) == "/failed_active_hc/failed_eds_health"
    assert hc.health_flags_text(0, True) == "healthy"


def test_degraded_and_immediate_fail_header():
    r = Rig()
    r.run(hp.OK_DEGRADED)
    assert r.flags == hc.DEGRADED_ACTIVE_HC
    assert r.store.gauge("cluster.c.health_check.degraded").value == 1
    r.s.probe.exclude = True
    r.run(hp.FAIL_ACTIVE)
    assert r.flags & hc.EXCLUDED_VIA_IMMEDIATE_HC_FAIL
    r.s.probe.exclude = False
    r.run(hp.OK)
    r.run(hp.OK)
    assert r.flags == 0


def test_no_traffic_intervals():
    r = Rig(no_traffic_interval="7s", no_traffic_healthy_interval="9s")
    r.traffic = False
    assert r.run(hp.OK) == 9.0  # healthy
    assert r.run(hp.FAIL_NETWORK) == 7.0  # pending
    r2 = Rig(no_traffic_interval="7s")
    r2.traffic = False
    assert r2.run(hp.OK) == 7.0  # no_traffic_healthy_interval defaults to no_traffic_interval


def test_jitter_bounds():
    r = Rig(interval_jitter="0.1s", interval_jitter_percent=50)
    for _ in range(50):
        assert 2.0 <= r.run(hp.OK) < 2.0 + 1.0 + 0.1


def test_config_reading():
    cfg = hc.parse(
        _cluster(
            http_health_check={
                "path": "/hz",
                "host": "h.example",
                "request_headers_to_add": [{"header": {"key": "x-a", "value": "1"}}],
                "request_headers_to_remove": ["user-agent"],
                "expected_statuses": [{"start": 200, "end": 300}],
                "retriable_statuses": [{"start": 429, "end": 430}],
            }
        ),
        "c",
    )
    assert cfg.http_request == b"GET /hz HTTP/1.1\r\nhost: h.example\r\nx-a: 1\r\n\r\n"
    assert cfg.expected_statuses == ((200, 300),) and cfg.retriable_statuses == ((429, 430),)
    t = hc.parse(
        _cluster(
            http_health_check=None,
            tcp_health_check={
                "send": {"text": "70696e67"},
                "receive": [{"text": "706f"}, {"binary": "bmc="}],
            },
        ),
        "c",
    )
    assert t.tcp_send == b"ping" and t.tcp_receive == (b"po", b"ng")
    assert hp._payload_match((b"po", b"ng"), b"xxpoyyng") and not hp._payload_match(
        (b"ng", b"po"), b"pong"
    )
    g = hc.parse(_cluster(http_health_check=None, grpc_health_check={"service_name": "s"}), "c")
    assert g.grpc_authority == "c" and g.grpc_request == b"\n\x01s"
    assert hp._decode_status(b"\x08\x01") == hp.SERVING and hp._decode_status(b"") == 0


def test_one_health_check_per_cluster():
    c = _cluster()
    c.health_checks.add().CopyFrom(c.health_checks[0])
    with pytest.raises(UnsupportedConfig, match="Multiple health checks not supported"):
        hc.parse(c, "static_resources.clusters[0]")


def test_checked_cluster_combines_eds_health_and_flags():
    class Link:
        def hosts_changed(self, cl, initial=False):
            self.seen = cl.host_keys()

    link = Link()
    c = _cluster()
    cfg = hc.parse(c, "c")
    a, b = Host("10.0.0.1", 80), Host("10.0.0.2", 80)
    b.healthy = False  # EDS UNHEALTHY
    cl = hc.CheckedCluster("c", Store(), hosts=[a, b], hc=cfg, link=link, config=c)
    assert link.seen == [("10.0.0.1", 80), ("10.0.0.2", 80)]
    assert not a.healthy and not b.healthy  # failed until checked
    cl.apply_flags({("10.0.0.1", 80): 0, ("10.0.0.2", 80): 0}, init=True)
    assert a.healthy and not b.healthy
    assert cl.pick() is a
    assert cl.eds_healthy == {("10.0.0.1", 80): True, ("10.0.0.2", 80): False}


async def test_merge_window_delays_later_changes():
    c = _cluster()
    c.common_lb_config.update_merge_window.FromMilliseconds(100)
    a = Host("10.0.0.1", 80)

    class Link:
        def hosts_changed(self, cl, initial=False):
            pass

    cl = hc.CheckedCluster("c", Store(), hosts=[a], hc=hc.parse(c, "c"), link=Link(), config=c)
    k = ("10.0.0.1", 80)
    cl.apply_flags({k: 0}, init=True)  # initialization: at once
    assert a.healthy
    cl.apply_flags({k: FAILED})  # first change after init: at once
    assert not a.healthy
    cl.apply_flags({k: 0})  # within the window: merged
    assert not a.healthy and cl.hc_flags[k] == 0
    await asyncio.sleep(0.15)
    assert a.healthy


def test_event_log(tmp_path):
    p = tmp_path / "hc.log"
    r = Rig(event_log_path=str(p))
    r.run(hp.FAIL_NETWORK)
    r.run(hp.OK)
    r.run(hp.OK)  # healthy_threshold 2
    r.ck.stop()
    recs = [json.loads(x) for x in p.read_text().splitlines()]
    assert recs[0]["health_check_failure_event"] == {"failure_type": "NETWORK", "first_check": True}
    assert recs[1]["add_healthy_event"] == {"first_check": False}
    assert recs[0]["cluster_name"] == "c" and recs[0]["health_checker_type"] == "HTTP"


def test_alt_port_and_service_name_matcher():
    r = Rig(alt_port=9901)
    assert (r.s.probe.address, r.s.probe.port) == ("10.0.0.1", 9901)
    assert Rig().s.probe.port == 80
    cfg = hc.parse(
        _cluster(http_health_check={"path": "/h", "service_name_matcher": {"prefix": "svc"}}),
        "c",
    )
    assert cfg.service_matcher.test(b"svc-a") and not cfg.service_matcher.test(b"other")
    r = Rig()
    r.s.probe.verified = True
    r.run(hp.OK)
    assert r.stat("verify_cluster") == 1


def test_header_formatters_are_refused_by_path():
    add = [{"header": {"key": "x-h", "value": "%UPSTREAM_LOCAL_ADDRESS%"}}]
    with pytest.raises(UnsupportedConfig, match=r"request_headers_to_add\[0\]\.header\.value"):
        hc.parse(_cluster(http_health_check={"path": "/", "request_headers_to_add": add}), "c")
    add = [{"header": {"key": "x-h", "value": "100%%"}}]
    cfg = hc.parse(_cluster(http_health_check={"path": "/", "request_headers_to_add": add}), "c")
    assert b"x-h: 100%\r\n" in cfg.http_request
