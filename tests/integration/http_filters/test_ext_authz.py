"""envoy.filters.http.ext_authz against Envoy 1.40: the same bootstrap through both proxies,
each with its own recording gRPC `envoy.service.auth.v3.Authorization` server (grpcio) that
decides by the request's `x-authz` header, or its own HTTP authorization server
(`http_service`). Compared: what the client gets (status, headers, body), what the upstream
gets (headers added, set, appended, removed), the CheckRequest's key fields, and the
`ext_authz` stats (filter and cluster scope). Cases: allow with header changes, deny with
status, headers and body, a non-OK status without a denial, the service down
(failure_mode_allow false and true, with the header), a timeout, garbage from the service,
with_request_body (whole, over the limit, partial, as bytes), per-route disabled and context
extensions, and Istio's CUSTOM policy shape: filter_enabled_metadata on an RBAC shadow
policy's effective policy id."""

from __future__ import annotations

import copy
import socket
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.protobuf import json_format

from tests.conftest import envoy_binary, free_port, sofamesh_command
from tests.integration.http_filters.conftest import (
    VOLATILE,
    Reply,
    ScriptedUpstream,
    Side,
    bootstrap,
    comparable,
    typed,
)
from tests.support.envoy import ProxyProcess
from tests.support.h2raw import END_HEADERS, END_STREAM, H2Client, headers, req

EXT_AUTHZ = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
PER_ROUTE = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
H2_OPTIONS = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": typed(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        explicit_http_config={"http2_protocol_options": {}},
    )
}


def _hv(key: str, value: str, **kw: Any) -> dict:
    return {"header": {"key": key, "value": value}, **kw}


class Authz(external_auth_pb2_grpc.AuthorizationServicer):
    """Decides by `x-authz`: allow (header changes), deny (401, headers, body), forbid
    (PERMISSION_DENIED, no denial), unauth (UNAUTHENTICATED), slow (answers after 1.5 s),
    abort (the call fails with UNAVAILABLE); records each CheckRequest."""

    def __init__(self) -> None:
        self.requests: list[external_auth_pb2.CheckRequest] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def stop(self) -> None:
        self.server.stop(0)

    def Check(self, request, context):
        self.requests.append(request)
        what = request.attributes.request.http.headers.get("x-authz", "allow")
        r = external_auth_pb2.CheckResponse()
        if what == "deny":
            r.status.code = 7
            d = r.denied_response
            d.status.code = 401
            d.body = "denied by authz\n"
            d.headers.add(**_hv("x-deny", "d1"))
            d.headers.add(**_hv("www-authenticate", "Bearer"))
            d.headers.add(**_hv("set-cookie", "a=1"))
            d.headers.add(**_hv("set-cookie", "b=2"))
        elif what == "deny-type":
            r.status.code = 7
            r.denied_response.body = "{}"
            r.denied_response.headers.add(**_hv("content-type", "application/json"))
        elif what == "forbid":
            r.status.code = 7
        elif what == "unauth":
            r.status.code = 16
        elif what == "abort":
            context.abort(grpc.StatusCode.UNAVAILABLE, "down for now")
        else:
            if what == "slow":
                time.sleep(1.5)
            ok = r.ok_response
            ok.headers.add(**_hv("x-authz-user", "alice"))
            ok.headers.add(**_hv("x-set", "new", append={"value": False}))
            ok.headers.add(**_hv("x-app", "more", append={"value": True}))
            ok.headers.add(**_hv("x-app-absent", "v", append={"value": True}))
            ok.headers.add(**_hv("x-act-add", "2", append_action="APPEND_IF_EXISTS_OR_ADD"))
            ok.headers.add(**_hv("x-act-over", "2", append_action="OVERWRITE_IF_EXISTS_OR_ADD"))
            ok.headers.add(**_hv("x-act-absent", "2", append_action="ADD_IF_ABSENT"))
            ok.headers.add(**_hv("x-act-absent2", "2", append_action="ADD_IF_ABSENT"))
            ok.headers.add(**_hv("x-act-ifex", "2", append_action="OVERWRITE_IF_EXISTS"))
            ok.headers.add(**_hv("x-act-ifex2", "2", append_action="OVERWRITE_IF_EXISTS"))
            ok.headers_to_remove.extend(["x-secret", "host", ":path"])
            ok.response_headers_to_add.add(**_hv("x-resp-added", "r1"))
            ok.response_headers_to_add.add(**_hv("x-up", "authz", append={"value": False}))
            ok.response_headers_to_add.add(**_hv("x-up2", "authz2"))
        return r

    def take(self) -> list[external_auth_pb2.CheckRequest]:
        out, self.requests = self.requests, []
        return out


