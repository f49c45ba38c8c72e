"""The Kubernetes adapter against a fake API server that speaks the real list/watch wire
format; the fake itself is checked against the official client (kubernetes_asyncio)."""

from __future__ import annotations

import asyncio
import json

import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import watch as k8s_watch

from sofamesh.pilot import registries
from tests.support.kube_api import FakeKubeAPI, endpoint, endpoint_slice, service, status_410
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

FQDN = "reviews.shop.svc.cluster.local"


@pytest.fixture
async def api():
    fake = FakeKubeAPI()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


def seed(api: FakeKubeAPI) -> None:
    api.apply(
        service(
            "reviews",
            "shop",
            ports=[
                {"name": "http-web", "port": 80, "protocol": "TCP", "targetPort": 9080},
                {
                    "name": "grpc",
                    "port": 7070,
                    "protocol": "TCP",
                    "targetPort": 7070,
                    "appProtocol": "grpc",
                },
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
            ],
        )
    )
    api.apply(
        endpoint_slice(
            "reviews",
            "reviews-abc12",
            "shop",
            ports=[
                {"name": "http-web", "port": 9080, "protocol": "TCP"},
                {"name": "grpc", "port": 7070, "protocol": "TCP", "appProtocol": "grpc"},
            ],
            endpoints=[
                endpoint("10.244.1.5", "reviews-v1-7d9f-x1", ns="shop", zone="zone-a"),
                endpoint(
                    "10.244.2.6",
                    "reviews-v2-5c8b-y2",
                    ns="shop",
                    ready=False,
                    zone="zone-b",
                    node="node-2",
                ),
            ],
        )
    )


class _Resp:
    def __init__(self, body: object) -> None:
        self.data = json.dumps(body)


async def test_fake_speaks_what_the_official_client_reads(api):
    seed(api)
    cfg = k8s.Configuration(host=api.url)
    async with k8s.ApiClient(cfg) as ac:
        core, disc = k8s.CoreV1Api(ac), k8s.DiscoveryV1Api(ac)
        svcs = await core.list_service_for_all_namespaces()
        assert isinstance(svcs, k8s.V1ServiceList)
        [svc] = svcs.items
        assert svc.metadata.name == "reviews" and svc.metadata.namespace == "shop"
        assert [(p.name, p.port, p.target_port, p.app_protocol) for p in svc.spec.ports][:2] == [
            ("http-web", 80, 9080, None),
            ("grpc", 7070, 7070, "grpc"),
        ]
        slices = await disc.list_namespaced_endpoint_slice("shop")
        [sl] = slices.items
        assert isinstance(sl, k8s.V1EndpointSlice) and sl.address_type == "IPv4"
        assert [
            (e.addresses, e.conditions.ready, e.zone, e.target_ref.name) for e in sl.endpoints
        ] == [
            (["10.244.1.5"], True, "zone-a", "reviews-v1-7d9f-x1"),
            (["10.244.2.6"], False, "zone-b", "reviews-v2-5c8b-y2"),
        ]

        # the official watch client reads the fake's watch stream
        rv = svcs.metadata.resource_version
        w = k8s_watch.Watch()
        events = []
        api.apply(service("ratings", "shop"))
        api.delete("Service", "shop", "ratings")
        async with w.stream(
            core.list_service_for_all_namespaces, resource_version=rv, timeout_seconds=1
        ) as stream:
            async for ev in stream:
                events.append((ev["type"], ev["object"].metadata.name, type(ev["object"]).__name__))
                if len(events) == 2:
                    w.stop()
        assert events == [("ADDED", "ratings", "V1Service"), ("DELETED", "ratings", "V1Service")]

        # and its 410 Status
        api.compact()
        status = ac.deserialize(_Resp(status_410(1, api.rv)), "V1Status")
        assert status.code == 410 and status.reason == "Expired"


@pytest.fixture
async def adapter(api):
    reg = registries.build({"type": "kubernetes", "api_server": api.url, "watch_timeout": 30})
    changes: list[str] = []
    try:
        yield reg, changes
    finally:
        await reg.stop()


