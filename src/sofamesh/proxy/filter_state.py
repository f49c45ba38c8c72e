"""Filter state set on a connection by a chain's network filters, read by RBAC's
`filter_state` principals and permissions (as Envoy's FilterStateMatcher: the object's
string form against a string matcher).

Setters, in chain order:
- `envoy.filters.network.set_filter_state` (`on_new_connection`): each entry's
  `format_string` on the connection (`format_connection`);
- Istio's `istio_authn` network filter: `io.istio.peer_principal`, the peer certificate's
  first `spiffe://` URI SAN (istio/proxy's filter; nothing without a verified certificate).

A connection's values never change, so they are computed when a rule reads them, not
stored per connection: the same value Envoy computed at accept. A later entry for a key
replaces an earlier one unless the earlier is `read_only` (Envoy refuses that write, logs
it, and keeps the first).

An internal listener's connection starts with the filter state its dialling connection
shared with it (proxy/internal_listener.py `Context`): the values under every setter here,
read by `%FILTER_STATE(key:PLAIN)%`. What a connection shares with its own upstream
(`shared()`) is its ONCE and TRANSITIVE values and the TRANSITIVE ones it inherited.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from sofamesh.proxy.errors import UnsupportedConfig

ConnGetter = Callable[[Any], "str | None"]  # transport -> value (None: not set)

PEER_PRINCIPAL = "io.istio.peer_principal"
LOCAL_PRINCIPAL = "io.istio.local_principal"
_COMMAND = re.compile(r"%([A-Z0-9_]+)(?:\(([^)]*)\))?(?::([0-9]+))?%|%%")


def _ssl(transport: Any) -> Any:
    return transport.get_extra_info("ssl_object") if transport is not None else None


def peer_uri_sans(transport: Any) -> list[str]:
    """The verified peer certificate's URI SANs; read once per connection (after the
    handshake, when rules and formats ask) and kept on its SSLObject."""
    so = _ssl(transport)
    if so is None:
        return []
    sans = getattr(so, "_sofamesh_peer_uris", None)
    if sans is None:
        cert = so.getpeercert() or {}
        sans = [str(v) for t, v in cert.get("subjectAltName", ()) if t == "URI"]
        try:
            so._sofamesh_peer_uris = sans
        except AttributeError:  # an SSLObject class that takes no attributes
            pass
    return sans


def local_uri_sans(transport: Any) -> list[str]:
    so = _ssl(transport)
    return list(getattr(so.context, "_sofamesh_local_uris", ())) if so is not None else []


def _addr(info: Any, port: bool = True) -> str | None:
    if not info:
        return None
    host = str(info[0])
    if not port:
        return host
    return f"[{host}]:{info[1]}" if ":" in host else f"{host}:{info[1]}"


def _local(transport: Any) -> Any:
    from sofamesh.proxy.original_dst import local_address

    return local_address(transport)


def _peer(transport: Any) -> Any:
    from sofamesh.proxy.original_dst import remote_address

    return remote_address(transport)


def _sni(transport: Any) -> str | None:
    so = _ssl(transport)
    name = getattr(so, "_sofamesh_sni", None) if so is not None else None
    return name or None


def _inherited(key: str) -> ConnGetter:
    from sofamesh.proxy.internal_listener import inherited

    return lambda t: inherited(t, key)


def joined(values: list[str]) -> str | None:
    return ",".join(values) if values else None


# the connection commands sofamesh evaluates (Envoy's names); others are refused by name
_CONN_COMMANDS: dict[str, ConnGetter] = {
    "DOWNSTREAM_REMOTE_ADDRESS": lambda t: _addr(_peer(t)),
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": lambda t: _addr(_peer(t), False),
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": lambda t: _addr(_peer(t)),
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": lambda t: _addr(_peer(t), False),
    "DOWNSTREAM_REMOTE_PORT": lambda t: str(p[1]) if (p := _peer(t)) else None,
    "DOWNSTREAM_LOCAL_ADDRESS": lambda t: _addr(_local(t)),
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": lambda t: _addr(_local(t), False),
    "DOWNSTREAM_LOCAL_PORT": lambda t: str(p[1]) if (p := _local(t)) else None,
    # Envoy formats these on a new connection, before any TLS handshake: absent there
    # (Istio reads the identity with istio_authn, or per request on HTTP, instead)
    "DOWNSTREAM_PEER_URI_SAN": lambda t: None,
    "DOWNSTREAM_LOCAL_URI_SAN": lambda t: None,
    "REQUESTED_SERVER_NAME": _sni,
}


def format_connection(fmt: str, path: str, omit_empty: bool = False) -> ConnGetter:
    """A text format of connection commands as a getter; an absent value is written `-`
    (nothing with `omit_empty`), as Envoy's text formatter writes it."""
    absent = "" if omit_empty else "-"
    pieces: list[Any] = []
    pos = 0
    for m in _COMMAND.finditer(fmt):
        if m.start() > pos:
            pieces.append(fmt[pos : m.start()])
        pos = m.end()
        if m.group(0) == "%%":
            pieces.append("%")
            continue
        cmd, arg, width = m.group(1), m.group(2), m.group(3)
        get = _CONN_COMMANDS.get(cmd)
        if cmd == "FILTER_STATE" and arg:
            key, _, how = arg.partition(":")
            if how != "PLAIN":  # the JSON forms (default, TYPED) are not written here
                raise UnsupportedConfig(
                    f"{path}: %FILTER_STATE({arg})% is not implemented by sofamesh on a "
                    "connection (implemented: %FILTER_STATE(KEY:PLAIN)%)"
                )
            get, arg = _inherited(key), None
        if get is None or arg is not None:
            raise UnsupportedConfig(
                f"{path}: %{cmd}% is not implemented by sofamesh on a connection "
                f"(implemented: {', '.join(sorted(_CONN_COMMANDS))})"
            )
        n = int(width) if width else None
        pieces.append((get, n))
    if pos < len(fmt):
        pieces.append(fmt[pos:])

    def render(transport: Any) -> str:
        out = []
        for p in pieces:
            if isinstance(p, str):
                out.append(p)
                continue
            get, n = p
            v = get(transport)
            v = absent if v is None else v
            out.append(v[:n] if n is not None else v)
        return "".join(out)

    return render


