"""Traffic through the Istio corpus configs sofamesh accepts whole: Envoy 1.40 runs each
file's envoy/ copy, `sofamesh proxy` the Istio copy (Istio's own filters passed through or
implemented), and the same requests reach every listener of both; clients and upstreams
must see the same things.

To carry traffic on one machine without a control plane, each file is made runnable the
same way for both proxies (`runnable`): `dynamic_resources` dropped; listeners on
127.0.0.1 and free ports, bound (`bind_to_port: false` ones too: their chains are served
directly); every cluster endpoint (EDS, ORIGINAL_DST and STATIC ones, the admin and agent
ports included) pointed at one recording upstream, except internal listeners' addresses, the other cluster options kept
(circuit breakers, transport_socket_matches, protocol options, ...); an HCM with `rds` gets a
route config of one catch-all route to that upstream. Everything else is Istio's: listener
filters, chain matching (SDS secrets made inline from a test CA), HCM options, HTTP filters (RBAC, ext_authz's metadata gate, CORS,
fault, gRPC stats, ...), route tables.

Requests: per listener, one per route of its inline route tables (host from the virtual
host's first domain, path from the route's match) and one to an unknown host; compared:
the status, the response headers and body, and the request the upstream received (method,
path, headers), volatile values (ids, dates, timings, ports) normalised.
"""

from __future__ import annotations

import copy
import http.client
import json
import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIXTURES, envoy_binary, free_port, sofamesh_command
from tests.integration.istio.test_istio_corpus import ACCEPTED
from tests.support.envoy import ProxyProcess
from tests.support.http_upstream import RecordingUpstream

CORPUS = FIXTURES / "istio"
HCM_TYPE = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
# the bootstraps' pipe clusters (SDS and the agent's XDS proxy) are never used here
PIPE_CLUSTERS = {"sds-grpc", "xds-grpc"}
VOLATILE = {"date", "x-envoy-upstream-service-time", "x-request-id", "x-b3-traceid"}
VOLATILE |= {"x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "traceparent", "tracestate"}


def _addr(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _hcm(f: dict) -> dict | None:
    tc = f.get("typed_config", {})
    return tc if tc.get("@type", "").endswith(HCM_TYPE) else None


_PKI: dict[str, str] = {}


def _pki() -> dict[str, str]:
    """One test CA and a SPIFFE leaf, made once (what SDS would have delivered)."""
    if not _PKI:
        from tests.support.certs import make_ca, make_leaf

        ca = make_ca("corpus test CA")
        leaf = make_leaf(ca, uris=("spiffe://cluster.local/ns/default/sa/httpbin",))
        _PKI.update(ca=ca.cert_pem.decode(), cert=leaf.cert_pem.decode(), key=leaf.key_pem.decode())
    return _PKI


def _inline_secrets(node: Any) -> None:
    """SDS secret configs (Istio's `default` and `ROOTCA` over the agent's socket) become
    the same secrets inline, so no secret warms forever without a control plane."""
    if isinstance(node, list):
        for x in node:
            _inline_secrets(x)
        return
    if not isinstance(node, dict):
        return
    if node.pop("tls_certificate_sds_secret_configs", None) is not None:
        pki = _pki()
        node["tls_certificates"] = [
            {
                "certificate_chain": {"inline_string": pki["cert"]},
                "private_key": {"inline_string": pki["key"]},
            }
        ]
    combined = node.pop("combined_validation_context", None)
    if combined is not None:
        node["validation_context"] = {
            **combined.get("default_validation_context", {}),
            "trusted_ca": {"inline_string": _pki()["ca"]},
        }
    for v in node.values():
        _inline_secrets(v)


def runnable(doc: dict, upstream: int, ports: dict[str, int], admin: int) -> dict:
    """The file with the changes the module docstring lists (the same for both proxies)."""
    doc = copy.deepcopy(doc)
    doc.pop("dynamic_resources", None)
    _inline_secrets(doc["static_resources"])
    doc["admin"]["address"] = _addr(admin)
    sr = doc["static_resources"]
    for lst in sr.get("listeners", []):
        if "socket_address" not in lst.get("address", {}):
            continue
        lst["address"] = _addr(ports[lst["name"]])
        lst.pop("bind_to_port", None)
        for fc in [*lst.get("filter_chains", []), lst.get("default_filter_chain") or {}]:
            for f in fc.get("filters", []):
                hcm = _hcm(f)
                if hcm is not None and "rds" in hcm:
                    name = hcm.pop("rds")["route_config_name"]
                    hcm["route_config"] = {
                        "name": name,
                        "virtual_hosts": [
                            {
                                "name": "all",
                                "domains": ["*"],
                                "routes": [
                                    {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}
                                ],
                            }
                        ],
                    }
    clusters = []
    for c in sr.get("clusters", []):
        if c["name"] in PIPE_CLUSTERS or "envoy_internal_address" in json.dumps(
            c.get("load_assignment", {})
        ):
            clusters.append(c)  # unused pipes; internal listeners reached in-process
            continue
        c.pop("eds_cluster_config", None)
        c.pop("original_dst_lb_config", None)
        if c.get("type") in ("EDS", "ORIGINAL_DST", "STRICT_DNS", "LOGICAL_DNS"):
            c["type"] = "STATIC"
        if c.get("lb_policy") == "CLUSTER_PROVIDED":
            c["lb_policy"] = "ROUND_ROBIN"
        c["load_assignment"] = {
            "cluster_name": c["name"],
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(upstream)}}]}],
        }
        clusters.append(c)
    clusters.append(
        {
            "name": "upstream",
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": "upstream",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(upstream)}}]}],
            },
        }
    )
    sr["clusters"] = clusters
    return doc


