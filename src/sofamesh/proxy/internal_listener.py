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
inner `transport_socket` (raw_buffer or TLS) is the pipe's transport.

What crosses the pipe besides bytes (Envoy's passthrough state), read by the internal
listener's connection as its own (`context(transport)`):
- filter state the downstream connection shares with its upstream
  (`set_filter_state` values with `shared_with_upstream` ONCE or TRANSITIVE, and TRANSITIVE
  ones it inherited itself): the internal connection's filter state, which the
  original_dst listener filter (`envoy.filters.listener.original_dst.local_ip` /
  `remote_ip`), RBAC `filter_state` rules and `%FILTER_STATE(...)%` read;
- `passthrough_metadata`: namespaces of the endpoint's (`host`) or the cluster's metadata,
  the internal connection's dynamic metadata (original_dst reads its
  `envoy.filters.listener.original_dst` `local` address).
Envoy keys upstream connection pools by the shared objects, so connections never mix
downstreams whose shared state differs: here a connection to an internal host that
carries shared state goes to a host of its own per distinct state (`upstream_host`), with
its own pool.
"""

from __future__ import annotations

import socket
import weakref
from typing import Any, NamedTuple

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


NONE, ONCE, TRANSITIVE = 0, 1, 2  # FilterStateValue.SharedWithUpstream


class Context(NamedTuple):
    """What an internal connection got from the connection that dialled it."""

    filter_state: dict  # key -> (string value, ONCE | TRANSITIVE)
    metadata: dict  # namespace -> dict (google.protobuf.Struct as JSON)


_PENDING: dict[int, Context] = {}  # accepted socket's fd -> context, until it has a transport
_CONTEXT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # transport -> Context


def context(transport: Any) -> Context | None:
    """The Context of an internal listener's connection (None: not internal, or nothing
    passed through)."""
    if transport is None or not (_CONTEXT or _PENDING):
        return None
    try:
        ctx = _CONTEXT.get(transport)
    except TypeError:
        return None
    if ctx is not None or not _PENDING:
        return ctx
    sock = transport.get_extra_info("socket")  # still being accepted (connection_made)
    return _PENDING.get(sock.fileno()) if sock is not None else None


def inherited(transport: Any, key: str) -> str | None:
    ctx = context(transport)
    if ctx is None:
        return None
    v = ctx.filter_state.get(key)
    return v[0] if v is not None else None


class Registry:
    """One Server's internal listeners by name: the protocol factory each accepts with."""

    def __init__(self, buffer: int) -> None:
        self.buffer = buffer
        self.factories: dict[str, Any] = {}

    async def connect(
        self, loop: Any, factory: Any, name: str, kw: dict, ctx: Context | None = None
    ) -> Any:
        accept = self.factories.get(name)
        if accept is None:  # Envoy: the connection fails (remote connection failure)
            raise OSError(f"no internal listener named {name!r}")
        a, b = socket.socketpair()
        fd = a.fileno()
        # Once the loop has a socket (connect_accepted_socket / create_connection with
        # sock=), it is the loop's: it closes it with the transport, also when the call fails
        # or is cancelled (a connect timeout). Closing it here too would close the
        # descriptor under the loop, or a new socket that reused its number: uvloop's epoll
        # then fails and aborts the process. So only a socket not yet given is closed here.
        given_a = given_b = False
        try:
            for s in (a, b):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.buffer)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.buffer)
                s.setblocking(False)
            if ctx is not None:
                _PENDING[fd] = ctx
            given_a = True
            transport, _ = await loop.connect_accepted_socket(accept, a)
            if ctx is not None:
                _CONTEXT[transport] = ctx
            _PENDING.pop(fd, None)
            given_b = True
            conn = await loop.create_connection(factory, sock=b, **kw)
            # uvloop attaches the socket object to its transport only once connection_made
            # has returned; a protocol that closed the transport in connection_made (a
            # tcp_proxy whose client has already gone) had libuv close the descriptor
            # while the object still held it, and the object would close that number again
            # when collected: by then another connection's socket (its bytes lost, then
            # uvloop's epoll aborts the process). The descriptor is libuv's from here on.
            b.detach()
            return conn
        except BaseException:
            if not given_a:
                a.close()
            if not given_b:
                b.close()  # (the listener's side, if accepted, sees its peer close)
            raise
        finally:
            _PENDING.pop(fd, None)


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

    def __init__(
        self,
        server: Any,
        inner: Any,
        passthrough: tuple = (),
        c: Any = None,
        passes_state: bool = False,
    ) -> None:
        self.server = server
        self.inner = inner  # proxy.tls.UpstreamTransport | None
        # only the internal_upstream transport socket passes filter state (Envoy: a cluster
        # that merely has internal endpoints dials them with raw_buffer, nothing passed)
        self.passes_state = passes_state
        # passthrough_metadata: ((from host?, namespace), ...); the metadata it reads
        self.passthrough = passthrough
        self.cluster_md: dict = {}
        self.host_md: dict[str, dict] = {}  # host address -> endpoint metadata (JSON)
        # hosts of their own for connections that carry shared filter state (upstream_host)
        self.shared_hosts: dict[tuple, Any] = {}
        self.shared_state: dict[Any, dict] = {}  # such a host -> its shared state
        if passthrough and c is not None:
            self.cluster_md = _struct_map(c.metadata)
            self._learn_md(c.load_assignment)

    def _learn_md(self, cla: Any) -> None:
        for e in cla.endpoints:
            for lbe in e.lb_endpoints:
                hp = host_address(lbe.endpoint.address)
                if hp is not None and lbe.HasField("metadata"):
                    self.host_md[hp[0]] = _struct_map(lbe.metadata)

    def contexts(self) -> list:
        return self.inner.contexts() if self.inner is not None else []

    def learn(self, cla: Any) -> None:
        if self.passthrough:
            self._learn_md(cla)
        if self.inner is not None:
            self.inner.learn(cla)

    def _context(self, host: Any) -> Context | None:
        shared = self.shared_state.get(host)
        md: dict = {}
        for from_host, ns in self.passthrough:
            src = self.host_md.get(host.address, {}) if from_host else self.cluster_md
            if ns in src:
                md[ns] = src[ns]
        if shared is None and not md:
            return None
        return Context(shared or {}, md)

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
        return reg.connect(loop, factory, name, self.connect_kw(host), self._context(host))


