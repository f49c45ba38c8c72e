"""HCM `local_reply_config`: rewrite the proxy's own replies (404 no route, 503 no healthy
upstream, 504 timeout...) as Envoy's local reply mappers do. The first mapper whose filter
matches the reply's status changes its status and/or body (content-type text/plain).

Implemented: mappers with a `status_code_filter` (EQ, GE, LE, NE on `default_value`; sofamesh
has no runtime layer) or no filter, `status_code`, `body` (inline_string / inline_bytes).
Anything else (other filters, body_format, headers_to_add) is refused at start-up.
"""

from __future__ import annotations

from typing import Any

from sofamesh.proxy.errors import UnsupportedConfig

# ComparisonFilter.Op -> the op code http_proxy's reply mapper understands
OPS = {0: 0, 1: 1, 2: 2, 3: 3}  # EQ, GE, LE, NE


def compile_local_reply(cfg: Any, path: str) -> tuple | None:
    """-> tuple[(op, value, new_status (0: keep), body bytes | None)] or None when unset."""
    if not cfg.mappers and not cfg.HasField("body_format"):
        return None
    if cfg.HasField("body_format"):
        raise UnsupportedConfig(f"{path}.body_format: not implemented by sofamesh")
    out = []
    for i, m in enumerate(cfg.mappers):
        mp = f"{path}.mappers[{i}]"
        for name in ("body_format_override",):
            if m.HasField(name):
                raise UnsupportedConfig(f"{mp}.{name}: not implemented by sofamesh")
        if len(m.headers_to_add):
            raise UnsupportedConfig(f"{mp}.headers_to_add: not implemented by sofamesh")
        kind = m.filter.WhichOneof("filter_specifier") if m.HasField("filter") else None
        if kind == "status_code_filter":
            cmp = m.filter.status_code_filter.comparison
            op, value = OPS[cmp.op], cmp.value.default_value
        elif kind is None:
            op, value = -1, 0  # matches every local reply
        else:
            raise UnsupportedConfig(f"{mp}.filter.{kind}: not implemented by sofamesh")
        status = m.status_code.value if m.HasField("status_code") else 0
        body = None
        if m.HasField("body"):
            spec = m.body.WhichOneof("specifier")
            if spec == "inline_string":
                body = m.body.inline_string.encode()
            elif spec == "inline_bytes":
                body = m.body.inline_bytes
            else:
                raise UnsupportedConfig(f"{mp}.body.{spec}: not implemented by sofamesh")
        out.append((op, value, status, body))
    return tuple(out)
