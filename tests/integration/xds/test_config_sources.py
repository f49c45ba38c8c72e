"""Config without ADS, as Envoy 1.40 takes it: clusters, endpoints, listeners and routes from
watched files (`path_config_source`, the deprecated `path`, `watched_directory`) and from
non-aggregated gRPC streams (`api_config_source` GRPC and DELTA_GRPC, one discovery service
per type). Each test gives the same bootstrap to real Envoy and to `sofamesh proxy` and
checks the same behaviour of both: the listener comes up and serves, a route change arrives
when a file is moved into place (and not when a file is written in place), a bad file keeps
the last good config."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.support.envoy import ProxyProcess, admin_get
from tests.support.http_upstream import RecordingUpstream
from tests.support.xds_server import ScriptedXds

_T = "type.googleapis.com/envoy."
CDS = _T + "config.cluster.v3.Cluster"
EDS = _T + "config.endpoint.v3.ClusterLoadAssignment"
LDS = _T + "config.listener.v3.Listener"
RDS = _T + "config.route.v3.RouteConfiguration"
HCM = _T + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = _T + "extensions.filters.http.router.v3.Router"
SIDECARS = ("envoy", "sofamesh", "sofamesh-2-workers")


def _addr(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def static_cluster(name: str, port: int) -> dict:
    return {
        "@type": CDS,
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(port)}}]}],
        },
    }


def eds_cluster(name: str, eds_config: dict) -> dict:
    return {
        "@type": CDS,
        "name": name,
        "type": "EDS",
        "connect_timeout": "1s",
        "eds_cluster_config": {"eds_config": eds_config},
    }


def assignment(name: str, port: int) -> dict:
    return {
        "@type": EDS,
        "cluster_name": name,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(port)}}]}],
    }


def listener(port: int, rds_source: dict) -> dict:
    hcm = {
        "@type": HCM,
        "stat_prefix": "ingress",
        "rds": {"route_config_name": "local", "config_source": rds_source},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    return {
        "@type": LDS,
        "name": "ingress",
        "address": _addr(port),
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


def routes(root_cluster: str, regex: str = "/e") -> dict:
    return {
        "@type": RDS,
        "name": "local",
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [
                    {"match": {"safe_regex": {"regex": regex}}, "route": {"cluster": "e"}},
                    {"match": {"prefix": "/"}, "route": {"cluster": root_cluster}},
                ],
            }
        ],
    }


def bootstrap(admin: int, dynamic: dict, static_clusters: list | None = None) -> dict:
    b = {
        "node": {"id": "sidecar~127.0.0.1~t.ns~ns.svc.cluster.local", "cluster": "t.ns"},
        "admin": {"address": _addr(admin)},
        "dynamic_resources": dynamic,
    }
    if static_clusters:
        b["static_resources"] = {"clusters": static_clusters}
    return b


def who(port: int, path: str = "/") -> str:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path)
        r = c.getresponse()
        body = r.read().decode()
        return body.split()[0].removeprefix("upstream=") if r.status == 200 else str(r.status)
    finally:
        c.close()


def eventually(fn, want, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        try:
            got = fn()
        except OSError as e:
            got = repr(e)
        if got == want:
            return got
        time.sleep(0.05)
    return got


def stat(admin: int, name: str) -> int | None:
    _, text = admin_get(admin, f"/stats?filter=^{name}$")
    for line in text.splitlines():
        k, _, v = line.partition(": ")
        if k == name:
            return int(v)
    return None


def start(kind: str, boot: dict, workdir: Path) -> ProxyProcess:
    if kind == "envoy":
        p = ProxyProcess.envoy(envoy_binary(), boot, workdir)
    else:  # with workers, the main process reads the files and holds the streams
        workers = 2 if kind.endswith("workers") else 1
        p = ProxyProcess.sofamesh(sofamesh_command(), boot, workdir, concurrency=workers)
    return p.start()


def response(*resources: dict, version: str) -> str:
    return json.dumps({"version_info": version, "resources": list(resources)})


def move_into_place(path: Path, text: str) -> None:
    """Writes aside, then renames onto `path` (the atomic replace Envoy watches for)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.rename(tmp, path)


@pytest.fixture
def upstreams():
    up = RecordingUpstream(["alpha", "beta", "gamma"]).start()
    yield up
    up.stop()