class HttpAuthz:
    """An HTTP/1.1 authorization server (http_service): records each request (method, path,
    headers, body) and answers by its `x-authz` header: allow (200 with headers for the
    upstream and the client), deny (401, headers, body), teapot (418, no body),
    error (503), slow (200 after 1.5 s)."""

    http = True

    def __init__(self) -> None:
        self.up = ScriptedUpstream()  # its request parsing; the reply is ours
        self.up._reply = self._reply  # type: ignore[method-assign]
        self.port = self.up.port
        self.up.start()

    @property
    def requests(self) -> list:
        return self.up.records

    def take(self) -> list:
        out = list(self.up.records)
        self.up.records.clear()
        return out

    def stop(self) -> None:
        self.up.stop()

    def _reply(self, rec: Any, hd: dict[str, str]) -> bytes:
        what = hd.get("x-authz", "allow")
        if what == "slow":
            time.sleep(1.5)
        if what in ("allow", "slow"):
            head = [
                "HTTP/1.1 200 OK",
                "x-authz-user: alice",
                "x-set: new",
                "x-app: more",
                "x-client-ok: c1",
                "x-not-listed: n",
                "x-envoy-auth-headers-to-remove: x-secret",
                "content-type: text/plain",
            ]
            body = b"ok"
        elif what == "deny":
            head = [
                "HTTP/1.1 401 Unauthorized",
                "x-deny: d1",
                "www-authenticate: Bearer",
                "x-not-listed: n",
                "content-type: text/html",
            ]
            body = b"<b>denied</b>"
        elif what == "teapot":
            head, body = ["HTTP/1.1 418 Teapot"], b""
        else:
            head, body = ["HTTP/1.1 503 Unavailable", "x-deny: d2"], b"busy"
        head.append(f"content-length: {len(body)}")
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class Garbage:
    """A TCP server that answers anything with bytes that are not HTTP/2."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                c.recv(65536)
                c.sendall(b"HTTP/1.1 500 nonsense\r\n\r\n\x00\x01garbage" * 10)
            except OSError:
                pass
            finally:
                c.close()

    def stop(self) -> None:
        self.sock.close()


def _cluster(name: str, port: int, h2: bool = True) -> dict:
    return {
        "name": name,
        "connect_timeout": "1s",
        "type": "STATIC",
        **({"typed_extension_protocol_options": H2_OPTIONS} if h2 else {}),
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }


def ext_authz(**fields: Any) -> dict:
    cfg = {
        "grpc_service": {"envoy_grpc": {"cluster_name": "authz"}, "timeout": "1s"},
        "transport_api_version": "V3",
        **fields,
    }
    return {"name": "envoy.filters.http.ext_authz", "typed_config": typed(EXT_AUTHZ, **cfg)}


VHOST = {
    "routes": [
        {
            "match": {"prefix": "/off"},
            "route": {"cluster": "backend"},
            "typed_per_filter_config": {
                "envoy.filters.http.ext_authz": typed(PER_ROUTE, disabled=True)
            },
        },
        {
            "match": {"prefix": "/ctx"},
            "route": {"cluster": "backend"},
            "typed_per_filter_config": {
                "envoy.filters.http.ext_authz": typed(
                    PER_ROUTE,
                    check_settings={"context_extensions": {"team": "blue", "tier": "1"}},
                )
            },
        },
        {"match": {"prefix": "/"}, "route": {"cluster": "backend"}},
    ]
}


class AuthzSide:
    """One proxy, its upstream and its authorization server."""

    def __init__(self, side: Side, authz: Any) -> None:
        self.side = side
        self.authz = authz

    def __getattr__(self, name: str) -> Any:
        return getattr(self.side, name)


@pytest.fixture
def authz_pair(tmp_path: Path):
    """authz_pair(http_filters, server="grpc"|"down"|"garbage"|factory, virtual_host=VHOST)
    -> (envoy, sofamesh), each an AuthzSide."""
    started: list[tuple[ProxyProcess, ScriptedUpstream, Any]] = []

    def start_one(kind: str, filters: list[dict], server: Any, vh: dict) -> AuthzSide:
        up = ScriptedUpstream().start()
        if server == "grpc":
            authz: Any = Authz()
            aport = authz.port
        elif server == "garbage":
            authz = Garbage()
            aport = authz.port
        elif server == "down":
            authz, aport = None, free_port()  # nothing listens there
        else:
            authz = server()
            aport = authz.port
        for attempt in range(3):
            port, admin = free_port(), free_port()
            boot = bootstrap(port, admin, up.port, copy.deepcopy(filters), virtual_host=vh)
            boot["static_resources"]["clusters"].append(
                _cluster("authz", aport, h2=not hasattr(authz, "http"))
            )
            work = tmp_path / f"{kind}-{len(started)}-{attempt}"
            if kind == "envoy":
                proc = ProxyProcess.envoy(envoy_binary(), boot, work)
            else:
                proc = ProxyProcess.sofamesh(sofamesh_command(), boot, work)
            try:
                proc.start()
            except RuntimeError as e:
                proc.stop()
                if attempt < 2 and "in use" in str(e):
                    continue
                raise
            started.append((proc, up, authz))
            return AuthzSide(Side(kind, port, admin, proc, up), authz)
        raise AssertionError("unreachable")

    def start(filters: list[dict], server: Any = "grpc", virtual_host: dict | None = None):
        vh = virtual_host or VHOST
        return start_one("envoy", filters, server, vh), start_one("sofamesh", filters, server, vh)

    yield start
    for proc, up, authz in started:
        proc.stop()
        up.stop()
        if authz is not None:
            authz.stop()


# -- what is compared ------------------------------------------------------------------------
def _shown(r: Reply, port: int) -> tuple:
    """A reply less what differs by proxy: the upstream echoes its request line only."""
    status, headers = comparable(r)
    return status, headers, r.body.replace(str(port).encode(), b"PORT")


def _upstream_view(side: AuthzSide) -> list[list[tuple[str, str]]]:
    """Each upstream request's headers (lower-case names), less the per-run ones."""
    out = []
    for rec in side.upstream.records:
        hs = sorted(
            (k.lower(), v.replace(str(side.port), "PORT"))
            for k, v in rec.headers
            if k.lower() not in ("x-request-id", "host")
        )
        out.append(hs)
    side.upstream.records.clear()
    return out


