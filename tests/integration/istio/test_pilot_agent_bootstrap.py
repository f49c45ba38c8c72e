"""Istio's pilot-agent bootstrap (the rendered golden of tools/packaging/common/
envoy_bootstrap.json, tests/fixtures/istio/bootstrap_default.json) run for real by Envoy
1.40 and by sofamesh, each fed over ADS (Delta) on the agent's Unix socket: both come up
LIVE, pass the pilot-agent's readiness stats, serve the :15021 readiness route to the agent
and the :15090 Prometheus scrape with Istio's stat names, and the listener pushed over
LDS. Changes to the golden, for a test host: ports are free loopback ones (not 0.0.0.0 and
1500x) and the XDS socket lives in the test's folder. The :15090 listener's three
compressors (brotli, zstd, gzip in one chain) answer a scrape that accepts them with the
coding Envoy picks."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from http.server import BaseHTTPRequestHandler

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc

from tests.conftest import FIXTURES, envoy_binary, free_port, sofamesh_command
from tests.integration.pilot.test_envoy_ads import get
from tests.integration.xds.test_sidecar_nack import CDS, LDS, listener
from tests.support.envoy import ProxyProcess
from tests.support.threaded_http import serve_http
from tests.support.xds_server import ScriptedAds


class _Agent(BaseHTTPRequestHandler):
    """The pilot-agent's status port: /healthz/ready."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        ok = self.path.startswith("/healthz/ready")
        self.send_response(200 if ok else 404)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def agent():
    with serve_http(_Agent) as port:
        yield port


def istio_bootstrap(xds_sock: str, admin: int, prom: int, ready: int, agent: int) -> dict:
    b = json.loads((FIXTURES / "istio" / "bootstrap_default.json").read_text())
    b["admin"]["address"]["socket_address"]["port_value"] = admin
    for c in b["static_resources"]["clusters"]:
        for e in c["load_assignment"]["endpoints"]:
            for lbe in e["lb_endpoints"]:
                addr = lbe["endpoint"]["address"]
                if c["name"] == "xds-grpc":
                    addr["pipe"]["path"] = xds_sock
                elif c["name"] == "prometheus_stats":
                    addr["socket_address"]["port_value"] = admin
                elif c["name"] == "agent":
                    addr["socket_address"]["port_value"] = agent
    for lst in b["static_resources"]["listeners"]:
        sa = lst["address"]["socket_address"]
        sa["address"] = "127.0.0.1"
        sa["port_value"] = prom if sa["port_value"] == 15090 else ready
    return b


def _get(port: int, path: str) -> tuple[int, str]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode()
    finally:
        c.close()


def _get_encoded(port: int, path: str, accept: str) -> tuple[str | None, str]:
    """The content-encoding of the answer and its text, decompressed."""
    import gzip

    import brotli
    import zstandard

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path, headers={"accept-encoding": accept})
        r = c.getresponse()
        data, enc = r.read(), r.getheader("content-encoding")
    finally:
        c.close()
    if enc == "gzip":
        data = gzip.decompress(data)
    elif enc == "br":
        data = brotli.decompress(data)
    elif enc == "zstd":
        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return enc, data.decode()


def _stat(text: str, name: str) -> int:
    for line in text.splitlines():
        k, _, v = line.partition(": ")
        if k == name:
            return int(v)
    return -1


