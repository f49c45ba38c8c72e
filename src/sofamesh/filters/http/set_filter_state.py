"""envoy.filters.http.set_filter_state: filter state set on each request when its headers
arrive (`on_request_headers`), as Envoy's. Values are string objects (`envoy.string` and
the like, proxy/filter_state.py), formatted with the access log's commands; RBAC
`filter_state` rules after it read them. A read-only object keeps its first value.
"""

from __future__ import annotations

from typing import Any

from sofamesh._core.http_proxy import FILTER_CONTINUE_, HttpFilter
from sofamesh.filters.registry import FilterSpec, register
from sofamesh.proxy.errors import UnsupportedConfig

NAME = "envoy.filters.http.set_filter_state"
TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config"
_READ_ONLY = ("set_filter_state", "read_only")  # stream filter_state: keys set read-only


class SetFilterState(HttpFilter):
    def __init__(self, values: list, name: str = NAME) -> None:
        super().__init__(name)
        self.values = values  # [(key, getter(stream), read_only, skip_if_empty)]

    def decode_headers(self, s: Any, end_stream: bool) -> int:
        fs = s.filter_state
        if fs is None:
            fs = s.filter_state = {}
        locked = fs.get(_READ_ONLY)
        for key, get, read_only, skip, _ in self.values:
            v = get(s)
            if skip and v == "":
                continue
            if locked is not None and key in locked:
                continue  # Envoy refuses to overwrite a read-only object
            fs[key] = v
            if read_only:
                if locked is None:
                    locked = fs[_READ_ONLY] = set()
                locked.add(key)
        return FILTER_CONTINUE_


def factory(typed_config: Any, context: dict) -> SetFilterState:
    from envoy.extensions.filters.http.set_filter_state.v3 import set_filter_state_pb2

    from sofamesh.proxy.filter_state import compile_values

    path = context.get("path", NAME)
    msg = set_filter_state_pb2.Config()
    if not typed_config.Unpack(msg):
        raise UnsupportedConfig(f"{path}.typed_config: expected {TYPE_URL}")
    values = compile_values(
        msg.on_request_headers, f"{path}.typed_config.on_request_headers", http=True
    )
    return SetFilterState(values, context.get("name") or NAME)


SPEC = register(FilterSpec(kind="http", names=(NAME,), type_urls=(TYPE_URL,), factory=factory))