def requests_for(lst: dict) -> list[tuple[str, str]]:
    """(host, path) pairs: each route of the listener's inline route tables, and an unknown
    host."""
    out: list[tuple[str, str]] = []
    for fc in lst.get("filter_chains", []):
        for f in fc.get("filters", []):
            hcm = _hcm(f)
            if hcm is None or "route_config" not in hcm:
                continue
            for vh in hcm["route_config"].get("virtual_hosts", []):
                domains = [d for d in vh.get("domains", []) if "*" not in d] or ["any.example"]
                host = domains[0]
                for r in vh.get("routes", [])[:6]:
                    m = r.get("match", {})
                    path = m.get("path") or m.get("prefix") or m.get("path_separated_prefix")
                    if path is not None:
                        out.append((host, path or "/"))
    out.append(("unknown.example", "/"))
    seen: set = set()
    return [x for x in out if not (x in seen or seen.add(x))]


def _send(port: int, host: str, path: str) -> tuple:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path, headers={"host": host, "user-agent": "corpus/1"})
        r = c.getresponse()
        body = r.read()
        headers = sorted(
            (k.lower(), "V" if k.lower() in VOLATILE else v) for k, v in r.getheaders()
        )
        return r.status, headers, body
    except (OSError, http.client.HTTPException) as e:
        return "error", type(e).__name__, b""
    finally:
        c.close()


def _norm(value: str, ports: set[int]) -> str:
    for p in ports:
        value = value.replace(f":{p}", ":PORT")
    return re.sub(r"\b\d{10,}\b", "N", value)


def run(kind: str, name: str, tmp: Path) -> dict:
    src = CORPUS / ("envoy" if kind == "envoy" else "") / name
    doc = json.loads(src.read_text())
    up = RecordingUpstream(["u"]).start()
    try:
        names = [
            lst["name"]
            for lst in doc["static_resources"].get("listeners", [])
            if "socket_address" in lst.get("address", {})
        ]
        ports = {n: free_port() for n in names}
        admin = free_port()
        boot = runnable(doc, up.ports["u"], ports, admin)
        (tmp / kind).mkdir(parents=True, exist_ok=True)
        proc = (
            ProxyProcess.envoy(envoy_binary(), boot, tmp / kind)
            if kind == "envoy"
            else ProxyProcess.sofamesh(sofamesh_command(), boot, tmp / kind)
        )
        out: dict[str, Any] = {}
        with proc:
            known = {*ports.values(), admin, up.ports["u"]}
            for lst in boot["static_resources"]["listeners"]:
                if lst["name"] not in ports:
                    continue
                for host, path in requests_for(lst):
                    n0 = len(up.snapshot())
                    status, headers, body = _send(ports[lst["name"]], host, path)
                    time.sleep(0.02)
                    recs = up.snapshot()[n0:]
                    seen = [
                        (
                            r.method,
                            r.target,
                            sorted(
                                (k.lower(), "V" if k.lower() in VOLATILE else _norm(v, known))
                                for k, v in r.headers
                            ),
                        )
                        for r in recs
                    ]
                    key = f"{lst['name']} {host}{path}"
                    out[key] = (status, headers, _norm(body.decode("latin-1"), known), seen)
        return out
    finally:
        up.stop()


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_corpus_traffic_as_envoy(name, tmp_path):
    envoy = run("envoy", name, tmp_path)
    ours = run("sofamesh", name, tmp_path)
    assert envoy.keys() == ours.keys()
    diffs = {k: (envoy[k], ours[k]) for k in envoy if envoy[k] != ours[k]}
    assert not diffs, "\n".join(
        f"{k}:\n  envoy    {json.dumps(e, default=str)}\n  sofamesh {json.dumps(o, default=str)}"
        for k, (e, o) in diffs.items()
    )[:8000]
    # the files carry traffic: some request reached the upstream through each proxy
    assert any(v[3] for v in ours.values()), ours


def test_runnable_keeps_the_shape():
    """The rewrite touches addresses, clusters' endpoints and rds only."""
    doc = json.loads((CORPUS / "sidecar_inbound_permissive.json").read_text())
    ports = {lst["name"]: 1 for lst in doc["static_resources"]["listeners"]}
    out = runnable(doc, 2, ports, 3)
    a = doc["static_resources"]["listeners"][2]
    b = out["static_resources"]["listeners"][2]
    assert [fc["filters"] for fc in a["filter_chains"]] == [
        fc["filters"] for fc in b["filter_chains"]
    ]
    assert a.get("listener_filters") == b.get("listener_filters")
    assert "dynamic_resources" not in out
    assert socket.AF_INET  # loopback only: every address is 127.0.0.1
    assert json.dumps(out).count('"127.0.0.1"') >= len(ports)
