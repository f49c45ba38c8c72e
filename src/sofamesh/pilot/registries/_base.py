"""What every adapter shares: config field checks, the published snapshot, counters."""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..model import Instance, Service, Snapshot

log = logging.getLogger("sofamesh.pilot.registries")


class RegistryConfigError(ValueError):
    """A registry entry in the pilot config is invalid; the message names the field."""


class Fields:
    """Typed reads of one config entry; unknown keys are an error (a typo must not be
    silently ignored)."""

    def __init__(self, cfg: dict[str, Any], path: str, known: set[str]) -> None:
        self.cfg = cfg
        self.path = path
        unknown = sorted(set(cfg) - known - {"type"})
        if unknown:
            raise self.err(unknown[0], "unknown field")

    def err(self, key: str, msg: str) -> RegistryConfigError:
        where = f"{self.path}.{key}" if self.path else key
        return RegistryConfigError(f"{where}: {msg}")

    def text(self, key: str, default: str | None = None, *, required: bool = False) -> str:
        v = self.cfg.get(key, default)
        if v is None:
            if required:
                raise self.err(key, "required")
            return ""
        if not isinstance(v, str) or (required and not v):
            raise self.err(key, f"expected a non-empty string, got {v!r}")
        return v

    def bool(self, key: str, default: bool) -> bool:
        v = self.cfg.get(key, default)
        if not isinstance(v, bool):
            raise self.err(key, f"expected true or false, got {v!r}")
        return v

    def num(self, key: str, default: float, *, minimum: float = 0.0) -> float:
        v = self.cfg.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < minimum:
            raise self.err(key, f"expected a number >= {minimum:g}, got {v!r}")
        return float(v)

    def str_list(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        v = self.cfg.get(key, list(default))
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self.err(key, f"expected a list of strings, got {v!r}")
        return tuple(v)

    def str_map(self, key: str) -> dict[str, str]:
        v = self.cfg.get(key, {}) or {}
        if not isinstance(v, dict) or not all(
            isinstance(k, str) and isinstance(x, str) for k, x in v.items()
        ):
            raise self.err(key, f"expected a mapping of strings, got {v!r}")
        return dict(v)


def parse_hostport(s: str) -> tuple[str, int]:
    host, sep, port = s.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {s!r}")
    return host.strip("[]"), int(port)


class ExportAddress:
    """Where a registry that exports the mesh (`export: true`) says an instance is, by its
    entry's `export_address`: "" the instance's own address; "HOST:PORT" one address for all
    (a gateway); "sidecar" the consumer's own sidecar, 127.0.0.1 and the instance's service
    port + the pilot's --tcp-port-offset (`sidecar_port_offset`, set by the pilot: the
    sidecar's tcp_proxy listener for that port, so calls to other clusters cross the edges)."""

    def __init__(self, spec: str = "") -> None:
        self.via_sidecar = spec == "sidecar"
        self.fixed = parse_hostport(spec) if spec and not self.via_sidecar else None
        self.sidecar_port_offset = 0

    @staticmethod
    def field(f: Fields) -> str:
        """The entry's `export_address`, checked."""
        spec = f.text("export_address")
        if spec and spec != "sidecar":
            try:
                parse_hostport(spec)
            except ValueError as e:
                raise f.err("export_address", str(e)) from None
        return spec

    def of(self, inst: Instance) -> tuple[str, int]:
        if self.via_sidecar:
            return "127.0.0.1", (inst.service_port or inst.port) + self.sidecar_port_offset
        if self.fixed is not None:
            return self.fixed
        return inst.address, inst.port


class SnapshotHolder:
    """The adapter's current view. `update` applies per-service changes and `publish`
    replaces everything; either swaps in a new Snapshot (the old one is never mutated: the
    pilot may still hold it) and calls on_change only when the content differs."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stats: Counter[str] = Counter()
        self._snapshot = Snapshot()
        self._on_change: Callable[[str], None] | None = None

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def publish(self, services: dict[str, Service], instances: dict[str, list[Instance]]) -> bool:
        for insts in instances.values():
            insts.sort(key=_instance_order)
        new = Snapshot(services=services, instances=instances)
        old = self._snapshot
        if new.services == old.services and new.instances == old.instances:
            return False
        self._swap(new)
        return True

    def update(self, changes: dict[str, tuple[Service, list[Instance]] | None]) -> bool:
        """Per-service changes (None: the service is gone). Costs O(changed services), not
        O(all): only the changed entries are compared."""
        old = self._snapshot
        real: dict[str, tuple[Service, list[Instance]] | None] = {}
        for name, entry in changes.items():
            if entry is None:
                if name in old.services or name in old.instances:
                    real[name] = None
                continue
            svc, insts = entry
            insts = sorted(insts, key=_instance_order)
            if old.services.get(name) != svc or old.instances.get(name) != insts:
                real[name] = (svc, insts)
        if not real:
            return False
        services = dict(old.services)
        instances = dict(old.instances)
        for name, entry in real.items():
            if entry is None:
                services.pop(name, None)
                instances.pop(name, None)
            else:
                services[name], instances[name] = entry
        self._swap(Snapshot(services=services, instances=instances))
        return True

    def _swap(self, new: Snapshot) -> None:
        self._snapshot = new
        self.stats["snapshot_updates"] += 1
        if self._on_change is not None:
            try:
                self._on_change(self.name)
            except Exception:  # the pilot's callback must not break the watch loop
                log.exception("registry %s: on_change callback failed", self.name)


def _instance_order(i: Instance) -> tuple[str, str, int]:
    return (i.instance_id, i.address, i.port)


def sorted_labels(d: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """Labels as the model keeps them; strings interned, as registries repeat the same keys
    and values (application, versions, zones) across thousands of instances."""
    return tuple(sorted((sys.intern(str(k)), sys.intern(str(v))) for k, v in d.items()))
