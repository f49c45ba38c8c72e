"""Dubbo registry URLs, sans-IO: the provider URLs Dubbo writes under
`/<root>/<interface>/providers/` (each node name is the URL, URL-encoded the way Java's
`URLEncoder.encode(url, "UTF-8")` does it), parsed into instances and formatted back.

A provider URL looks like::

    dubbo://10.0.0.7:20880/org.example.DemoService?anyhost=true&application=demo-provider
        &dubbo=2.0.2&interface=org.example.DemoService&methods=sayHello,sayHelloAsync
        &side=provider&version=1.0.0&group=g1&weight=100&timestamp=1700000000000
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, quote_plus, unquote_plus, urlsplit

# Dubbo's protocol name -> the mesh protocol a sidecar speaks to it.
PROTOCOL_MAP = {
    "dubbo": "dubbo",
    "tri": "grpc",  # Dubbo 3 Triple is gRPC-compatible HTTP/2
    "grpc": "grpc",
    "rest": "http",
    "http": "http",
}
DEFAULT_WEIGHT = 100  # Dubbo's default provider weight
# Params that change on every re-registration and say nothing about routing.
VOLATILE_PARAMS = frozenset({"timestamp", "pid"})
# The param our own exports carry, so no pilot re-imports what a pilot exported.
EXPORT_MARK = "sofamesh.export"


class DubboURLError(ValueError):
    pass


@dataclass(frozen=True)
class ProviderURL:
    protocol: str  # Dubbo's protocol name: dubbo, tri, rest, ...
    host: str
    port: int
    interface: str
    params: dict[str, str]

    @property
    def version(self) -> str:
        return self.params.get("version", "")

    @property
    def group(self) -> str:
        return self.params.get("group", "")

    @property
    def weight(self) -> int:
        raw = self.params.get("weight", "")
        if not raw:
            return DEFAULT_WEIGHT
        try:
            return max(int(raw), 0)
        except ValueError:
            raise DubboURLError(f"weight is not an integer: {raw!r}") from None

    @property
    def enabled(self) -> bool:
        return (
            self.params.get("enabled", "true") != "false"
            and self.params.get("disabled", "false") != "true"
        )

    @property
    def side(self) -> str:
        return self.params.get("side", "provider")

    @property
    def exported_by_mesh(self) -> bool:
        return EXPORT_MARK in self.params

    @property
    def instance_id(self) -> str:
        """Unique per provider of one interface: the same host:port may serve several
        groups/versions of it."""
        iid = f"{self.host}:{self.port}"
        if self.group:
            iid += f"/{self.group}"
        if self.version:
            iid += f":{self.version}"
        return iid

    def labels(self) -> dict[str, str]:
        return {k: v for k, v in self.params.items() if k not in VOLATILE_PARAMS}


def parse_node_name(node: str) -> ProviderURL:
    """A child name under `providers/` (URL-encoded) -> ProviderURL."""
    return parse_url(unquote_plus(node))


def parse_url(url: str) -> ProviderURL:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise DubboURLError(f"malformed URL {url!r}: {e}") from None
    if not parts.scheme or "://" not in url:
        raise DubboURLError(f"not a URL: {url!r}")
    host = parts.hostname or ""
    if not host:
        raise DubboURLError(f"no host in {url!r}")
    if port is None or port <= 0:
        raise DubboURLError(f"no port in {url!r}")
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    # Java Dubbo puts the interface in the path and `interface=`; dubbo-python (Triple)
    # writes `tri://host:port?service=<name>` with no path
    interface = params.get("interface") or parts.path.lstrip("/") or params.get("service", "")
    if not interface:
        raise DubboURLError(f"no interface in {url!r}")
    return ProviderURL(parts.scheme, host, port, interface, params)


def format_url(
    interface: str,
    host: str,
    port: int,
    *,
    protocol: str = "dubbo",
    params: dict[str, str] | None = None,
) -> str:
    """A provider URL as a Dubbo 2.7/3 consumer expects it (params sorted, as Dubbo does).
    No timestamp/pid: the node name must stay the same for the same provider, so an
    unchanged mesh exports unchanged nodes."""
    p = {
        "anyhost": "false",
        "application": "sofamesh",
        "deprecated": "false",
        "dubbo": "2.0.2",
        "dynamic": "true",
        "generic": "false",
        "interface": interface,
        "side": "provider",
    }
    p.update({k: v for k, v in (params or {}).items() if v != ""})
    hostpart = f"[{host}]" if ":" in host else host
    query = "&".join(f"{k}={quote(v, safe=',:/*')}" for k, v in sorted(p.items()))
    return f"{protocol}://{hostpart}:{port}/{interface}?{query}"


def encode_node_name(url: str) -> str:
    """URL-encode like java.net.URLEncoder (space -> '+', only [A-Za-z0-9.-*_] kept)."""
    return quote_plus(url, safe="*").replace("~", "%7E")
