"""The pilot's one service model: services and their instances, whichever registry holds them.

Every registry adapter (open REST API, ZooKeeper/Dubbo, Consul, Kubernetes, SOFARegistry)
turns its own records into these, and the xDS generator reads only these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

PROTOCOLS = ("http", "http2", "grpc", "tcp", "dubbo", "bolt", "hsf")


@dataclass(frozen=True, slots=True)
class Port:
    number: int
    protocol: str = "http"  # one of PROTOCOLS
    name: str = ""


@dataclass(frozen=True, slots=True)
class Locality:
    region: str = ""
    zone: str = ""
    sub_zone: str = ""


@dataclass(frozen=True, slots=True)
class Instance:
    service: str  # the service's name (hostname in the mesh, e.g. "reviews" or a Dubbo interface)
    instance_id: str  # unique within (registry, service)
    address: str
    port: int
    protocol: str = "http"
    labels: tuple[tuple[str, str], ...] = ()  # sorted (key, value) pairs: hashable, comparable
    weight: int = 1
    healthy: bool = True
    locality: Locality = Locality()
    registry: str = "api"  # origin: "api", "zookeeper", "consul", "kubernetes", "sofaregistry"
    namespace: str = "default"
    # The service port this instance serves. 0 means "the service's only port" (or, when the
    # service has no declared ports, the instance's own port). Lets two instances on one host
    # (different ports) back the same service port, as a Kubernetes targetPort does.
    service_port: int = 0

    @property
    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    namespace: str = "default"
    ports: tuple[Port, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    registry: str = "api"


@dataclass
class Snapshot:
    """What one registry holds now: services by name and instances by service name."""

    services: dict[str, Service] = field(default_factory=dict)
    instances: dict[str, list[Instance]] = field(default_factory=dict)


class Registry(Protocol):
    """What a registry adapter offers the pilot. `start` begins watching and calls
    `on_change(self.name)` whenever its snapshot changes; the pilot then reads `snapshot()`
    and merges all registries into one model (debounced).

    A snapshot is immutable once returned: publish a change as new lists/dicts, never by
    mutating ones handed out before (the pilot skips a service whose instance list is the
    very object it saw last time)."""

    name: str

    async def start(self, on_change) -> None: ...  # on_change: Callable[[str], None]

    async def stop(self) -> None: ...

    def snapshot(self) -> Snapshot: ...


class Exporter(Protocol):
    """A registry that also publishes the mesh's services back (registry sync), e.g. writing
    mesh services into ZooKeeper's Dubbo layout so Dubbo consumers find them."""

    async def export(
        self, services: dict[str, Service], instances: dict[str, list[Instance]]
    ) -> None: ...