@pytest.mark.parametrize("kind", SIDECARS)
def test_files_move_into_place_reload_writes_in_place_do_not(tmp_path, upstreams, kind):
    """CDS (path_config_source) with an EDS cluster fed by a file, LDS by the deprecated
    `path`, RDS by a file named in the listener's HCM."""
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    lport, admin = free_port(), free_port()
    ports = upstreams.ports
    (cfg / "eds.yaml").write_text(response(assignment("e", ports["gamma"]), version="1"))
    eds_src = {"path_config_source": {"path": str(cfg / "eds.yaml")}}
    (cfg / "cds.yaml").write_text(
        response(
            static_cluster("a", ports["alpha"]),
            static_cluster("b", ports["beta"]),
            eds_cluster("e", eds_src),
            version="c1",
        )
    )
    rds_src = {"path_config_source": {"path": str(cfg / "rds.yaml")}}
    (cfg / "lds.yaml").write_text(response(listener(lport, rds_src), version="l1"))
    (cfg / "rds.yaml").write_text(response(routes("a"), version="r1"))
    boot = bootstrap(
        admin,
        {
            "cds_config": {"path_config_source": {"path": str(cfg / "cds.yaml")}},
            "lds_config": {"path": str(cfg / "lds.yaml")},
        },
    )
    proxy = start(kind, boot, tmp_path / kind)
    try:
        # the listener came up from the files, its routes and the EDS cluster's endpoints too
        assert eventually(lambda: who(lport), "alpha") == "alpha"
        assert who(lport, "/e") == "gamma"
        assert stat(admin, "cluster_manager.cds.update_success") == 1
        assert stat(admin, "listener_manager.lds.update_success") == 1

        # a write in place is not a reload (Envoy watches for files moved onto the path)
        (cfg / "rds.yaml").write_text(response(routes("b"), version="r2"))
        time.sleep(1.0)
        assert who(lport) == "alpha"

        # moved into place: the new routes serve
        move_into_place(cfg / "rds.yaml", response(routes("b"), version="r3"))
        assert eventually(lambda: who(lport), "beta") == "beta"
        assert stat(admin, "http.ingress.rds.local.update_success") == 2

        # a bad route config (a regex RE2 refuses) is rejected: the last good one serves
        move_into_place(cfg / "rds.yaml", response(routes("a", regex="(/e"), version="r4"))
        assert eventually(lambda: stat(admin, "http.ingress.rds.local.update_rejected"), 1) == 1
        assert who(lport) == "beta" and who(lport, "/e") == "gamma"

        # endpoints moved into place: the EDS cluster's traffic moves
        move_into_place(cfg / "eds.yaml", response(assignment("e", ports["alpha"]), version="2"))
        assert eventually(lambda: who(lport, "/e"), "alpha") == "alpha"

        # clusters: a file without cluster b removes it (state of the world)
        move_into_place(
            cfg / "cds.yaml",
            response(static_cluster("a", ports["alpha"]), eds_cluster("e", eds_src), version="c2"),
        )
        assert eventually(lambda: who(lport), "503") == "503"
        assert stat(admin, "cluster_manager.cds.update_success") == 2
        _, dump = admin_get(admin, "/config_dump")
        clusters = json.loads(dump)["configs"][1]
        versions = {
            c["cluster"]["name"]: c["version_info"]
            for c in clusters.get("dynamic_active_clusters", [])
        }
        assert versions == {"a": "c1", "e": "c1"}
    finally:
        proxy.stop()


@pytest.mark.parametrize("kind", SIDECARS)
def test_watched_directory_reloads_on_a_configmap_swap(tmp_path, upstreams, kind):
    """Kubernetes mounts a ConfigMap as symlinks through `..data`, swapped by a rename:
    the file's own name sees no move, `watched_directory` does."""
    cfg = tmp_path / "cm"
    cfg.mkdir()
    lport, admin = free_port(), free_port()
    ports = upstreams.ports
    v1 = cfg / "..v1"
    v1.mkdir()
    (v1 / "rds.yaml").write_text(response(routes("a"), version="r1"))
    os.symlink("..v1", cfg / "..data")
    os.symlink("..data/rds.yaml", cfg / "rds.yaml")
    rds_src = {
        "path_config_source": {
            "path": str(cfg / "rds.yaml"),
            "watched_directory": {"path": str(cfg)},
        }
    }
    lds = tmp_path / "lds.json"
    lds.write_text(response(listener(lport, rds_src), version="l1"))
    boot = bootstrap(
        admin,
        {"lds_config": {"path_config_source": {"path": str(lds)}}},
        static_clusters=[
            {k: v for k, v in static_cluster(n, ports[u]).items() if k != "@type"}
            for n, u in (("a", "alpha"), ("b", "beta"), ("e", "gamma"))
        ],
    )
    proxy = start(kind, boot, tmp_path / kind)
    try:
        assert eventually(lambda: who(lport), "alpha") == "alpha"
        v2 = cfg / "..v2"
        v2.mkdir()
        (v2 / "rds.yaml").write_text(response(routes("b"), version="r2"))
        os.symlink("..v2", cfg / "..data_tmp")
        os.rename(cfg / "..data_tmp", cfg / "..data")  # what kubelet does
        assert eventually(lambda: who(lport), "beta") == "beta"
    finally:
        proxy.stop()