def _check_view(side: AuthzSide, req: external_auth_pb2.CheckRequest) -> dict:
    """A CheckRequest's fields as both proxies should send them (ids, times and ports
    normalised)."""
    d = json_format.MessageToDict(req)["attributes"]
    port = str(side.port)
    http = d["request"]["http"]
    assert http.pop("id").isdigit()
    assert d["request"].pop("time")
    headers = http["headers"]
    assert len(headers.pop("x-request-id", "")) == 36  # a uuid, Envoy's and ours
    for k, v in list(headers.items()):
        headers[k] = v.replace(port, "PORT")
    http["host"] = http["host"].replace(port, "PORT")
    src = d["source"]["address"]["socketAddress"]
    assert src.pop("portValue") > 0
    dst = d["destination"]["address"]["socketAddress"]
    assert dst.pop("portValue") == side.port
    return d


def _same_checks(envoy: AuthzSide, ours: AuthzSide, ctx: Any) -> None:
    """The CheckRequests each service got since the last look are the same."""
    o = [_check_view(ours, r) for r in ours.authz.take()]
    e = [_check_view(envoy, r) for r in envoy.authz.take()]
    assert o == e, f"{ctx}:\nsofamesh {o}\nenvoy    {e}"


def _stats(side: AuthzSide) -> dict[str, int]:
    """The filter's stats, and the route cluster's response counts (those not 0: sofamesh
    shows every class counter from the start)."""
    return {
        k: v
        for k, v in side.stats().items()
        if k.startswith("http.ingress.ext_authz.")
        or k.startswith("cluster.backend.")
        and v
        and ".internal." not in k  # Envoy's per-origin split, which sofamesh has not
        and ".external." not in k
        and ("ext_authz" in k or k[-3:].isdigit() or k.endswith(("xx", "completed")))
    }