async def test_pilot_agent_bootstrap_runs_as_on_envoy(tmp_path, agent):
    sock = str(tmp_path / "XDS")
    ads = ScriptedAds()
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)
    server.add_insecure_port(f"unix:{sock}")
    await server.start()
    seen = {}
    try:
        for kind in ("envoy", "sofamesh"):
            admin, prom, ready, app = free_port(), free_port(), free_port(), free_port()
            ads.push(CDS, f"c-{kind}", [])
            ads.push(LDS, f"l-{kind}", [listener(app, route_config=_direct())])
            boot = istio_bootstrap(sock, admin, prom, ready, agent)
            if kind == "envoy":
                proxy = ProxyProcess.envoy(envoy_binary(), boot, tmp_path)
            else:
                proxy = ProxyProcess.sofamesh(sofamesh_command(), boot, tmp_path, concurrency=1)
            try:
                await asyncio.to_thread(proxy.start)
                await ads.acked(LDS)
                stats = (await asyncio.to_thread(_get, admin, "/stats"))[1]
                seen[kind] = {
                    "ready": await asyncio.to_thread(_get, admin, "/ready"),
                    "healthz": (await asyncio.to_thread(_get, ready, "/healthz/ready"))[0],
                    "app": await asyncio.to_thread(_get, app, "/"),
                    "scrape": await asyncio.to_thread(_get, prom, "/stats/prometheus"),
                    "encoded": [
                        await asyncio.to_thread(_get_encoded, prom, "/stats/prometheus", ae)
                        for ae in ("gzip", "br", "zstd", "gzip, br, zstd", "zstd;q=0.5, br;q=0.7")
                    ],
                    # what pilot-agent reads to judge readiness
                    "server.state": _stat(stats, "server.state"),
                    "workers_started": _stat(stats, "listener_manager.workers_started"),
                    "cds_ok": _stat(stats, "cluster_manager.cds.update_success") >= 1,
                    "lds_ok": _stat(stats, "listener_manager.lds.update_success") >= 1,
                }
            finally:
                await asyncio.to_thread(proxy.stop)
    finally:
        await server.stop(None)
    for kind, s in seen.items():
        assert s["ready"] == (200, "LIVE\n"), kind
        assert s["healthz"] == 200, kind
        assert s["app"] == (200, "from LDS"), kind
        assert (s["server.state"], s["workers_started"], s["cds_ok"], s["lds_ok"]) == (
            0,
            1,
            True,
            True,
        ), kind
        status, body = s["scrape"]
        assert status == 200, kind
        # Istio's tag regexes and inclusion list: names and labels Istio's dashboards read
        assert "envoy_server_live{} 1" in body, kind
        assert "envoy_cluster_manager_active_clusters{}" in body, kind
        assert "envoy_http_" not in body, kind  # http.* is outside the inclusion list
        for _enc, text in s["encoded"]:
            assert "envoy_server_live{} 1" in text, kind
    # the same coding chosen among the chain's three compressors
    assert [e for e, _ in seen["sofamesh"]["encoded"]] == [e for e, _ in seen["envoy"]["encoded"]]
    assert [e for e, _ in seen["envoy"]["encoded"]] == ["gzip", "br", "zstd", "gzip", "br"]
    env_names = {ln.split("{")[0] for ln in seen["envoy"]["scrape"][1].splitlines()}
    sofa_names = {ln.split("{")[0] for ln in seen["sofamesh"]["scrape"][1].splitlines()}
    for family in (
        "envoy_server_live",
        "envoy_server_state",
        "envoy_listener_manager_workers_started",
        "envoy_cluster_manager_cds_update_success",
        "envoy_listener_manager_lds_update_success",
    ):
        assert family in env_names and family in sofa_names, family


def _direct() -> dict:
    return {
        "name": "r",
        "virtual_hosts": [
            {
                "name": "v",
                "domains": ["*"],
                "routes": [
                    {
                        "match": {"prefix": "/"},
                        "direct_response": {"status": 200, "body": {"inline_string": "from LDS"}},
                    }
                ],
            }
        ],
    }


def test_pilot_agent_bootstrap_fed_by_sofamesh_pilot(tmp_path, agent):
    """The same golden bootstrap, its `xds-grpc` pipe served by `sofamesh pilot` itself
    (`--xds-address unix:PATH`, where pilot-agent's XDS proxy would be): Envoy 1.40 and
    sofamesh each come up LIVE with what pilot-agent checks (server.state, workers, CDS and
    LDS applied), hold the pilot's listener, and route a call by service name to the
    instance registered through the pilot's API."""
    from tests.integration.pilot.conftest import PilotProcess
    from tests.support.http_upstream import RecordingUpstream

    sock = str(tmp_path / "XDS")
    pilot = PilotProcess(tmp_path / "pilot", extra=["--xds-address", f"unix:{sock}"]).start()
    up = RecordingUpstream(["alpha"]).start()
    seen = {}
    try:
        pilot.register(
            "reviews", "r1", address="127.0.0.1", port=up.ports["alpha"], service_port=9080
        )
        for kind in ("envoy", "sofamesh"):
            admin, prom, ready = free_port(), free_port(), free_port()
            boot = istio_bootstrap(sock, admin, prom, ready, agent)
            proxy = (
                ProxyProcess.envoy(envoy_binary(), boot, tmp_path / kind)
                if kind == "envoy"
                else ProxyProcess.sofamesh(sofamesh_command(), boot, tmp_path / kind)
            )
            with proxy:
                call = (0, "")
                for _ in range(100):  # the pilot's routes arrive just after LIVE
                    try:
                        call = get(pilot.outbound_port, "reviews:9080")
                    except OSError:
                        call = (0, "")
                    if call[0] == 200:
                        break
                    time.sleep(0.1)
                stats = _get(admin, "/stats")[1]
                seen[kind] = {
                    "ready": _get(admin, "/ready"),
                    "state": _stat(stats, "server.state"),
                    "workers_started": _stat(stats, "listener_manager.workers_started"),
                    "cds_ok": _stat(stats, "cluster_manager.cds.update_success") >= 1,
                    "lds_ok": _stat(stats, "listener_manager.lds.update_success") >= 1,
                    # outside Istio's inclusion list: neither shows control_plane.*
                    "control_plane": [ln for ln in stats.splitlines() if "control_plane" in ln],
                    "listeners": _stat(stats, "listener_manager.total_listeners_active"),
                    "call": (call[0], call[1].split(" ", 1)[0]),
                }
    finally:
        up.stop()
        pilot.stop()
    assert seen["envoy"] == {
        "ready": (200, "LIVE\n"),
        "state": 0,
        "workers_started": 1,
        "cds_ok": True,
        "lds_ok": True,
        "control_plane": [],
        "listeners": 3,  # :15090, :15021 and the pilot's outbound listener
        "call": (200, "upstream=alpha"),
    }
    assert seen["sofamesh"] == seen["envoy"]