def _grpc_source(delta: bool) -> dict:
    return {
        "api_config_source": {
            "api_type": "DELTA_GRPC" if delta else "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
            "set_node_on_first_message_only": True,
        },
        "resource_api_version": "V3",
    }


def _msg(d: dict):
    from sofamesh.config import protos
    from sofamesh.xds.client import message_class

    protos.import_all()
    body = {k: v for k, v in d.items() if k != "@type"}
    return json_format.ParseDict(body, message_class(d["@type"])())


@pytest.mark.parametrize("mode", ["sotw", "delta"])
@pytest.mark.parametrize("kind", SIDECARS)
async def test_api_config_source_streams_per_type(tmp_path, upstreams, kind, mode):
    """No ads_config: CDS, LDS, the EDS cluster's endpoints and the HCM's routes each come
    over their own discovery service (StreamClusters, StreamEndpoints, ... or Delta*)."""
    delta = mode == "delta"
    xds = ScriptedXds()
    xds.identifier = "xds-1"
    server = grpc.aio.server()
    xds.add_to(server)
    xds_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    lport, admin = free_port(), free_port()
    ports = upstreams.ports
    src = _grpc_source(delta)
    xds.push(CDS, "1", [_msg(static_cluster("a", ports["alpha"])),
                        _msg(static_cluster("b", ports["beta"])), _msg(eds_cluster("e", src))])  # fmt: skip
    xds.push(EDS, "1", [_msg(assignment("e", ports["gamma"]))])
    xds.push(LDS, "1", [_msg(listener(lport, src))])
    xds.push(RDS, "1", [_msg(routes("a"))])
    xds_cluster = {k: v for k, v in static_cluster("xds-grpc", xds_port).items() if k != "@type"}
    xds_cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": _T + "extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    boot = bootstrap(admin, {"cds_config": src, "lds_config": src}, static_clusters=[xds_cluster])
    proxy = None
    try:
        proxy = await asyncio.to_thread(start, kind, boot, tmp_path / kind)
        assert await asyncio.to_thread(eventually, lambda: who(lport), "alpha") == "alpha"
        assert await asyncio.to_thread(who, lport, "/e") == "gamma"
        prefix = "Delta" if delta else "Stream"
        names = {"Clusters", "Endpoints", "Listeners", "Routes"}
        assert {s for s in xds.streams} == {prefix + n for n in names}, xds.streams
        # each stream asked for its own type only
        for t in (CDS, EDS, LDS, RDS):
            assert any(r.type_url == t for r in xds.requests)
        # set_node_on_first_message_only: the node once per stream, on its first request
        with_node = [r for r in xds.requests if r.HasField("node")]
        assert sorted(r.type_url for r in with_node) == sorted([CDS, EDS, LDS, RDS])
        assert all(r.node.id.startswith("sidecar~") for r in with_node)

        # a route change over RDS's own stream: ACKed, and the routes change
        xds.push(RDS, "2", [_msg(routes("b"))])
        assert (await xds.answer(RDS)).error_detail.code == 0
        assert await asyncio.to_thread(eventually, lambda: who(lport), "beta") == "beta"
        # a bad one is NACKed and the last good one keeps serving
        xds.push(RDS, "3", [_msg(routes("a", regex="(/e"))])
        nack = await xds.answer(RDS)
        assert nack.error_detail.code != 0 and "(/e" in nack.error_detail.message
        assert await asyncio.to_thread(who, lport) == "beta"
        # endpoints over EDS's own stream
        xds.push(EDS, "2", [_msg(assignment("e", ports["alpha"]))])
        assert (await xds.answer(EDS)).error_detail.code == 0
        assert await asyncio.to_thread(eventually, lambda: who(lport, "/e"), "alpha") == "alpha"
        # one stream per subscription: each reports its own state under its own scope
        for scope in ("cluster_manager.cds", "listener_manager.lds", "cluster.e",
                      "http.ingress.rds.local"):  # fmt: skip
            name = f"{scope}.control_plane.connected_state"
            assert await asyncio.to_thread(stat, admin, name) == 1, name
            _, text = await asyncio.to_thread(
                admin_get, admin, f"/stats?type=TextReadouts&filter=^{scope}.control_plane"
            )
            assert text == f'{scope}.control_plane.identifier: "xds-1"\n', text
    finally:
        if proxy is not None:
            await asyncio.to_thread(proxy.stop)
        await server.stop(None)