def _both(envoy: AuthzSide, ours: AuthzSide, method: str, path: str, headers=None, body=None):
    e = envoy.request(method, path, headers, body)
    o = ours.request(method, path, headers, body)
    assert _shown(o, ours.port) == _shown(e, envoy.port), (method, path, headers)
    return e, o


# -- the cases -------------------------------------------------------------------------------
def test_allow_and_deny_like_envoy(authz_pair):
    envoy, ours = authz_pair([ext_authz()])
    cases = [
        ("GET", "/a?q=1", {"x-authz": "allow", "x-secret": "s", "x-set": "old", "x-app": "one"}),
        (
            "GET",
            "/b",
            {
                "x-authz": "allow",
                "x-act-add": "1",
                "x-act-over": "1",
                "x-act-absent": "1",
                "x-act-ifex": "1",
            },
        ),
        ("GET", "/c", {"x-authz": "allow", "x-resp-header": "x-up=upstream"}),
        ("GET", "/c", {"x-authz": "allow", "x-resp-header": "x-up2=upstream"}),
        ("POST", "/d", {"x-authz": "deny", "x-other": "1"}),
        ("GET", "/d", {"x-authz": "deny-type"}),
        ("GET", "/e", {"x-authz": "forbid"}),
        ("GET", "/e", {"x-authz": "unauth"}),
        ("GET", "/e", {"x-authz": "abort"}),
        ("GET", "/off/x", {"x-authz": "deny"}),  # per-route disabled: no check
        ("GET", "/ctx/y", {"x-authz": "allow"}),
    ]
    for method, path, hdrs in cases:
        _both(envoy, ours, method, path, hdrs)
        assert _upstream_view(ours) == _upstream_view(envoy), (path, hdrs)
        _same_checks(envoy, ours, (path, hdrs))
    got = _stats(ours)
    assert got == _stats(envoy)
    assert got["http.ingress.ext_authz.ok"] == 5 and got["http.ingress.ext_authz.denied"] == 4
    assert got["http.ingress.ext_authz.error"] == 1
    assert got["cluster.backend.ext_authz.denied"] == 4 and got["cluster.backend.upstream_rq_401"]
    deny = ours.request("GET", "/d", {"x-authz": "deny"})
    assert deny.status == 401 and deny.body == b"denied by authz\n"
    assert deny.header("x-deny") == "d1" and deny.header("set-cookie") == "a=1,b=2"
    ours.authz.take()
    ok = ours.request("GET", "/a", {"x-authz": "allow", "x-secret": "s"})
    assert ok.status == 200 and ok.header("x-resp-added") == "r1"
    [rec] = ours.upstream.records
    assert rec.header("x-authz-user") == ["alice"] and not rec.header("x-secret")
    check = ours.authz.take()[0].attributes
    assert check.request.http.method == "GET" and check.request.http.path == "/a"
    assert check.request.http.headers[":authority"] == f"127.0.0.1:{ours.port}"
    ours.request("GET", "/ctx/1", {"x-authz": "allow"})
    assert dict(ours.authz.take()[0].attributes.context_extensions) == {
        "team": "blue",
        "tier": "1",
    }


@pytest.mark.parametrize("allow", [False, True])
def test_service_down_like_envoy(authz_pair, allow):
    extra = {"failure_mode_allow": True, "failure_mode_allow_header_add": True} if allow else {}
    envoy, ours = authz_pair([ext_authz(**extra)], server="down")
    for _ in range(3):
        _, o = _both(envoy, ours, "GET", "/x", {"x-authz": "allow"})
        assert o.status == (200 if allow else 403)
        assert _upstream_view(ours) == _upstream_view(envoy)
    got = _stats(ours)
    assert got == _stats(envoy)
    assert got["http.ingress.ext_authz.error"] == 3
    assert got["http.ingress.ext_authz.failure_mode_allowed"] == (3 if allow else 0)
    if allow:
        ours.request("GET", "/x")
        [rec] = ours.upstream.records
        assert rec.header("x-envoy-auth-failure-mode-allowed") == ["true"]


