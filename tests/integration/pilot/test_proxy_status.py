"""`sofamesh proxy-status` against a real pilot serving three sidecars: real Envoy 1.40, the
sofamesh sidecar, and a sofamesh sidecar that NACKs the pilot's clusters (its bootstrap has
a static cluster of the same name): a row each, SYNCED / NACKED with the error, the
sidecar's version and the pilot's identity; and the same as JSON."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.integration.pilot.conftest import ads_bootstrap
from tests.support.envoy import ProxyProcess
from tests.support.wait import wait_until

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(120)]

CLUSTER = "outbound|9080||reviews"


def node(pod: str) -> str:
    return f"sidecar~127.0.0.1~{pod}.ns~ns.svc.cluster.local"


def rds_listener(route_name: str) -> dict:
    ads = {"ads": {}, "resource_api_version": "V3"}
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network"
        ".http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "outbound",
        "rds": {"route_config_name": route_name, "config_source": ads},
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    return {
        "name": "outbound",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


def proxy_status(pilot, *args: str) -> str:
    r = subprocess.run(
        [*sofamesh_command(), "proxy-status", "--pilot", pilot.api, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_proxy_status_synced_and_nacked(pilot, tmp_path):
    pilot.register("reviews", "r1", address="127.0.0.1", port=free_port(), service_port=9080)
    pilot.wait_config("cds", lambda c: CLUSTER in c)
    envoy = ProxyProcess.envoy(
        envoy_binary(),
        ads_bootstrap(pilot.xds_port, free_port(), True, node("envoy-pod")),
        tmp_path / "envoy",
    )
    # The pilot gives every sidecar the same outbound listener port: on one host only Envoy
    # takes it by LDS; the sofamesh sidecars take routes by RDS into a static listener of
    # their own (as `sofamesh demo` does) and clusters by CDS, so LDS is NOT SENT to them.
    sofa_boot = ads_bootstrap(pilot.xds_port, free_port(), False, node("sofa-pod"))
    del sofa_boot["dynamic_resources"]["lds_config"]
    sofa_boot["static_resources"]["listeners"] = [rds_listener(str(pilot.outbound_port))]
    sofa = ProxyProcess.sofamesh(sofamesh_command(), sofa_boot, tmp_path / "sofa")
    bad_boot = ads_bootstrap(pilot.xds_port, free_port(), True, node("bad-pod"))
    del bad_boot["dynamic_resources"]["lds_config"]
    bad_boot["static_resources"]["clusters"].append(
        {
            "name": CLUSTER,  # the pilot's cluster: CDS may not replace a static one -> NACK
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": CLUSTER, "endpoints": []},
        }
    )
    bad = ProxyProcess.sofamesh(sofamesh_command(), bad_boot, tmp_path / "bad")
    try:
        for p in (envoy, sofa, bad):
            p.start()

        def settled() -> list | None:
            rows = json.loads(proxy_status(pilot, "--json"))
            by = {r["name"]: r for r in rows}
            if set(by) != {"envoy-pod.ns", "sofa-pod.ns", "bad-pod.ns"}:
                return None
            status = {n: {t: v["status"] for t, v in r["types"].items()} for n, r in by.items()}
            want = {
                "envoy-pod.ns": dict.fromkeys(("cds", "lds", "eds", "rds"), "SYNCED"),
                "sofa-pod.ns": {
                    "cds": "SYNCED",
                    "lds": "NOT SENT",
                    "eds": "SYNCED",
                    "rds": "SYNCED",
                },
                "bad-pod.ns": {
                    "cds": "NACKED",
                    "lds": "NOT SENT",
                    "eds": "NOT SENT",
                    "rds": "NOT SENT",
                },
            }
            return rows if status == want else None

        rows = wait_until(settled, 20, "three sidecars, two in sync and one NACKing CDS")
        by = {r["name"]: r for r in rows}
        assert by["envoy-pod.ns"]["version"] == "1.24.0"  # ISTIO_VERSION, as istioctl shows
        assert by["sofa-pod.ns"]["mode"] == "sotw" and by["envoy-pod.ns"]["mode"] == "delta"
        err = by["bad-pod.ns"]["types"]["cds"]["error"]
        assert CLUSTER in err and "static cluster" in err, err
        assert by["sofa-pod.ns"]["types"]["cds"]["version_acked"]
        assert all(r["pilot"].startswith("sofamesh-pilot@") for r in rows)
        assert all(r["cluster"] == "Kubernetes" for r in rows)  # metadata CLUSTER_ID

        text = proxy_status(pilot)
        lines = text.splitlines()
        assert lines[0].split() == [
            "NAME",
            "CLUSTER",
            "CDS",
            "LDS",
            "EDS",
            "RDS",
            "PILOT",
            "VERSION",
        ]
        table = {ln.split()[0]: ln.split() for ln in lines[1:4]}
        assert table["envoy-pod.ns"][1:6] == ["Kubernetes", "SYNCED", "SYNCED", "SYNCED", "SYNCED"]
        assert table["sofa-pod.ns"][2:7] == ["SYNCED", "NOT", "SENT", "SYNCED", "SYNCED"]
        assert table["bad-pod.ns"][2] == "NACKED"
        assert lines[1].split()[0] == "bad-pod.ns"  # sorted by name
        assert "NACKED:" in lines and any(
            ln.strip().startswith("bad-pod.ns CDS:") and CLUSTER in ln for ln in lines
        ), text
        # a name filters the rows
        assert [ln.split()[0] for ln in proxy_status(pilot, "sofa-pod").splitlines()[1:]] == [
            "sofa-pod.ns"
        ]
    finally:
        for p in (envoy, sofa, bad):
            p.stop()


def test_proxy_status_versions_without_istio_metadata(pilot, tmp_path):
    """Without ISTIO_VERSION, VERSION is the sidecar's own user agent (sofamesh/<version>)."""
    from sofamesh import __version__

    boot = ads_bootstrap(pilot.xds_port, free_port(), True, node("plain"))
    del boot["node"]["metadata"]["ISTIO_VERSION"]
    del boot["dynamic_resources"]["lds_config"]
    side = ProxyProcess.sofamesh(sofamesh_command(), boot, tmp_path / "s")
    try:
        side.start()
        rows = wait_until(lambda: json.loads(proxy_status(pilot, "--json")), 10, "a row")
        assert [r["version"] for r in rows] == [f"sofamesh/{__version__}"]
    finally:
        side.stop()


def test_proxy_status_unreachable_pilot():
    r = subprocess.run(
        [*sofamesh_command(), "proxy-status", "--pilot", f"http://127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert r.returncode == 1 and "proxy-status: http://127.0.0.1:" in r.stderr