def _struct_map(md: Any) -> dict:
    from google.protobuf import json_format

    return {ns: json_format.MessageToDict(v) for ns, v in md.filter_metadata.items()}


def upstream_host(cluster: Any, host: Any, transport: Any, conn_state: Any) -> Any:
    """The host a downstream connection's upstream connection goes to: `host`, or, when
    the host is internal and the connection shares filter state with its upstream, a host
    of its own for that state (its own pool: Envoy keys pools by the shared objects). The
    shared state reaches the internal listener's connection (Context)."""
    tr = cluster.tls
    if not isinstance(tr, InternalTransport) or not tr.passes_state:
        return host
    if not _is_internal_host(host):
        return host
    shared = conn_state.shared(transport) if conn_state is not None else {}
    if not shared:
        return host
    key = (host.address, tuple(sorted(shared.items())))
    h = tr.shared_hosts.get(key)
    if h is None or h.removed:
        from sofamesh.proxy.localities import make_host

        h = make_host(host.address, host.port, host.weight, (0, "", 0, "", 0))
        tr.shared_hosts[key] = h
        tr.shared_state[h] = shared
        if len(tr.shared_hosts) > 4096:  # one per live state is enough: forget the oldest
            tr.shared_state.pop(tr.shared_hosts.pop(next(iter(tr.shared_hosts))), None)
    return h


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
        passthrough = []
        for i, pm in enumerate(iu.passthrough_metadata):
            kind = pm.kind.WhichOneof("kind")
            if kind not in ("host", "cluster"):
                raise UnsupportedConfig(
                    f"{path}.transport_socket.typed_config.passthrough_metadata[{i}].kind: "
                    f"{kind} metadata is not implemented by sofamesh (implemented: host, cluster)"
                )
            passthrough.append((kind == "host", pm.name))
        inner_c = type(c)()
        inner_c.CopyFrom(c)
        inner_c.ClearField("transport_socket")
        if iu.HasField("transport_socket"):
            inner_c.transport_socket.CopyFrom(iu.transport_socket)
    inner = tls.upstream_transport(inner_c, server.stats, path, server, h2=h2)
    return InternalTransport(
        server, inner, tuple(passthrough) if internal_ts else (), c, passes_state=internal_ts
    )


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