def test_status_on_error_and_timeout_like_envoy(authz_pair):
    flt = ext_authz(
        grpc_service={"envoy_grpc": {"cluster_name": "authz"}, "timeout": "0.3s"},
        status_on_error={"code": 503},
    )
    envoy, ours = authz_pair([flt])
    t0 = time.monotonic()
    _, o = _both(envoy, ours, "GET", "/slow", {"x-authz": "slow"})
    assert o.status == 503 and time.monotonic() - t0 < 3.0
    _both(envoy, ours, "GET", "/fast", {"x-authz": "allow"})
    assert _upstream_view(ours) == _upstream_view(envoy)
    assert _stats(ours) == _stats(envoy)
    assert _stats(ours)["http.ingress.ext_authz.error"] == 1


def test_garbage_from_the_service(authz_pair):
    envoy, ours = authz_pair([ext_authz()], server="garbage")
    for _ in range(3):
        _, o = _both(envoy, ours, "GET", "/g", {"x-authz": "allow"})
        assert o.status == 403
    assert _stats(ours) == _stats(envoy)
    assert _stats(ours)["http.ingress.ext_authz.error"] == 3
    # the proxy keeps serving: a route without the check still answers
    assert ours.request("GET", "/off/1").status == 200


@pytest.mark.parametrize(
    "settings",
    [
        {"max_request_bytes": 16},
        {"max_request_bytes": 16, "allow_partial_message": True},
        {"max_request_bytes": 16, "pack_as_bytes": True},
    ],
    ids=["whole", "partial", "bytes"],
)
def test_with_request_body_like_envoy(authz_pair, settings):
    envoy, ours = authz_pair([ext_authz(with_request_body=settings)])
    for body in (b"hello authz", b"x" * 16, b"y" * 40, None):
        _both(envoy, ours, "POST", "/body", {"x-authz": "allow"}, body)
        assert _upstream_view(ours) == _upstream_view(envoy), body
        _same_checks(envoy, ours, body)
    got = _stats(ours)
    assert got == _stats(envoy)
    # over the limit: 413 before any check, unless a partial body may go
    assert got["http.ingress.ext_authz.ok"] == (4 if settings.get("allow_partial_message") else 3)
    ours.request("POST", "/body", {"x-authz": "allow"}, b"hello authz")
    [req] = ours.authz.take()
    http = req.attributes.request.http
    if settings.get("pack_as_bytes"):
        assert http.raw_body == b"hello authz" and not http.body
    else:
        assert http.body == "hello authz"
    assert http.headers["x-envoy-auth-partial-body"] == "false" and http.size == 11
    big = ours.request("POST", "/body", {"x-authz": "allow"}, b"z" * 40)
    assert big.status == (200 if settings.get("allow_partial_message") else 413)


RBAC = "envoy.extensions.filters.http.rbac.v3.RBAC"


