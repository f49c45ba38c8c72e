"""Envoy's internal listeners (bootstrap extension envoy.bootstrap.internal_listener).

A listener with `internal_listener: {}` has no address: it is reached only from a cluster
whose endpoint address is `envoy_internal_address {server_listener_name, endpoint_id}`.
The connection is an in-process pipe, made here as a `socket.socketpair()`:

    cluster endpoint (envoy_internal_address L/E) -> Host("envoy://L/E", port 0)
    any pool dials upstream.connect(loop, factory, host, cluster)
      -> cluster.tls = InternalTransport.connect(loop, factory, host)
           socketpair (a, b)
             a -> listener L's protocol factory (loop.connect_accepted_socket), as accepted
             b -> the pool's protocol (loop.create_connection(sock=b)), as connected
    no listener L in this Server (this worker): the connect fails (OSError), counted by the
    pool as Envoy counts it: upstream_cx_connect_fail, 503 UF for HTTP.

Every terminal filter (HCM, tcp_proxy, ...) and listener chains serve the pipe unchanged.
Each Server (each worker of `--concurrency N`) has its own Registry, so an internal
connection stays in the worker that made it. `buffer_size_kb` (Envoy's default 1024 KiB)
sizes both ends' kernel socket buffers: the writer is paused when the reader lags, the
flow control Envoy's user-space buffer gives. The internal_upstream transport socket's
inner `transport_socket` (raw_buffer or TLS) is the pipe's transport; its
`passthrough_metadata` is refused (config/implemented.py lists only what is done here).
"""

from __future__ import annotations

import socket
from typing import Any

from sofamesh.config.support import register_extension
from sofamesh.proxy.errors import UnsupportedConfig

BOOTSTRAP = "envoy.extensions.bootstrap.internal_listener.v3.InternalListener"
INTERNAL_UPSTREAM = (
    "type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3"
    ".InternalUpstreamTransport"
)
register_extension(INTERNAL_UPSTREAM, "sofamesh.proxy.internal_listener")
_PREFIX = "envoy://"
_DEFAULT_KB = 1024


def is_internal(lst: Any) -> bool:
    return bool(lst.HasField("internal_listener"))


def stat_name(lst: Any) -> str:
    """An internal listener's stats name without stat_prefix, as Envoy's:
    `listener.envoy_internal_<name>.downstream_cx_total`."""
    return f"envoy_internal_{lst.name}"


def host_address(addr: Any) -> tuple[str, int] | None:
    """(address, port) of a Host for an envoy.config.core.v3.Address that is internal:
    `envoy://<server_listener_name>/<endpoint_id>` and port 0, Envoy's own spelling; None
    for any other address."""
    if not addr.HasField("envoy_internal_address"):
        return None
    ia = addr.envoy_internal_address
    return f"{_PREFIX}{ia.server_listener_name}/{ia.endpoint_id}", 0


def _is_internal_host(host: Any) -> bool:
    return host.port == 0 and host.address.startswith(_PREFIX)


def buffer_size(bootstrap: Any) -> int | None:
    """The bootstrap's InternalListener buffer size in bytes, or None when the extension is
    not configured (then an internal listener is a config error, as in Envoy)."""
    from envoy.extensions.bootstrap.internal_listener.v3 import internal_listener_pb2
    from google.protobuf import json_format
    from xds.type.v3 import typed_struct_pb2

    for ext in bootstrap.bootstrap_extensions:
        tc = ext.typed_config
        msg = internal_listener_pb2.InternalListener()
        if tc.type_url.endswith("/" + BOOTSTRAP):
            tc.Unpack(msg)
        elif tc.type_url.endswith("TypedStruct"):  # udpa's or xds's: Istio's pilot-agent
            ts = typed_struct_pb2.TypedStruct()
            ts.ParseFromString(tc.value)
            if not ts.type_url.endswith("/" + BOOTSTRAP):
                continue
            json_format.ParseDict(json_format.MessageToDict(ts.value), msg)
        else:
            continue
        kb = msg.buffer_size_kb.value if msg.HasField("buffer_size_kb") else _DEFAULT_KB
        return max(kb, 1) * 1024
    return None


class Registry:
    """One Server's internal listeners by name: the protocol factory each accepts with."""

    def __init__(self, buffer: int) -> None:
        self.buffer = buffer
        self.factories: dict[str, Any] = {}

    async def connect(self, loop: Any, factory: Any, name: str, kw: dict) -> Any:
        accept = self.factories.get(name)
        if accept is None:  # Envoy: the connection fails (remote connection failure)
            raise OSError(f"no internal listener named {name!r}")
        a, b = socket.socketpair()
        try:
            for s in (a, b):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.buffer)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.buffer)
                s.setblocking(False)
            await loop.connect_accepted_socket(accept, a)
        except BaseException:
            a.close()
            b.close()
            raise
        try:
            return await loop.create_connection(factory, sock=b, **kw)
        except BaseException:
            b.close()
            raise


