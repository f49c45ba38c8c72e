"""envoy.filters.http.set_metadata: dynamic metadata set on each request when its headers
arrive, as Envoy's. Each `metadata` entry sets its namespace when it is absent; when it is
there, `allow_overwrite` merges the value in (nested structs merged, lists appended,
anything else replaced), else the entry is skipped and `overwrite_denied` counted. The
deprecated `metadata_namespace` + `value` form always merges, the same way. Read by RBAC
`metadata` rules, tracing's metadata tags and the like (HttpStream.filter_state
("metadata", namespace)). `typed_value` is refused by path.
"""

from __future__ import annotations

import copy
from typing import Any

from sofamesh._core.http_proxy import FILTER_CONTINUE_, HttpFilter
from sofamesh.filters.registry import FilterSpec, register
from sofamesh.proxy.errors import UnsupportedConfig

NAME = "envoy.filters.http.set_metadata"
TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config"


def _update(obj: dict, new: dict) -> None:
    """Merge `new` into `obj`: structs recursively, lists appended, other values replaced."""
    for k, v in new.items():
        old = obj.get(k)
        if isinstance(old, dict) and isinstance(v, dict):
            _update(old, v)
        elif isinstance(old, list) and isinstance(v, list):
            old.extend(copy.deepcopy(v))
        else:
            obj[k] = copy.deepcopy(v)


class SetMetadata(HttpFilter):
    def __init__(self, entries: list, legacy: Any, denied: Any, name: str = NAME) -> None:
        super().__init__(name)
        self.entries = entries  # [(namespace, dict, allow_overwrite)]
        self.legacy = legacy  # (namespace, dict) | None
        self.denied = denied

    def decode_headers(self, s: Any, end_stream: bool) -> int:
        fs = s.filter_state
        if fs is None:
            fs = s.filter_state = {}
        if self.legacy is not None:
            ns, value = self.legacy
            cur = fs.get(("metadata", ns))
            if cur is None:
                fs[("metadata", ns)] = copy.deepcopy(value)
            else:
                _update(cur, value)
        for ns, value, overwrite in self.entries:
            cur = fs.get(("metadata", ns))
            if cur is None:
                fs[("metadata", ns)] = copy.deepcopy(value)
            elif overwrite:
                _update(cur, value)
            else:
                self.denied.value += 1
                self.denied.used = True
        return FILTER_CONTINUE_


def factory(typed_config: Any, context: dict) -> SetMetadata:
    from envoy.extensions.filters.http.set_metadata.v3 import set_metadata_pb2
    from google.protobuf import json_format

    path = context.get("path", NAME)
    msg = set_metadata_pb2.Config()
    if not typed_config.Unpack(msg):
        raise UnsupportedConfig(f"{path}.typed_config: expected {TYPE_URL}")
    entries = []
    for i, m in enumerate(msg.metadata):
        mpath = f"{path}.typed_config.metadata[{i}]"
        if m.HasField("typed_value"):
            raise UnsupportedConfig(
                f"{mpath}.typed_value: Metadata.typed_value is not implemented by sofamesh"
            )
        if not m.metadata_namespace:
            raise UnsupportedConfig(f"{mpath}.metadata_namespace: required")
        value = json_format.MessageToDict(m.value)
        entries.append((m.metadata_namespace, value, bool(m.allow_overwrite)))
    legacy = None
    if msg.metadata_namespace or msg.HasField("value"):
        legacy = (msg.metadata_namespace, json_format.MessageToDict(msg.value))
    prefix = context.get("stat_prefix", "")
    denied = context["stats"].counter(f"http.{prefix}.set_metadata.overwrite_denied")
    return SetMetadata(entries, legacy, denied, context.get("name") or NAME)


SPEC = register(FilterSpec(kind="http", names=(NAME,), type_urls=(TYPE_URL,), factory=factory))
