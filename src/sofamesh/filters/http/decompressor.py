"""envoy.filters.http.decompressor: request and response decompression as Envoy 1.40 does it.

Each direction (`request_direction_config` / `response_direction_config`,
`common_config.enabled`: a RuntimeFeatureFlag, its default_value; both default on)
decompresses a message with a body whose first `content-encoding` is the library's coding
(case-insensitive), unless `cache-control` says `no-transform` (and
`ignore_no_transform_header` is off): content-length is removed (HTTP/1 goes chunked), the
coding is taken off content-encoding (the header goes when it was the only one), and each
body piece is decompressed as it passes. `request_direction_config.advertise_accept_encoding`
(default on) appends the coding to the request's accept-encoding when response
decompression is on. Stats under `http.<stat_prefix>.decompressor.<library name>.<library
prefix>.{request,response}.{decompressed, not_decompressed, total_compressed_bytes,
total_uncompressed_bytes}`. A body that is not valid for the coding, or (gzip) inflates
beyond `max_inflate_ratio` times its compressed size (checked after each `chunk_size`
piece of output), stops there: what was decompressed passes, the rest is dropped, and
`...decompressor_library.zlib_data_error` counts it.
"""

from __future__ import annotations

from typing import Any

from sofamesh._core.http_proxy import FILTER_CONTINUE_, HttpFilter
from sofamesh.filters.http.compression import decompressor_library
from sofamesh.filters.registry import FilterSpec, register

NAME = "envoy.filters.http.decompressor"
TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.decompressor.v3.Decompressor"
_DIRECTION_STATS = (
    "decompressed",
    "not_decompressed",
    "total_compressed_bytes",
    "total_uncompressed_bytes",
)
# the gzip library's own error counters (zlib's return codes)
_ZLIB_STATS = (
    "zlib_errno",
    "zlib_stream_error",
    "zlib_data_error",
    "zlib_mem_error",
    "zlib_buf_error",
    "zlib_version_error",
)


def _first_coding(v: bytes) -> bytes:
    return v.split(b",", 1)[0].strip().lower()


def _no_transform(v: bytes | None) -> bool:
    return bool(v) and any(t.strip().lower() == b"no-transform" for t in v.split(b","))  # type: ignore[union-attr]


class _Direction:
    __slots__ = ("enabled", "ignore_no_transform", "st")

    def __init__(self, cc: Any, stats: Any, prefix: str) -> None:
        self.enabled = cc.enabled.default_value.value if cc.HasField("enabled") else True
        self.ignore_no_transform = cc.ignore_no_transform_header
        self.st = {k: stats.counter(prefix + k) for k in _DIRECTION_STATS}

    def inc(self, name: str, n: int = 1) -> None:
        c = self.st[name]
        c.value += n
        c.used = True


class DecompressorFilter(HttpFilter):
    def __init__(self, msg: Any, path: str, stats: Any, stat_prefix: str, name: str) -> None:
        super().__init__(name, wants_data=True, wants_encode=True)
        self.lib = decompressor_library(
            msg.decompressor_library.typed_config, f"{path}.decompressor_library"
        )
        self.coding = self.lib.encoding.encode()
        p = f"http.{stat_prefix}decompressor.{msg.decompressor_library.name}.{self.lib.stat_prefix}."
        rq = msg.request_direction_config
        self.req = _Direction(rq.common_config, stats, p + "request.")
        self.resp = _Direction(msg.response_direction_config.common_config, stats, p + "response.")
        self.advertise = (
            rq.advertise_accept_encoding.value if rq.HasField("advertise_accept_encoding") else True
        )
        self.errors = (
            {k: stats.counter(p + "decompressor_library." + k) for k in _ZLIB_STATS}
            if self.lib.encoding == "gzip"
            else {}
        )

    def _state(self, s: Any) -> list:
        if s.filter_state is None:
            s.filter_state = {}
        st = s.filter_state.get(self)
        if st is None:
            st = s.filter_state[self] = [None, None]  # request, response decompressor
        return st

    def decode_headers(self, s: Any, end_stream: bool) -> int:
        if self.advertise and self.resp.enabled:
            ae = s.get_request_header(b"accept-encoding")
            s.remove_request_header(b"accept-encoding")
            s.add_request_header(b"accept-encoding", ae + b"," + self.coding if ae else self.coding)
        if end_stream:
            return FILTER_CONTINUE_
        ce = s.get_request_header(b"content-encoding")
        if (
            self.req.enabled
            and ce is not None
            and _first_coding(ce) == self.coding
            and (
                self.req.ignore_no_transform
                or not _no_transform(s.get_request_header(b"cache-control"))
            )
        ):
            self.req.inc("decompressed")
            self._state(s)[0] = self.lib.make()
            s.remove_request_header(b"content-length")
            rest = ce.split(b",", 1)[1].strip() if b"," in ce else b""
            s.remove_request_header(b"content-encoding")
            if rest:
                s.add_request_header(b"content-encoding", rest)
        else:
            self.req.inc("not_decompressed")
        return FILTER_CONTINUE_

    def _pass(self, s: Any, d: _Direction, st: list, i: int, data: bytes) -> None:
        out = b""
        dec = st[i]
        if dec is not None and dec.error is None:
            out = dec.decompress(data) if data else b""
            if dec.error is not None and self.errors:  # stopped: the rest is dropped
                c = self.errors["zlib_data_error"]
                c.value += 1
                c.used = True
        d.inc("total_compressed_bytes", len(data))
        d.inc("total_uncompressed_bytes", len(out))
        s.replace_data(out)

    def decode_data(self, s: Any, data: bytes, end_stream: bool) -> int:
        st = s.filter_state.get(self) if s.filter_state else None
        if st is not None and st[0] is not None:
            self._pass(s, self.req, st, 0, data)
        return FILTER_CONTINUE_

    def encode_headers(self, s: Any, status: int, end_stream: bool) -> int:
        if end_stream:
            return FILTER_CONTINUE_
        ce = s.get_response_header(b"content-encoding")
        if (
            self.resp.enabled
            and ce is not None
            and _first_coding(ce) == self.coding
            and (
                self.resp.ignore_no_transform
                or not _no_transform(s.get_response_header(b"cache-control"))
            )
        ):
            self.resp.inc("decompressed")
            self._state(s)[1] = self.lib.make()
            s.remove_response_header(b"content-length")
            rest = ce.split(b",", 1)[1].strip() if b"," in ce else b""
            if rest:
                s.set_response_header(b"content-encoding", rest)
            else:
                s.remove_response_header(b"content-encoding")
        else:
            self.resp.inc("not_decompressed")
        return FILTER_CONTINUE_

    def encode_data(self, s: Any, data: bytes, end_stream: bool) -> int:
        st = s.filter_state.get(self) if s.filter_state else None
        if st is not None and st[1] is not None:
            self._pass(s, self.resp, st, 1, data)
        return FILTER_CONTINUE_


def factory(typed_config: Any, context: dict) -> DecompressorFilter:
    from envoy.extensions.filters.http.decompressor.v3 import decompressor_pb2

    path = context.get("path", "")
    msg = decompressor_pb2.Decompressor()
    typed_config.Unpack(msg)
    prefix = context.get("stat_prefix", "")
    return DecompressorFilter(
        msg,
        f"{path}.typed_config",
        context["stats"],
        prefix + "." if prefix else "",
        context.get("name") or NAME,
    )


SPEC = register(FilterSpec(kind="http", names=(NAME,), type_urls=(TYPE_URL,), factory=factory))