def test_istio_custom_policy_filter_enabled_metadata(authz_pair):
    """Istio's CUSTOM AuthorizationPolicy: an RBAC shadow policy (DENY action) names the
    requests the provider checks; ext_authz runs only where its effective policy id (in the
    RBAC filter's dynamic metadata) starts with istio-ext-authz."""
    rbac = {
        "name": "envoy.filters.http.rbac",
        "typed_config": typed(
            RBAC,
            shadow_rules={
                "action": "DENY",
                "policies": {
                    "istio-ext-authz-ns[default]-policy[ext-authz]-rule[0]": {
                        "permissions": [
                            {"url_path": {"path": {"prefix": "/secure"}}},
                        ],
                        "principals": [{"any": True}],
                    }
                },
            },
            shadow_rules_stat_prefix="istio_ext_authz_",
        ),
    }
    flt = ext_authz(
        with_request_body={"max_request_bytes": 8000},
        metadata_context_namespaces=["envoy.filters.http.rbac", "absent.namespace"],
        filter_enabled_metadata={
            "filter": "envoy.filters.http.rbac",
            "path": [{"key": "istio_ext_authz_shadow_effective_policy_id"}],
            "value": {"string_match": {"prefix": "istio-ext-authz"}},
        },
    )
    envoy, ours = authz_pair([rbac, flt])
    for path, hdrs in (
        ("/secure/a", {"x-authz": "deny"}),
        ("/secure/b", {"x-authz": "allow"}),
        ("/public", {"x-authz": "deny"}),
        ("/public", {"x-authz": "allow"}),
    ):
        _both(envoy, ours, "GET", path, hdrs)
        assert _upstream_view(ours) == _upstream_view(envoy)
        _same_checks(envoy, ours, path)
    got = _stats(ours)
    assert got == _stats(envoy)
    assert got["http.ingress.ext_authz.disabled"] == 2
    assert got["http.ingress.ext_authz.denied"] == 1 and got["http.ingress.ext_authz.ok"] == 1
    assert ours.request("GET", "/public/x", {"x-authz": "deny"}).status == 200
    ours.request("GET", "/secure/c", {"x-authz": "allow"})
    meta = json_format.MessageToDict(ours.authz.take()[0].attributes.metadata_context)
    assert meta["filterMetadata"]["envoy.filters.http.rbac"] == {
        "istio_ext_authz_shadow_effective_policy_id": (
            "istio-ext-authz-ns[default]-policy[ext-authz]-rule[0]"
        ),
        "istio_ext_authz_shadow_engine_result": "denied",
    }


def test_stat_prefix_and_headers_matchers_like_envoy(authz_pair):
    flt = ext_authz(
        stat_prefix="custom",
        allowed_headers={"patterns": [{"prefix": "x-"}, {"exact": "user-agent"}]},
        disallowed_headers={"patterns": [{"exact": "x-secret"}]},
    )
    envoy, ours = authz_pair([flt])
    _both(envoy, ours, "GET", "/m", {"x-authz": "allow", "x-secret": "s", "x-keep": "k", "a": "b"})
    _same_checks(envoy, ours, None)
    assert _stats(ours) == _stats(envoy)
    assert _stats(ours)["http.ingress.ext_authz.custom.ok"] == 1


def _http_authz_view(side: AuthzSide) -> list[tuple[str, str, list, bytes]]:
    """What the HTTP authorization server got: request line, headers, body."""
    out = []
    for rec in side.authz.take():
        hs = sorted((k.lower(), v.replace(str(side.port), "PORT")) for k, v in rec.headers)
        out.append((rec.method, rec.path, hs, rec.body))
    return out


def http_service(client_headers: bool, **fields: Any) -> dict:
    response = {
        "allowed_upstream_headers": {"patterns": [{"exact": "x-authz-user"}, {"exact": "x-set"}]},
        "allowed_upstream_headers_to_append": {"patterns": [{"exact": "x-app"}]},
        "allowed_client_headers_on_success": {"patterns": [{"prefix": "x-client"}]},
    }
    if client_headers:
        response["allowed_client_headers"] = {"patterns": [{"exact": "x-deny"}]}
    cfg = {
        "http_service": {
            "server_uri": {"uri": "http://authz", "cluster": "authz", "timeout": "0.5s"},
            "path_prefix": "/check",
            "authorization_request": {
                "allowed_headers": {"patterns": [{"exact": "x-authz"}, {"prefix": "x-user-"}]},
                "headers_to_add": [{"key": "x-from-proxy", "value": "1"}],
            },
            "authorization_response": response,
        },
        **fields,
    }
    return {"name": "envoy.filters.http.ext_authz", "typed_config": typed(EXT_AUTHZ, **cfg)}


