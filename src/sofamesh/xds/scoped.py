"""Scoped routes (SRDS) as sofamesh implements them: one route table merged from the scopes.

Envoy picks a scope by a key built from the request (here: one fragment, an element of a
header split by a separator, e.g. the Host name before ":"), then routes with that scope's
route configuration. sofamesh compiles every scope's virtual hosts into one table, which
selects exactly the same virtual host as long as each scope's domains are host names whose
own key is the scope's key (a request's Host matches such a domain only if it has that
key). That is what the pilot sends (scope = service, domains `<svc>` and `<svc>:<port>`);
other shapes (`*` or wildcard domains in a scope, keys of several fragments, keys taken
from other headers' elements by name, inline scope lists) are refused by name.
"""

from __future__ import annotations

from typing import Any

from sofamesh.proxy.errors import UnsupportedConfig


def check_scoped_routes(sr: Any, path: str) -> None:
    """An HttpConnectionManager.ScopedRoutes sofamesh can serve, else UnsupportedConfig."""
    if sr.WhichOneof("config_specifier") != "scoped_rds":
        raise UnsupportedConfig(
            f"{path}.scoped_route_configurations_list: inline scopes are not implemented "
            "(scoped_rds over ADS is)"
        )
    for field, src in (
        ("rds_config_source", sr.rds_config_source),
        ("scoped_rds.scoped_rds_config_source", sr.scoped_rds.scoped_rds_config_source),
    ):
        if src.WhichOneof("config_source_specifier") != "ads":
            raise UnsupportedConfig(f"{path}.{field}: only `ads: {{}}` is implemented")
    frags = sr.scope_key_builder.fragments
    if len(frags) != 1 or frags[0].WhichOneof("type") != "header_value_extractor":
        raise UnsupportedConfig(
            f"{path}.scope_key_builder.fragments: one header_value_extractor fragment is "
            "implemented"
        )
    hv = frags[0].header_value_extractor
    if hv.WhichOneof("extract_type") != "index":
        raise UnsupportedConfig(
            f"{path}.scope_key_builder.fragments[0].header_value_extractor.element: only "
            "`index` is implemented"
        )
    if hv.name.lower() not in (":authority", "host"):
        raise UnsupportedConfig(
            f"{path}.scope_key_builder.fragments[0].header_value_extractor.name: only "
            "':authority' (the Host header) is implemented"
        )


def key_of(sr: Any, host: str) -> str | None:
    """The scope key Envoy builds from a Host value (None: no key, no scope)."""
    hv = sr.scope_key_builder.fragments[0].header_value_extractor
    if not hv.element_separator:
        return host if hv.index == 0 else None
    parts = host.split(hv.element_separator)
    return parts[hv.index] if hv.index < len(parts) else None


def check_scope(sc: Any) -> str | None:
    """The problem with a ScopedRouteConfiguration, or None."""
    if sc.HasField("route_configuration"):
        return "route_configuration: inline route configurations are not implemented"
    if not sc.route_configuration_name:
        return "route_configuration_name: required"
    frags = sc.key.fragments
    if len(frags) != 1 or frags[0].WhichOneof("type") != "string_key":
        return "key.fragments: one string_key fragment is implemented"
    return None


def check_domains(rc: Any, key: str, users: list[Any]) -> str | None:
    """The problem, if the route config of scope `key` cannot be merged (see module doc)."""
    for vi, vh in enumerate(rc.virtual_hosts):
        for di, d in enumerate(vh.domains):
            if "*" in d or any(key_of(sr, d) != key for sr in users):
                return (
                    f"virtual_hosts[{vi}].domains[{di}]: '{d}': in a scope, sofamesh "
                    f"implements host names whose scope key is the scope's ('{key}') only"
                )
    return None


class Scopes:
    """The scopes a sidecar holds (SRDS) and their compiled virtual hosts (from RDS)."""

    def __init__(self) -> None:
        self.held: dict[str, Any] = {}  # scope name -> proxy.dynamic_state._Held
        self.received = False  # an SRDS response arrived
        self.entries: dict[str, list] = {}  # route config name -> [(domains, VirtualHost)]
        # PERF(benchmarks/xds_scale.py): route config name -> key, read from the messages
        # once per SRDS update (reading 10,000 of them per RDS update was ~10 ms)
        self._keys: dict[str, str] = {}
        self._scope_of: dict[str, str] = {}  # route config name -> scope name

    def route_keys(self) -> dict[str, str]:
        """route config name -> its scope's key."""
        return self._keys

    def ready(self) -> bool:
        """Every scope's route configuration has arrived (a scoped listener may serve)."""
        return self.received and all(n in self.entries for n in self._keys)

    def apply(self, up: Any, held_cls: Any) -> dict[str, str]:
        errors = {}
        keys = {v: self._scope_of[k] for k, v in self._keys.items()} if self._keys else {}
        for name, (version, sc) in up.resources.items():
            problem = check_scope(sc)
            key = sc.key.fragments[0].string_key if problem is None else ""
            if problem is None and keys.get(key, name) != name:
                problem = f"key: '{key}' is the key of scope {keys[key]} already"
            if problem is not None:
                errors[name] = f"ScopedRouteConfiguration {name}: {problem}"
                continue
            raw = sc.SerializeToString(deterministic=True)
            old = self.held.get(name)
            if old is None or old.raw != raw:
                if old is not None:
                    keys.pop(old.msg.key.fragments[0].string_key, None)
                self.held[name] = held_cls(version, sc, raw)
                keys[key] = name
        gone = list(up.removed)
        if up.full_state:
            gone = [n for n in self.held if n not in up.resources]
        for n in gone:
            self.held.pop(n, None)
        self.received = True
        self._keys = {}
        self._scope_of = {}
        for n, h in self.held.items():
            rname = h.msg.route_configuration_name
            self._keys[rname] = h.msg.key.fragments[0].string_key
            self._scope_of[rname] = n
        return errors

    def table(self, strip_port: bool) -> Any:
        """One RouteTable of every scope whose routes are known."""
        from sofamesh._core.router import RouteTable

        vhosts: list[Any] = []
        for rname in self._keys:
            vhosts += self.entries.get(rname, ())
        return RouteTable(vhosts, strip_port)
