"""Registry adapters: each turns one external registry's records into the pilot's model.

`build(cfg)` makes an adapter from one entry of the pilot config's `registries:` list::

    registries:
      - {type: zookeeper, hosts: "127.0.0.1:2181", root: /dubbo, export: true}
      - {type: consul, address: "http://127.0.0.1:8500"}
      - {type: kubernetes, api_server: "https://10.0.0.1:443", token_file: ..., ca_file: ...}
      - {type: sofaregistry, address: "127.0.0.1:9600", data_ids: [com.example.Hello:1.0]}

Every adapter implements `model.Registry` (`name`, `start(on_change)`, `stop()`,
`snapshot()`); those that can publish the mesh back (`zookeeper` with `export: true`) also
implement `model.Exporter` and have `exports = True`. Each has a `stats` dict of counters
(parse errors, watch errors, reconnects, ...) for the pilot to expose.

A bad entry raises `RegistryConfigError` whose message names the field, e.g.
`hosts: required` (or `registries[0].hosts: required` when `path="registries[0]"` is given).
"""

from __future__ import annotations

from typing import Any

from ..model import Registry
from ._base import RegistryConfigError

__all__ = ["TYPES", "RegistryConfigError", "build"]

TYPES = ("zookeeper", "consul", "kubernetes", "sofaregistry")


def build(cfg: dict[str, Any], *, path: str = "") -> Registry:
    """Build one adapter from its config entry. `path`, if given (e.g. `registries[2]`),
    prefixes the field named in error messages."""
    if not isinstance(cfg, dict):
        raise RegistryConfigError(
            f"{path or 'registry'}: expected a mapping, got {type(cfg).__name__}"
        )
    kind = cfg.get("type")
    where = f"{path}.type" if path else "type"
    if kind == "zookeeper":
        from .zookeeper import ZooKeeperRegistry

        return ZooKeeperRegistry.from_config(cfg, path=path)
    if kind == "consul":
        from .consul import ConsulRegistry

        return ConsulRegistry.from_config(cfg, path=path)
    if kind == "kubernetes":
        from .kubernetes import KubernetesRegistry

        return KubernetesRegistry.from_config(cfg, path=path)
    if kind == "sofaregistry":
        from .sofaregistry import SofaRegistry

        return SofaRegistry.from_config(cfg, path=path)
    raise RegistryConfigError(f"{where}: must be one of {', '.join(TYPES)}, got {kind!r}")