@pytest.mark.parametrize("client_headers", [False, True], ids=["all-client-headers", "listed"])
def test_http_service_like_envoy(authz_pair, client_headers):
    flt = http_service(client_headers, with_request_body={"max_request_bytes": 64})
    envoy, ours = authz_pair([flt], server=HttpAuthz)
    hdrs = {"x-secret": "s", "x-app": "one", "x-set": "old", "authorization": "Bearer t"}
    cases = [
        ("GET", "/p?q=1", {"x-authz": "allow", "x-user-id": "7", "cookie": "c=1", **hdrs}, None),
        ("POST", "/p", {"x-authz": "allow", **hdrs}, b"the body"),
        ("GET", "/d", {"x-authz": "deny"}, None),
        ("GET", "/t", {"x-authz": "teapot"}, None),
        ("GET", "/e", {"x-authz": "error"}, None),
        ("GET", "/s", {"x-authz": "slow"}, None),
        ("GET", "/off/1", {"x-authz": "deny"}, None),
    ]
    for method, path, h, body in cases:
        _both(envoy, ours, method, path, h, body)
        assert _upstream_view(ours) == _upstream_view(envoy), (path, h)
        o, e = _http_authz_view(ours), _http_authz_view(envoy)
        assert o == e, f"{path}:\nsofamesh {o}\nenvoy    {e}"
    got = _stats(ours)
    assert got == _stats(envoy)
    assert got["http.ingress.ext_authz.ok"] == 2 and got["http.ingress.ext_authz.denied"] == 2
    assert got["http.ingress.ext_authz.error"] == 2
    deny = ours.request("GET", "/d", {"x-authz": "deny"})
    assert (deny.status, deny.body) == (401, b"<b>denied</b>")
    assert deny.header("www-authenticate") == "Bearer"
    assert (deny.header("x-not-listed") is None) == client_headers


def test_http_service_down_like_envoy(authz_pair):
    flt = http_service(False, failure_mode_allow=True)
    envoy, ours = authz_pair([flt], server="down")
    for _ in range(2):
        _both(envoy, ours, "GET", "/x", {"x-authz": "allow"})
        assert _upstream_view(ours) == _upstream_view(envoy)
    assert _stats(ours) == _stats(envoy)
    assert _stats(ours)["http.ingress.ext_authz.failure_mode_allowed"] == 2


def test_cluster_not_there_yet_like_envoy(authz_pair):
    """A service cluster not (yet) defined loads, as in Envoy (Istio's come by CDS); its
    checks are the service's errors."""
    flt = ext_authz(grpc_service={"envoy_grpc": {"cluster_name": "later"}, "timeout": "1s"})
    envoy, ours = authz_pair([flt])
    for _ in range(2):
        _, o = _both(envoy, ours, "GET", "/x", {"x-authz": "allow"})
        assert o.status == 403
    assert _stats(ours) == _stats(envoy)
    assert _stats(ours)["http.ingress.ext_authz.error"] == 2


def _h2(side: AuthzSide, path: str, **extra: str) -> tuple:
    with H2Client(side.port) as c:
        c.handshake()
        c.send(
            headers(1, c.block(req("GET", path, "site.example", **extra)), END_STREAM | END_HEADERS)
        )
        o = c.outcome(1)
    assert o.kind == "response", o
    hs = sorted((k, v) for k, v in o.response_headers or [] if k not in VOLATILE)
    return hs, o.body


def test_over_h2_like_envoy(authz_pair):
    """HTTP/2 downstream: the check says HTTP/2, denials and additions as over HTTP/1.1."""
    envoy, ours = authz_pair([ext_authz()])
    for what in ("allow", "deny", "forbid"):
        assert _h2(ours, "/h2", x_authz=what, x_secret="s") == _h2(
            envoy, "/h2", x_authz=what, x_secret="s"
        ), what
        assert _upstream_view(ours) == _upstream_view(envoy), what
        _same_checks(envoy, ours, what)
    assert _stats(ours) == _stats(envoy)
    ours_hs, _ = _h2(ours, "/h2", x_authz="allow")
    assert ("x-resp-added", "r1") in ours_hs
    assert ours.authz.take()[0].attributes.request.http.protocol == "HTTP/2"


@pytest.mark.parametrize("deny", [False, True])
def test_filter_enabled_and_deny_at_disable_like_envoy(authz_pair, deny):
    flt = ext_authz(
        filter_enabled={"default_value": {"numerator": 0, "denominator": "HUNDRED"}},
        deny_at_disable={"default_value": deny},
        status_on_error={"code": 429},
    )
    envoy, ours = authz_pair([flt])
    for path in ("/a", "/off/b"):
        _, o = _both(envoy, ours, "GET", path, {"x-authz": "deny"})
        assert o.status == (429 if deny and path == "/a" else 200)
    assert _stats(ours) == _stats(envoy)
    assert _stats(ours)["http.ingress.ext_authz.disabled"] == 1
    assert not ours.authz.take()