def istio_peer_principal(transport: Any) -> str | None:
    """istio_authn's value: the first spiffe:// URI SAN of a verified peer certificate."""
    for san in peer_uri_sans(transport):
        if san.startswith("spiffe://"):
            return san
    return None


class ConnState:
    """The filter state a chain's network filters set on every connection, in order, over
    what an internal listener's connection inherited (`inherit`)."""

    __slots__ = ("entries", "inherit", "sharing")

    def __init__(self, inherit: bool = False) -> None:
        self.entries: dict[str, list[tuple[ConnGetter, bool, bool, int]]] = {}
        self.inherit = inherit
        self.sharing = inherit  # may share with the upstream (shared() can be non-empty)

    def add(
        self,
        key: str,
        get: ConnGetter,
        read_only: bool = False,
        skip_if_empty: bool = False,
        share: int = 0,
    ) -> None:
        self.entries.setdefault(key, []).append((get, read_only, skip_if_empty, share))
        self.sharing = self.sharing or share != 0

    def _value(self, transport: Any, key: str) -> tuple[str | None, int]:
        value, share, locked = None, 0, False
        if self.inherit:
            from sofamesh.proxy.internal_listener import context

            ctx = context(transport)
            if ctx is not None and key in ctx.filter_state:
                value, mode = ctx.filter_state[key]
                share = 2 if mode == 2 else 0  # ONCE stops here; TRANSITIVE goes on
        for get, read_only, skip, sh in self.entries.get(key, ()):
            if locked:
                break  # a read-only object refuses later writes
            v = get(transport)
            if v is None or (skip and v == ""):
                continue
            value, share, locked = v, sh, read_only
        return value, share

    def get(self, transport: Any, key: str) -> str | None:
        """The key's value on this connection, as the setters left it (None: not set)."""
        return self._value(transport, key)[0]

    def shared(self, transport: Any) -> dict[str, tuple[str, int]]:
        """What this connection shares with its upstream connection: key -> (value, mode)."""
        if not self.sharing:
            return {}
        keys = set(self.entries)
        if self.inherit:
            from sofamesh.proxy.internal_listener import context

            ctx = context(transport)
            if ctx is not None:
                keys.update(ctx.filter_state)
        out = {}
        for key in keys:
            value, share = self._value(transport, key)
            if value is not None and share:
                out[key] = (value, share)
        return out

    def __bool__(self) -> bool:
        return bool(self.entries) or self.inherit