async def test_list_maps_services_and_endpoint_slices(api, adapter):
    seed(api)
    api.apply(
        service("legacy", "shop", type="ExternalName", externalName="db.example.com", ports=[])
    )
    reg, changes = adapter
    await reg.start(changes.append)
    snap = reg.snapshot()
    assert set(snap.services) == {FQDN}
    svc = snap.services[FQDN]
    assert svc.namespace == "shop" and svc.registry == "kubernetes"
    assert [(p.number, p.protocol, p.name) for p in svc.ports] == [
        (80, "http", "http-web"),
        (7070, "grpc", "grpc"),
    ]
    assert dict(svc.labels) == {"app": "reviews"}
    got = {
        (i.address, i.port, i.service_port, i.protocol, i.healthy, i.locality.zone)
        for i in snap.instances[FQDN]
    }
    assert got == {
        ("10.244.1.5", 9080, 80, "http", True, "zone-a"),
        ("10.244.1.5", 7070, 7070, "grpc", True, "zone-a"),
        ("10.244.2.6", 9080, 80, "http", False, "zone-b"),
        ("10.244.2.6", 7070, 7070, "grpc", False, "zone-b"),
    }
    assert len({i.instance_id for i in snap.instances[FQDN]}) == 4
    assert changes == ["kubernetes"]


async def test_watch_follows_changes_from_the_listed_version(api, adapter):
    seed(api)
    reg, _ = adapter
    await reg.start(lambda n: None)
    listed_rv = api.rv
    await until(lambda: len(api.watchers) == 2, what="two watches")
    for plural in ("services", "endpointslices"):
        [q] = api.watch_requests(plural)
        assert q["resourceVersion"] == str(listed_rv)
        assert q["allowWatchBookmarks"] == "true"

    # a pod becomes ready, a new pod is added (the controller updates the slice)
    api.apply(
        endpoint_slice(
            "reviews",
            "reviews-abc12",
            "shop",
            ports=[
                {"name": "http-web", "port": 9080, "protocol": "TCP"},
            ],
            endpoints=[
                endpoint("10.244.1.5", "reviews-v1-7d9f-x1", ns="shop"),
                endpoint("10.244.2.6", "reviews-v2-5c8b-y2", ns="shop"),
                endpoint(
                    "10.244.3.7", "reviews-v3-1a2b-z3", ns="shop", ready=None
                ),  # unknown: ready
            ],
        )
    )
    await until(
        lambda: (
            sorted((i.address, i.healthy) for i in reg.snapshot().instances[FQDN])
            == [("10.244.1.5", True), ("10.244.2.6", True), ("10.244.3.7", True)]
        ),
        what="slice update",
    )

    # a second slice for the same service (the controller splits large services)
    api.apply(
        endpoint_slice(
            "reviews",
            "reviews-def34",
            "shop",
            ports=[{"name": "http-web", "port": 9080, "protocol": "TCP"}],
            endpoints=[endpoint("10.244.4.8", "reviews-v3-9x", ns="shop")],
        )
    )
    await until(lambda: len(reg.snapshot().instances[FQDN]) == 4, what="second slice")

    api.delete("Service", "shop", "reviews")
    await until(lambda: FQDN not in reg.snapshot().services, what="service deletion")
    assert reg.stats["services_lists"] == 1 and reg.stats["endpointslices_lists"] == 1


async def test_bookmarks_move_the_resume_version(api, adapter):
    seed(api)
    reg, _ = adapter
    await reg.start(lambda n: None)
    await until(lambda: len(api.watchers) == 2, what="watches")
    # changes elsewhere in the cluster move the version; bookmarks carry it to the watcher
    api.apply(service("unrelated", "other"))
    api.delete("Service", "other", "unrelated")
    api.rv += 40  # writes to other resource types
    api.bookmark()
    await until(lambda: reg.stats["bookmarks"] == 2, what="bookmarks")
    # the stream ends (timeoutSeconds, a load balancer): it resumes from the bookmark
    api.drop_watches()
    await until(lambda: len(api.watch_requests("endpointslices")) == 2, what="re-watch")
    assert api.watch_requests("endpointslices")[-1]["resourceVersion"] == str(api.rv)
    assert reg.stats["services_relists"] == 0 and len(api.list_requests("services")) == 1