class InternalServer:
    """What an internal listener has in place of a bound socket (the asyncio.Server calls
    the Server and proxy.dynamic make): serving is being in the registry."""

    def __init__(self, registry: Registry, name: str, factory: Any) -> None:
        self.registry = registry
        self.name = name
        self.factory = factory
        self.sockets = [self]
        self.serving = False

    def getsockname(self) -> tuple[str, int]:
        return (f"{_PREFIX}{self.name}/", 0)

    def is_serving(self) -> bool:
        return self.serving

    async def start_serving(self) -> None:
        self.serving = True
        self.registry.factories[self.name] = self.factory

    def close(self) -> None:
        if self.serving and self.registry.factories.get(self.name) is self.factory:
            del self.registry.factories[self.name]
        self.serving = False

    async def wait_closed(self) -> None:
        pass


def registry(server: Any, path: str) -> Registry:
    """The Server's Registry, made at its first internal listener; without the bootstrap
    extension an internal listener is a config error (Envoy: "InternalListener bootstrap
    extension is required")."""
    reg = getattr(server, "internal", None)
    if reg is None:
        size = buffer_size(server.bootstrap)
        if size is None:
            raise UnsupportedConfig(
                f"{path}.internal_listener: an internal listener needs the bootstrap extension "
                "envoy.bootstrap.internal_listener"
            )
        reg = server.internal = Registry(size)
    return reg


class InternalTransport:
    """A cluster's transport when its endpoints may be internal addresses: an internal host
    is dialled through the Server's Registry (inner: the internal_upstream transport's
    own `transport_socket`, or the cluster's, as a proxy.tls.UpstreamTransport or None);
    any other host as usual."""

    def __init__(self, server: Any, inner: Any) -> None:
        self.server = server
        self.inner = inner  # proxy.tls.UpstreamTransport | None

    def contexts(self) -> list:
        return self.inner.contexts() if self.inner is not None else []

    def learn(self, cla: Any) -> None:
        if self.inner is not None:
            self.inner.learn(cla)

    def connect_kw(self, host: Any) -> dict:
        return self.inner.connect_kw(host) if self.inner is not None else {}

    def connect(self, loop: Any, factory: Any, host: Any) -> Any:
        if not _is_internal_host(host):
            if self.inner is not None:
                return self.inner.connect(loop, factory, host)
            return loop.create_connection(factory, host.address, host.port)
        name = host.address[len(_PREFIX) :].rpartition("/")[0]
        reg = getattr(self.server, "internal", None)
        if reg is None:  # no internal listener at all: as a missing one
            reg = Registry(_DEFAULT_KB * 1024)
        return reg.connect(loop, factory, name, self.connect_kw(host))


def cluster_transport(c: Any, server: Any, path: str, h2: bool) -> Any:
    """A cluster's `tls` (upstream.connect dials through it): an InternalTransport when the
    cluster's transport socket is internal_upstream or an endpoint is internal, else None
    (the caller makes the usual one)."""
    from sofamesh.proxy import tls

    ts = c.transport_socket
    internal_ts = c.HasField("transport_socket") and ts.typed_config.type_url == INTERNAL_UPSTREAM
    has_internal = any(
        lbe.endpoint.address.HasField("envoy_internal_address")
        for e in c.load_assignment.endpoints
        for lbe in e.lb_endpoints
    )
    if not internal_ts and not has_internal:
        return None
    inner_c = c
    if internal_ts:
        from envoy.extensions.transport_sockets.internal_upstream.v3 import (
            internal_upstream_pb2,
        )

        iu = internal_upstream_pb2.InternalUpstreamTransport()
        ts.typed_config.Unpack(iu)
        if iu.passthrough_metadata:
            raise UnsupportedConfig(
                f"{path}.transport_socket.typed_config.passthrough_metadata: "
                "InternalUpstreamTransport.passthrough_metadata is not implemented by sofamesh"
            )
        inner_c = type(c)()
        inner_c.CopyFrom(c)
        inner_c.ClearField("transport_socket")
        if iu.HasField("transport_socket"):
            inner_c.transport_socket.CopyFrom(iu.transport_socket)
    inner = tls.upstream_transport(inner_c, server.stats, path, server, h2=h2)
    return InternalTransport(server, inner)


def adopt_hosts(server: Any, cluster: Any, hosts: list) -> None:
    """An EDS assignment with internal hosts for a cluster without an internal transport:
    the cluster dials through one from now on."""
    if cluster.tls is None and any(_is_internal_host(h) for h in hosts):
        cluster.tls = InternalTransport(server, None)


async def serve(server: Any, name: str, factory: Any, path: str, serve_now: bool) -> Any:
    """The InternalServer of internal listener `name` (static or from LDS)."""
    srv = InternalServer(registry(server, path), name, factory)
    if serve_now:
        await srv.start_serving()
    return srv
