"""Registry sync (`sofamesh pilot --cluster NAME --peer URL`): real pilot processes exchange
their catalogs. A peer's services show on /v1/services with their cluster within 2 s of
registration and go within 2 s of removal; a killed peer's entries stay until the lease
ends; three pilots in a chain and in a ring see each service once, owned by its cluster;
bad peer input is rejected, counted and named; a real Envoy 1.40 fed by one pilot routes to
a service registered in the other, its EDS endpoint carrying the owner cluster."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import free_port
from tests.integration.pilot.conftest import SIDECARS, PilotProcess, ads_sidecar, http
from tests.integration.pilot.test_rest_api import check, response_schema
from tests.support.envoy import admin_get
from tests.support.http_upstream import RecordingUpstream
from tests.support.servers import EtcdServer
from tests.support.wait import wait_until


def start_pilots(tmp_path, links: dict[str, list[str]], lease: float = 10.0) -> dict:
    """Pilots named by cluster; links[name]: the clusters it names with --peer."""
    pilots = {n: PilotProcess(tmp_path / n) for n in links}
    for n, p in pilots.items():
        p.extra = ["--cluster", n, "--peer-lease", str(lease)]
        for other in links[n]:
            p.extra += ["--peer", pilots[other].api]
    started = []
    try:
        for p in pilots.values():
            started.append(p.start())
    except BaseException:
        for p in started:
            p.stop()
        raise
    return pilots


def stop_all(pilots: dict) -> None:
    for p in pilots.values():
        p.stop()


def get(p: PilotProcess, template: str, path: str):
    """GET, the answer checked against openapi.yaml."""
    status, out = http("GET", p.api + path)
    schema = response_schema(template, "get", status)
    if schema is not None:
        check(schema, out)
    return status, out


def services(p: PilotProcess) -> dict[str, dict]:
    status, out = get(p, "/v1/services", "/v1/services")
    assert status == 200, out
    return {s["name"]: s for s in out["services"]}


def service(p: PilotProcess, name: str) -> dict | None:
    status, out = get(p, "/v1/services/{service}", f"/v1/services/{name}")
    return out if status == 200 else None


def peers(p: PilotProcess) -> dict:
    status, out = get(p, "/v1/peers", "/v1/peers")
    assert status == 200, out
    return out


def metric(p: PilotProcess, line_start: str) -> float:
    status, text = http("GET", p.api + "/metrics")
    assert status == 200
    for line in str(text).splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def timed(pred, limit: float, what: str) -> float:
    """Seconds until pred() holds; fails past `limit` (plus slack for a loaded machine is
    NOT given: the issue's bound is the assertion)."""
    t0 = time.monotonic()
    wait_until(pred, limit, what, step=0.01)
    return time.monotonic() - t0


def test_peer_services_listed_with_their_cluster_within_2s(tmp_path):
    ps = start_pilots(tmp_path, {"east": ["west"], "west": ["east"]})
    east, west = ps["east"], ps["west"]
    try:
        took = []
        for k in range(5):
            name = f"orders-{k}"
            west.register(
                name,
                "o1",
                address="10.1.0.7",
                port=8080 + k,
                protocol="grpc",
                labels={"version": "v2"},
                locality={"region": "west-1", "zone": "w1a"},
                ttl_seconds=60,
            )
            took.append(timed(lambda n=name: n in services(east), 2.0, f"{name} listed on east"))
            row = services(east)[name]
            assert row["clusters"] == ["west"], row
            assert row["instances"] == 1 and row["registries"] == ["peer"], row
            inst = service(east, name)["instances"][0]
            assert inst["cluster"] == "west"
            assert (inst["address"], inst["port"], inst["protocol"]) == (
                "10.1.0.7",
                8080 + k,
                "grpc",
            )
            assert inst["healthy"] is True
            assert inst["labels"]["version"] == "v2"
            assert inst["locality"] == {"region": "west-1", "zone": "w1a", "sub_zone": ""}
            # the owner lists it as its own
            assert services(west)[name]["clusters"] == ["west"]

        # health travels too: an instance marked unhealthy on the owner is unhealthy here
        west.register(
            "orders-0", "o1", address="10.1.0.7", port=8080, protocol="grpc", healthy=False
        )
        wait_until(
            lambda: service(east, "orders-0")["instances"][0]["healthy"] is False,
            2.0,
            "health synced",
        )

        # the other way, and one name in both clusters lists both
        east.register("orders-1", "e1", address="10.2.0.9", port=9000)
        east.register("billing", "b1", address="10.2.0.8", port=9001)
        wait_until(lambda: "billing" in services(west), 2.0, "billing on west")
        assert services(west)["billing"]["clusters"] == ["east"]
        wait_until(
            lambda: services(west)["orders-1"]["clusters"] == ["east", "west"],
            2.0,
            "orders-1 in both clusters",
        )
        assert services(west)["orders-1"]["instances"] == 2
        # each pilot lists its own service once: not echoed back by the peer
        assert services(east)["billing"]["instances"] == 1

        # removal: gone from the peer within 2 s
        for k in range(2, 5):
            name = f"orders-{k}"
            west.deregister(name, "o1")
            took.append(
                timed(lambda n=name: n not in services(east), 2.0, f"{name} gone from east")
            )
        assert max(took) < 2.0, took
        st = peers(east)
        assert st["cluster"] == "east"
        (peer,) = st["peers"]
        assert peer["cluster"] == "west" and peer["state"] == "up" and peer["last_error"] == ""
    finally:
        stop_all(ps)


def test_killed_peer_kept_until_lease_then_dropped(tmp_path):
    lease = 4.0
    ps = start_pilots(tmp_path, {"east": ["west"], "west": ["east"]}, lease=lease)
    east, west = ps["east"], ps["west"]
    try:
        west.register("reviews", "r1", address="10.1.0.1", port=9080)
        wait_until(lambda: "reviews" in services(east), 2.0, "reviews on east")
        t_kill = time.monotonic()
        west.stop(signal.SIGKILL)
        # the last catalog keeps serving while the lease runs
        wait_until(lambda: peers(east)["peers"][0]["state"] == "unreachable", 3.0, "peer down")
        while time.monotonic() - t_kill < lease - 1.0:
            assert "reviews" in services(east), "dropped before the lease ended"
            time.sleep(0.2)
        wait_until(lambda: "reviews" not in services(east), 3.0, "reviews dropped at lease end")
        assert time.monotonic() - t_kill >= lease - 0.5
        assert metric(east, 'pilot_sync_leases_expired_total{peer="') == 1
        assert peers(east)["peers"][0]["state"] == "expired"
        # the peer back: its entries return (a new process, fresh catalog version)
        west.start()
        west.register("reviews", "r2", address="10.1.0.2", port=9080)
        wait_until(lambda: "reviews" in services(east), 5.0, "reviews back")
        # r1 too: west's store kept it (no TTL) across the kill
        wait_until(
            lambda: (
                sorted(i["address"] for i in service(east, "reviews")["instances"])
                == ["10.1.0.1", "10.1.0.2"]
            ),
            2.0,
            "both of west's instances on east",
        )
        assert peers(east)["peers"][0]["state"] == "up"
    finally:
        stop_all(ps)


@pytest.mark.parametrize("ring", [False, True], ids=["chain", "ring"])
def test_three_pilots_each_service_once_with_its_owner(tmp_path, ring):
    links = {"a": ["b"], "b": ["a", "c"], "c": ["b"]}
    if ring:
        links = {"a": ["b", "c"], "b": ["a", "c"], "c": ["b", "a"]}
    ps = start_pilots(tmp_path, links)
    try:
        for n, p in ps.items():
            p.register(f"svc-{n}", f"{n}1", address=f"10.0.0.{ord(n)}", port=8000)
        for n, p in ps.items():
            wait_until(
                lambda p=p: {"svc-a", "svc-b", "svc-c"} <= set(services(p)),
                3.0,
                f"every service on {n}",
            )
        time.sleep(1.0)  # let any echo come round: it must not
        for n, p in ps.items():
            rows = services(p)
            for owner in "abc":
                row = rows[f"svc-{owner}"]
                assert row["clusters"] == [owner], (n, row)
                assert row["instances"] == 1, (n, row)
        # on a, c's entries come from one peer: the shortest path
        owners = {peer["cluster"]: peer["owners"] for peer in peers(ps["a"])["peers"]}
        used = [
            (peer, o["path"])
            for peer, os_ in owners.items()
            for own, o in os_.items()
            if own == "c" and o["used"]
        ]
        assert used == ([("c", ["c"])] if ring else [("b", ["c", "b"])]), owners
        assert all("a" not in o["path"] for os_ in owners.values() for o in os_.values())
        # the owner drops it: gone everywhere
        ps["c"].deregister("svc-c", "c1")
        for n in "ab":
            wait_until(lambda n=n: "svc-c" not in services(ps[n]), 2.0, f"svc-c gone from {n}")
        time.sleep(1.0)
        assert "svc-c" not in services(ps["a"])  # and not brought back by a relay
    finally:
        stop_all(ps)


def test_silent_owner_dropped_everywhere_past_its_lease(tmp_path):
    """Chain a-b-c: c killed; b keeps c's entries until its lease on c ends, then a loses
    them too, though a's own peer (b) never stopped answering."""
    lease = 3.0
    ps = start_pilots(tmp_path, {"a": ["b"], "b": ["a", "c"], "c": ["b"]}, lease=lease)
    try:
        ps["c"].register("svc-c", "c1", address="10.0.0.99", port=8000)
        wait_until(lambda: "svc-c" in services(ps["a"]), 3.0, "svc-c on a")
        t_kill = time.monotonic()
        ps["c"].stop(signal.SIGKILL)
        while time.monotonic() - t_kill < lease - 1.0:
            assert "svc-c" in services(ps["a"]), "dropped before the lease ended"
            time.sleep(0.2)
        wait_until(lambda: "svc-c" not in services(ps["a"]), 4.0, "svc-c dropped on a")
        assert "svc-c" not in services(ps["b"])
        assert peers(ps["a"])["peers"][0]["state"] == "up"  # b: alive all along
    finally:
        stop_all(ps)


@pytest.fixture
def etcd():
    server = EtcdServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


def test_replicas_of_one_cluster_as_peers(etcd, tmp_path):
    """west peers with both replicas of east (one etcd): east's services once; one replica
    killed, the other's answers are used at once, not the dead one's last catalog."""
    store = f"etcd://{etcd.endpoint}/sync-{time.monotonic_ns()}"
    e1 = PilotProcess(tmp_path / "e1", store=store)
    e2 = PilotProcess(tmp_path / "e2", store=store)
    west = PilotProcess(tmp_path / "west")
    for e in (e1, e2):
        e.extra = ["--cluster", "east"]
    west.extra = ["--cluster", "west", "--peer", e1.api, "--peer", e2.api]
    try:
        e1.start()
        e2.start()
        west.start()
        e1.register("cart", "c1", address="10.3.0.1", port=80)
        wait_until(lambda: "cart" in services(west), 3.0, "cart on west")
        time.sleep(0.5)
        assert services(west)["cart"] == {
            **services(west)["cart"],
            "instances": 1,
            "clusters": ["east"],
        }
        e1.stop(signal.SIGKILL)
        wait_until(lambda: peers(west)["peers"][0]["state"] == "unreachable", 5.0, "e1 down")
        e2.register("cart", "c2", address="10.3.0.2", port=80)
        wait_until(lambda: len(service(west, "cart")["instances"]) == 2, 2.0, "c2 through e2")
        e2.deregister("cart", "c1")
        wait_until(
            lambda: [i["address"] for i in service(west, "cart")["instances"]] == ["10.3.0.2"],
            2.0,
            "c1 removed through e2",
        )
    finally:
        for p in (west, e2, e1):
            p.stop()


class FakePeer:
    """A stand-in peer pilot answering /v1/catalog with whatever `body` holds (bytes)."""

    def __init__(self) -> None:
        self.body = b"{}"
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                time.sleep(0.05)  # a long poll's pace, not a busy loop
                body = fake.body
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass  # the pilot gave up on this poll (it is stopping)

            def log_message(self, *a) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def catalog(cluster: str, version: str, owners: list) -> bytes:
    return json.dumps({"cluster": cluster, "version": version, "owners": owners}).encode()


def own(cluster: str, *names: str, port: int = 8080) -> dict:
    return {
        "cluster": cluster,
        "path": [cluster],
        "services": [
            {"name": n, "instances": [{"instance_id": "i1", "address": "10.9.0.1", "port": port}]}
            for n in names
        ],
    }


def test_bad_peer_input_rejected_counted_and_named(tmp_path):
    fake = FakePeer()
    lease = 12.0  # longer than the cases below take (a rejection pauses that peer's poll 1 s)
    a = PilotProcess(tmp_path / "a")
    a.extra = [
        "--cluster",
        "a",
        "--peer",
        f"http://127.0.0.1:{fake.port}",
        "--peer-lease",
        str(lease),
    ]
    peer_url = f"http://127.0.0.1:{fake.port}"
    try:
        fake.body = catalog("b", "1", [own("b", "good")])
        a.start()
        wait_until(lambda: "good" in services(a), 3.0, "good listed")
        assert services(a)["good"]["clusters"] == ["b"]

        def rejected(reason: str) -> float:
            return metric(a, f'pilot_sync_rejected_total{{peer="{peer_url}",reason="{reason}"}}')

        cases = [
            (b"{not json", "malformed", "catalog: invalid JSON"),
            (
                catalog("b", "2", [own("b", "good", port=70000)]),
                "malformed",
                "owners[0].services[0].instances[0].port: must be from 1 to 65535, got 70000",
            ),
            (
                catalog("b", "3", [{"cluster": "b", "path": ["b"], "services": "x"}]),
                "malformed",
                "owners[0].services: must be a list",
            ),
            # b claims c's entries first-hand (the path does not run through b)
            (
                catalog("b", "4", [own("b", "good"), own("c", "stolen")]),
                "claim",
                "owners[1]: peer 'b' claims entries of 'c' with path ['c']",
            ),
            (
                catalog("b", "5", [own("b", "good"), {**own("b", "x"), "path": ["c", "b"]}]),
                "malformed",
                "owners[1].cluster: 'b' appears twice",
            ),
            (
                catalog("z", "6", [own("z", "good")]),
                "cluster",
                "cluster: the peer was 'b' and now says 'z'",
            ),
            (
                catalog("a", "7", [own("a", "good")]),
                "cluster",
                "cluster: the peer says it is 'a', this pilot's own",
            ),
        ]
        t_last_good = time.monotonic()
        for body, reason, text in cases:
            before = rejected(reason)
            fake.body = body
            wait_until(lambda r=reason, b=before: rejected(r) > b, 3.0, f"{reason} counted")
            err = peers(a)["peers"][0]["last_error"]
            assert text in err, err
            status, probs = http("GET", a.api + "/debug/problems")
            assert text in probs["registries"][f"peer {peer_url}"]
            # nothing of it used; the last good catalog still served; the pilot still serves
            names = set(services(a))
            assert "good" in names and "stolen" not in names, names
            a.register("local", "l1", address="10.0.0.1", port=80)
        # a peer sending only garbage is as good as silent: its entries go at the lease end
        wait_until(lambda: "good" not in services(a), lease + 3.0, "good dropped after lease")
        assert time.monotonic() - t_last_good >= lease - 0.5
        # and a good answer again restores them, the error cleared
        fake.body = catalog("b", "8", [own("b", "good")])
        wait_until(lambda: "good" in services(a), 3.0, "good back")
        assert peers(a)["peers"][0]["last_error"] == ""
        # bad requests on this pilot's own catalog endpoint: 400 naming the field
        for q, field in (("wait=abc", "wait"), ("wait=99", "wait"), ("from=a", "from")):
            status, out = get(a, "/v1/catalog", f"/v1/catalog?{q}")
            assert status == 400 and out["field"] == field, (q, status, out)
        status, out = get(a, "/v1/catalog", "/v1/catalog?from=b")
        assert status == 200 and out["cluster"] == "a"
        assert [o["cluster"] for o in out["owners"]] == ["a"]  # b's own not sent back to b
        status, out = get(a, "/v1/catalog", "/v1/catalog?from=x")
        assert [(o["cluster"], o["path"]) for o in out["owners"]] == [
            ("a", ["a"]),
            ("b", ["b", "a"]),
        ]
        # the long poll: unchanged -> 304 after `wait`; a change -> answered at once
        v = out["version"]
        t0 = time.monotonic()
        status, _ = get(a, "/v1/catalog", f"/v1/catalog?from=x&version={v}&wait=1")
        assert status == 304 and 0.9 <= time.monotonic() - t0 < 5
        threading.Timer(0.3, lambda: a.register("late", "l1", address="10.0.0.3", port=81)).start()
        t0 = time.monotonic()
        status, out = get(a, "/v1/catalog", f"/v1/catalog?from=x&version={v}&wait=20")
        assert status == 200 and out["version"] != v and time.monotonic() - t0 < 3
        assert "late" in [s["name"] for s in out["owners"][0]["services"]]
    finally:
        a.stop()
        fake.close()


def _get(port: int, host: str) -> tuple[int, str]:
    c = HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", "/", headers={"host": host})
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        c.close()


@pytest.mark.envoy
@pytest.mark.parametrize("sidecar", SIDECARS)
def test_synced_service_pushed_to_sidecar_with_its_cluster(tmp_path, sidecar):
    ps = start_pilots(tmp_path, {"east": ["west"], "west": ["east"]})
    east, west = ps["east"], ps["west"]
    up = RecordingUpstream(["w1"]).start()
    admin = free_port()
    envoy = ads_sidecar(sidecar, east.xds_port, admin, False, tmp_path / sidecar)
    try:
        envoy.start()

        def who() -> str:
            try:
                status, body = _get(east.outbound_port, "reviews")
            except OSError as e:
                return f"error {e}"
            return body.split()[0] if status == 200 else f"status {status}"

        west.register(
            "reviews",
            "r1",
            address="127.0.0.1",
            port=up.ports["w1"],
            service_port=9080,
            locality={"region": "west-1", "zone": "w1a"},
        )
        wait_until(lambda: who() == "upstream=w1", 10, "envoy on east routes to west's reviews")
        _, dump = admin_get(admin, "/config_dump?include_eds")
        eds = [
            c["endpoint_config"]
            for c in json.loads(dump)["configs"]
            if "EndpointsConfigDump" in c["@type"]
            for c in c.get("dynamic_endpoint_configs", [])
            if c["endpoint_config"]["cluster_name"] == "outbound|9080||reviews"
        ]
        assert len(eds) == 1, eds
        (loc,) = eds[0]["endpoints"]
        assert loc["locality"] == {"region": "west-1", "zone": "w1a"}
        (ep,) = loc["lb_endpoints"]
        assert ep["metadata"]["filter_metadata"]["sofamesh"] == {"cluster": "west"}
        sa = ep["endpoint"]["address"]["socket_address"]
        assert (sa["address"], sa["port_value"]) == ("127.0.0.1", up.ports["w1"])
        # removed in its cluster: Envoy on east stops routing to it
        west.deregister("reviews", "r1")
        wait_until(lambda: who() != "upstream=w1", 5, "reviews gone from envoy on east")
    finally:
        envoy.stop()
        up.stop()
        stop_all(ps)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--peer", "http://127.0.0.1:1"], "--peer needs --cluster"),
        (["--cluster", "a", "--peer", "127.0.0.1:1"], "expected http://HOST:PORT"),
        (["--cluster", "a b"], "--cluster 'a b'"),
        (["--cluster", "a", "--peer-lease", "0.5"], "--peer-lease 0.5: at least 1 second"),
    ],
)
def test_bad_sync_flags_refused_at_start(tmp_path, argv, message):
    p = PilotProcess(tmp_path)
    p.extra = argv
    out = subprocess.run(p.argv(), check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and message in out.stderr, (out.returncode, out.stderr)


def test_big_catalog_read(tmp_path):
    """A catalog over 1 MB (read off the event loop): all of it listed, the API answering."""
    fake = FakePeer()
    names = [f"bulk-{k}" for k in range(12000)]
    fake.body = catalog("b", "1", [own("b", *names)])
    assert len(fake.body) > 1 << 20
    a = PilotProcess(tmp_path / "a")
    a.extra = ["--cluster", "a", "--peer", f"http://127.0.0.1:{fake.port}"]
    try:
        a.start()
        wait_until(lambda: len(services(a)) == 12000, 30.0, "12000 services listed")
        fake.body = catalog("b", "2", [own("b", *names[:-1])])
        wait_until(lambda: "bulk-11999" not in services(a), 5.0, "one removed")
        assert len(services(a)) == 11999
    finally:
        a.stop()
        fake.close()


def test_secure_api_pilots_sync_over_mutual_tls(tmp_path):
    """--secure-api pilots sharing a root (--ca-cert/--ca-key) sync over https, each
    presenting a certificate of its CA; a pilot with a root of its own is refused at the
    handshake, and the error names it."""
    from cryptography.hazmat.primitives import serialization

    from sofamesh.pilot.ca import CertificateAuthority, spiffe_id
    from tests.integration.tls.test_pilot_doors import TD, SecurePilot
    from tests.integration.tls.test_pilot_doors import call as tls_call

    ca = CertificateAuthority(TD)
    d = tmp_path / "pki"
    d.mkdir()
    (d / "root.crt").write_bytes(ca.root_pem)
    (d / "root.key").write_bytes(
        ca._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    issued = ca.issue(spiffe_id(TD, "default", "svc-a"))
    (d / "svc-a.crt").write_bytes(issued.cert_pem)
    (d / "svc-a.key").write_bytes(issued.key_pem)
    shared = ["--trust-domain", TD, "--ca-cert", str(d / "root.crt"), "--ca-key"]
    shared += [str(d / "root.key"), "--secure-api", "true"]
    east, west = SecurePilot(tmp_path / "east"), SecurePilot(tmp_path / "west")
    lone = SecurePilot(tmp_path / "lone")  # a CA root of its own
    url = {p: f"https://127.0.0.1:{p.api_port}" for p in (east, west, lone)}
    east.extra = [*shared, "--cluster", "east", "--peer", url[west], "--peer", url[lone]]
    west.extra = [*shared, "--cluster", "west", "--peer", url[east]]
    lone.extra = ["--trust-domain", TD, "--secure-api", "true", "--cluster", "lone"]
    try:
        for p in (east, west, lone):
            p.start()
        inst = {"address": "10.5.0.1", "port": 8080}
        st, out = tls_call(west, d, "svc-a", "PUT", "/v1/services/svc-a/instances/a1", inst)
        assert st == 201, out

        def east_services():
            st, out = tls_call(east, d, "svc-a", "GET", "/v1/services")
            return {s["name"]: s for s in out["services"]} if st == 200 else {}

        wait_until(lambda: "svc-a" in east_services(), 5.0, "svc-a on east over https")
        assert east_services()["svc-a"]["clusters"] == ["west"]

        def peer_state() -> dict:
            _, status = tls_call(east, d, "svc-a", "GET", "/v1/peers")
            return {p["url"]: p for p in status["peers"]}

        # (lone started after east: first refused connections, then the handshake fails)
        wait_until(
            lambda: "CERTIFICATE_VERIFY_FAILED" in peer_state()[url[lone]]["last_error"],
            5.0,
            "the stranger's certificate named",
        )
        assert peer_state()[url[lone]]["state"] == "unreachable"
        assert peer_state()[url[west]]["state"] == "up"
        # nobody without a certificate reads the catalog
        st, _ = tls_call(east, d, None, "GET", "/v1/catalog?from=x")
        assert st == "tls-refused"
    finally:
        for p in (east, west, lone):
            p.stop()