# factories whose objects are plain strings to sofamesh (Envoy's generic ones, and the keys
# Istio's build registers); any other factory has an effect sofamesh does not give it
_STRING_FACTORIES = frozenset({"envoy.string", "envoy.hashable_string", "istio.hashable_string"})
_STRING_KEYS = frozenset({PEER_PRINCIPAL, LOCAL_PRINCIPAL}) | _STRING_FACTORIES
# address objects: an "ip:port" value, not set when it does not parse (Envoy's factory
# returns no object); the original_dst listener filter of an internal listener reads them
LOCAL_IP = "envoy.filters.listener.original_dst.local_ip"
REMOTE_IP = "envoy.filters.listener.original_dst.remote_ip"
_ADDRESS_KEYS = frozenset({LOCAL_IP, REMOTE_IP})


def parse_address(value: str | None) -> tuple[str, int] | None:
    """An "ip:port" / "[ipv6]:port" string as (ip, port); None if it is not one."""
    import ipaddress

    if not value:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return str(ip), int(port)


def _address_value(get: ConnGetter, transport: Any) -> str | None:
    v = get(transport)
    return v if parse_address(v) is not None else None


def _http_value(fmt: Any, stream: Any) -> str:
    return fmt(stream, 0.0, 0)


def compile_values(values: Any, path: str, http: bool) -> list[tuple[str, Any, bool, bool, int]]:
    """set_filter_state's FilterStateValue list as (key, getter, read_only, skip_if_empty,
    shared_with_upstream); the getter takes the transport (network filter) or the
    HttpStream (HTTP filter)."""
    from sofamesh.proxy import log_format

    out = []
    for i, v in enumerate(values):
        vpath = f"{path}[{i}]"
        if v.WhichOneof("key") != "object_key" or not v.object_key:
            raise UnsupportedConfig(f"{vpath}.object_key: required")
        key = v.object_key
        factory = v.factory_key or key
        if factory not in _STRING_KEYS and not (factory in _ADDRESS_KEYS and not http):
            raise UnsupportedConfig(
                f"{vpath}.factory_key: filter state objects of '{factory}' are not implemented "
                "by sofamesh (implemented: string objects: "
                f"{', '.join(sorted(_STRING_FACTORIES))}; on connections, the original_dst "
                "addresses)"
            )
        if v.shared_with_upstream != 0 and http:
            raise UnsupportedConfig(
                f"{vpath}.shared_with_upstream: FilterStateValue.shared_with_upstream is not "
                "implemented by sofamesh"
            )
        if v.WhichOneof("value") != "format_string":
            raise UnsupportedConfig(f"{vpath}.format_string: required")
        sfs = v.format_string
        fpath = f"{vpath}.format_string"
        if sfs.WhichOneof("format") == "text_format":
            text = sfs.text_format
        elif sfs.WhichOneof("format") == "text_format_source":
            src = sfs.text_format_source
            if src.WhichOneof("specifier") != "inline_string":
                raise UnsupportedConfig(
                    f"{fpath}.text_format_source: only inline_string is implemented by sofamesh"
                )
            text = src.inline_string
        else:
            raise UnsupportedConfig(
                f"{fpath}: only a text format is implemented by sofamesh for filter state"
            )
        get: Callable[[Any], str | None]
        if http:
            fmt = log_format.compile_text(text, fpath, omit_empty=sfs.omit_empty_values).format
            get = functools.partial(_http_value, fmt)
        else:
            get = format_connection(text, fpath, sfs.omit_empty_values)
            if factory in _ADDRESS_KEYS:
                get = functools.partial(_address_value, get)
        out.append((key, get, bool(v.read_only), bool(v.skip_if_empty), v.shared_with_upstream))
    return out