@pytest.mark.parametrize("as_http", [False, True], ids=["error-event", "http-410"])
async def test_410_expired_relists(as_http, adapter, api):
    api.expire_as_http = as_http
    seed(api)
    reg, _ = adapter
    await reg.start(lambda n: None)
    await until(lambda: len(api.watchers) == 2, what="watches")

    # the pilot loses the API server for a while; meanwhile the service changes and the
    # server's history is compacted past the version the pilot holds
    api.partition()
    api.delete("EndpointSlice", "shop", "reviews-abc12")
    api.apply(
        endpoint_slice(
            "reviews",
            "reviews-new99",
            "shop",
            ports=[{"name": "http-web", "port": 9080, "protocol": "TCP"}],
            endpoints=[endpoint("10.244.9.9", "reviews-v4-q", ns="shop")],
        )
    )
    api.compact()
    await asyncio.sleep(0.3)
    api.heal()

    await until(
        lambda: (
            [(i.address, i.service_port) for i in reg.snapshot().instances.get(FQDN, [])]
            == [("10.244.9.9", 80)]
        ),
        timeout=10,
        what="state after relist",
    )
    assert reg.stats["endpointslices_relists"] >= 1
    assert len(api.list_requests("endpointslices")) >= 2
    assert reg.stats["endpointslices_watch_errors"] >= 1  # the 503s while partitioned


async def test_expired_error_event_on_an_open_watch(api, adapter):
    seed(api)
    reg, _ = adapter
    await reg.start(lambda n: None)
    await until(lambda: len(api.watchers) == 2, what="watches")
    api.expire_watches()
    await until(
        lambda: reg.stats["services_relists"] == 1 and reg.stats["endpointslices_relists"] == 1,
        what="relists",
    )
    await until(lambda: len(api.watchers) == 2, what="watching again")
    api.apply(service("ratings", "shop"))
    await until(
        lambda: "ratings.shop.svc.cluster.local" in reg.snapshot().services,
        what="events after relist",
    )


async def test_bad_watch_lines_are_counted_and_skipped(api, adapter):
    seed(api)
    reg, _ = adapter
    await reg.start(lambda n: None)
    await until(lambda: len(api.watchers) == 2, what="watches")
    api.inject_raw(b"{not json")
    api.inject_raw(b'{"type": "ADDED", "object": {"metadata": {}}}')
    api.apply(service("ratings", "shop"))
    await until(
        lambda: "ratings.shop.svc.cluster.local" in reg.snapshot().services,
        what="good event after bad ones",
    )
    assert reg.stats["bad_events"] == 4  # two bad lines, on each of the two watches
    assert FQDN in reg.snapshot().services


async def test_namespaced_and_bearer_token(api, tmp_path):
    seed(api)
    api.apply(service("web", "other"))
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    reg = registries.build(
        {
            "type": "kubernetes",
            "api_server": api.url,
            "namespaces": ["shop"],
            "token_file": str(token),
        }
    )
    try:
        await reg.start(lambda n: None)
        assert set(reg.snapshot().services) == {FQDN}
        paths = {p for _, p, _ in api.requests}
        assert paths == {
            "/api/v1/namespaces/shop/services",
            "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices",
        }
        assert set(api.authorizations) == {"Bearer s3cret"}
    finally:
        await reg.stop()


def make_tls(tmp_path):
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl CLI)."""
    import shutil
    import ssl
    import subprocess

    openssl = shutil.which("openssl")
    assert openssl, "openssl CLI needed for the TLS test"

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=tmp_path, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=sofamesh-test-ca",
    )
    run("req", *ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=kube-apiserver")
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run(
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.crt",
        "-days",
        "1",
        "-extfile",
        "san.ext",
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "srv.crt", tmp_path / "srv.key")
    return ctx, tmp_path / "ca.crt"


async def test_https_with_ca_file_and_token(tmp_path):
    ctx, ca = make_tls(tmp_path)
    fake = FakeKubeAPI(ssl_context=ctx, token="t0ken")
    await fake.start()
    regs = []
    try:
        seed(fake)
        good = registries.build(
            {"type": "kubernetes", "api_server": fake.url, "ca_file": str(ca), "token": "t0ken"}
        )
        regs.append(good)
        await good.start(lambda n: None)
        assert FQDN in good.snapshot().services

        # an unknown CA is refused; so is a wrong token: nothing served, errors counted
        no_ca = registries.build(
            {"type": "kubernetes", "api_server": fake.url, "token": "t0ken", "connect_timeout": 0.5}
        )
        bad_token = registries.build(
            {
                "type": "kubernetes",
                "api_server": fake.url,
                "ca_file": str(ca),
                "token": "nope",
                "connect_timeout": 0.5,
            }
        )
        regs += [no_ca, bad_token]
        for reg in (no_ca, bad_token):
            await reg.start(lambda n: None)
            assert reg.snapshot().services == {}
            assert reg.stats["services_watch_errors"] >= 1
        assert "Bearer nope" in fake.authorizations
    finally:
        for reg in regs:
            await reg.stop()
        await fake.stop()
