"""envoy.filters.http.compressor: response compression as Envoy 1.40 decides it.

A response is compressible when `response_direction_config.common_config.enabled` (a
RuntimeFeatureFlag, its default_value; default true) holds, its content-length is at least
`min_content_length` (default 30) or it has no content-length but is chunked, it is no
upgrade, its content-type (parameters cut) is in `content_type` (default Envoy's list
below; no content-type passes), `cache-control` has no `no-transform`, it has no etag when
`disable_on_etag_header`, it has no content-encoding, and its status is not in
`uncompressible_response_codes`. A compressible response gets `vary: Accept-Encoding`
(appended to a vary that lacks it) whether or not it is compressed. It is compressed when
the request's Accept-Encoding (kept from the request; removed before the upstream with
`remove_accept_encoding_header`) chooses this filter's coding. The choice is made once
per response for all the chain's compressors whose content types take it (Envoy's shared
filter state): the highest q-value among `identity`, `*` and their codings wins (the
first of equals), q=0 rules a coding out, `*` means the chain's first compressor;
`identity` or no valid choice leaves the response as it is. Compressed: content-length removed (HTTP/1 goes chunked),
`content-encoding` set, a strong etag removed (a weak one kept), each body piece compressed and
flushed as it passes (the last one finishes the stream; trailers get the end first).

Stats under `http.<stat_prefix>.compressor.<library name>.<library prefix>.`: the
Accept-Encoding decision (no_accept_header, header_identity, header_compressor_used,
header_compressor_overshadowed, header_wildcard, header_not_valid; not_compressed_etag),
and under `.response.`
and `.request.` compressed, not_compressed, total_uncompressed_bytes,
total_compressed_bytes, content_length_too_small (every request counts
request.not_compressed, as Envoy's with request compression off). Per route (`CompressorPerRoute`): `disabled`
and `overrides.response_direction_config.remove_accept_encoding_header`... (the latter
refused). Refused by name: request-direction compression, `status_header_enabled`,
`choose_first`, the deprecated top-level fields.
"""

from __future__ import annotations

from typing import Any

from sofamesh._core.http_proxy import FILTER_CONTINUE_, HttpFilter
from sofamesh.filters.http.compression import compressor_library
from sofamesh.filters.registry import FilterSpec, register

NAME = "envoy.filters.http.compressor"
TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor"
PER_ROUTE_URL = "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.CompressorPerRoute"
# Envoy's default compressible content types
DEFAULT_TYPES = frozenset(
    {
        "text/html",
        "text/plain",
        "text/css",
        "application/javascript",
        "application/x-javascript",
        "text/javascript",
        "text/x-javascript",
        "text/ecmascript",
        "text/js",
        "text/jscript",
        "text/x-js",
        "application/ecmascript",
        "application/x-json",
        "application/xml",
        "application/json",
        "image/svg+xml",
        "text/xml",
        "application/xhtml+xml",
    }
)
_STATS = (  # filter-level: the Accept-Encoding decision
    "no_accept_header",
    "header_identity",
    "header_compressor_used",
    "header_compressor_overshadowed",
    "header_wildcard",
    "header_not_valid",
    "not_compressed_etag",
)
_DIRECTION_STATS = (
    "compressed",
    "not_compressed",
    "total_uncompressed_bytes",
    "total_compressed_bytes",
    "content_length_too_small",
)


def _refuse(path: str, what: str) -> None:
    from sofamesh.proxy.errors import UnsupportedConfig

    raise UnsupportedConfig(f"{path}.{what}: not implemented by sofamesh")


def _has_token(value: bytes | None, token: bytes) -> bool:
    if not value:
        return False
    return any(t.strip().lower() == token for t in value.split(b","))


REGISTERED = "envoy.compression.registered"  # filter_state: the chain's active compressors
DECISION = "envoy.compression.decision"  # filter_state: the stream's (kind, coding)


def choose(accept: bytes, codings: list[str]) -> tuple[str, str]:
    """Envoy's choice among the chain's compressors that may take the response (codings, in
    chain order): (kind, coding), kind one of valid, identity, wildcard, not_valid. The
    highest q-value wins (the first of equals), among those codings, identity and *; q=0
    rules a coding out; * picks the first compressor of the chain."""
    allowed = dict.fromkeys(codings)
    pairs: list[tuple[str, float]] = []
    for token in accept.decode("latin-1").split(","):
        if not token.strip():
            continue
        name, semi, params = token.partition(";")
        q = 1.0
        if semi:
            key, eq, val = params.partition("=")
            if eq and key.strip().lower() == "q":
                try:
                    q = float(val.strip())
                except ValueError:
                    continue
        name = name.strip()
        pairs.append((name, q))
        if not q:
            allowed.pop(name, None)
    if not pairs or not allowed:
        return "not_valid", "identity"
    choice, best = "identity", 0.0
    for name, q in pairs:
        if q > best and (name in allowed or name in ("identity", "*")):
            choice, best = name, q
    if not best:
        return "not_valid", "identity"
    if choice == "identity":
        return "identity", choice
    if choice == "*":
        return "wildcard", next(iter(allowed))
    return "valid", choice


class CompressorFilter(HttpFilter):
    def __init__(self, msg: Any, path: str, stats: Any, stat_prefix: str, name: str) -> None:
        super().__init__(name, wants_data=True, wants_encode=True)
        for f in (
            "content_length",
            "content_type",
            "disable_on_etag_header",
            "remove_accept_encoding_header",
            "runtime_enabled",
        ):
            if msg.HasField(f) if f in ("content_length", "runtime_enabled") else getattr(msg, f):
                _refuse(path, f)  # deprecated top-level twins of response_direction_config
        if msg.choose_first:
            _refuse(path, "choose_first")
        rq = msg.request_direction_config.common_config
        if rq.HasField("enabled") and rq.enabled.default_value.value:
            _refuse(path, "request_direction_config (request compression)")
        rd = msg.response_direction_config
        if rd.status_header_enabled:
            _refuse(path, "response_direction_config.status_header_enabled")
        cc = rd.common_config
        self.enabled = cc.enabled.default_value.value if cc.HasField("enabled") else True
        self.min_len = cc.min_content_length.value if cc.HasField("min_content_length") else 30
        self.types = frozenset(t.lower() for t in cc.content_type) or DEFAULT_TYPES
        self.no_etag = rd.disable_on_etag_header
        self.remove_ae = rd.remove_accept_encoding_header
        self.no_codes = frozenset(rd.uncompressible_response_codes)
        self.lib = compressor_library(
            msg.compressor_library.typed_config, f"{path}.compressor_library"
        )
        self.content_encoding = self.lib.encoding.encode()
        p = f"http.{stat_prefix}compressor.{msg.compressor_library.name}.{self.lib.stat_prefix}."
        self.st = {k: stats.counter(p + k) for k in _STATS}
        self.rst = {k: stats.counter(p + "response." + k) for k in _DIRECTION_STATS}
        self.qst = {k: stats.counter(p + "request." + k) for k in _DIRECTION_STATS}

    def _inc(self, name: str, n: int = 1, top: bool = False, request: bool = False) -> None:
        """A response-direction counter (`.response.<name>`), or with top a filter-level
        one (the Accept-Encoding decision), or with request `.request.<name>`."""
        c = self.st[name] if top else (self.qst if request else self.rst)[name]
        c.value += n
        c.used = True

    def decode_headers(self, s: Any, end_stream: bool) -> int:
        if s.filter_state is None:
            s.filter_state = {}
        pr = s.route_filter_config(self.name)
        if pr is not None and pr.disabled:
            s.filter_state[self] = False  # off for this route, both ways
            return FILTER_CONTINUE_
        ae = s.get_request_header(b"accept-encoding")
        s.filter_state[self] = [ae, None]  # accept-encoding, the stream's compressor
        s.filter_state.setdefault(REGISTERED, []).append(self)
        self._inc("not_compressed", request=True)  # no request compression (refused)
        if ae is not None and self.enabled and self.remove_ae:
            s.remove_request_header(b"accept-encoding")
        return FILTER_CONTINUE_

    def _length_ok(self, s: Any) -> bool:
        cl = s.get_response_header(b"content-length")
        if cl is not None:
            ok = cl.isdigit() and int(cl) >= self.min_len
            if not ok:
                self._inc("content_length_too_small")
            return ok
        return True  # Envoy 1.40: no content-length is long enough (chunked, or to EOF)

    def encode_headers(self, s: Any, status: int, end_stream: bool) -> int:
        if s.filter_state is None:
            s.filter_state = {}
        st = s.filter_state.get(self)
        if st is False:
            return FILTER_CONTINUE_
        if st is None:
            # a response made before this filter saw the request (an earlier filter's local
            # reply, a CORS preflight answer): no Accept-Encoding known, as in Envoy
            st = s.filter_state[self] = [None, None]
        length_ok = self.enabled and self._length_ok(s)
        type_ok = self._type_ok(s.get_response_header(b"content-type"))
        others_ok = (
            type_ok
            and status != 101
            and not _has_token(s.get_response_header(b"connection"), b"upgrade")
            and not _has_token(s.get_response_header(b"cache-control"), b"no-transform")
            and self._etag_ok(s)
            and s.get_response_header(b"content-encoding") is None
            and status not in self.no_codes
        )
        # Envoy's order: the Accept-Encoding decision (and its stats) only for a body long
        # enough; a content type this compressor does not take leaves no valid choice
        if not end_stream and length_ok and self._accepts(s, st[0]) and others_ok:
            etag = s.get_response_header(b"etag")
            if etag is not None and etag[:2].lower() != b"w/":
                s.remove_response_header(b"etag")  # Envoy drops a strong etag
            s.remove_response_header(b"content-length")
            s.set_response_header(b"content-encoding", self.content_encoding)
            self._inc("compressed")
            st[1] = self.lib.make()
        elif self.enabled:
            self._inc("not_compressed")
        if length_ok and others_ok:  # a cache must know the answer depends on it
            vary = s.get_response_header(b"vary")
            if vary is None:
                s.set_response_header(b"vary", b"Accept-Encoding")
            elif b"Accept-Encoding" not in (t.strip() for t in vary.split(b",")):  # case kept
                s.set_response_header(b"vary", vary + b", Accept-Encoding")
        return FILTER_CONTINUE_

    def _type_ok(self, ct: bytes | None) -> bool:
        if ct is None:
            return True
        return ct.split(b";", 1)[0].strip().lower().decode("latin-1") in self.types

    def _etag_ok(self, s: Any) -> bool:
        if self.no_etag and s.get_response_header(b"etag") is not None:
            self._inc("not_compressed_etag", top=True)
            return False
        return True

    def _accepts(self, s: Any, ae: bytes | None) -> bool:
        """The Accept-Encoding decision, made once per stream for every compressor of the
        chain (Envoy keeps it in the filter state); each counts what it means for it."""
        if ae is None:
            self._inc("no_accept_header", top=True)
            return False
        fs = s.filter_state
        decision = fs.get(DECISION)
        if decision is None:
            ct = s.get_response_header(b"content-type")
            codings = [
                f.lib.encoding for f in fs.get(REGISTERED, ()) if ct is None or f._type_ok(ct)
            ]
            decision = fs[DECISION] = choose(ae, codings)
        kind, coding = decision
        mine = coding == self.lib.encoding
        if kind == "valid":
            self._inc(
                "header_compressor_used" if mine else "header_compressor_overshadowed", top=True
            )
            return mine
        self._inc("header_" + kind, top=True)
        return kind == "wildcard" and mine

    def encode_data(self, s: Any, data: bytes, end_stream: bool) -> int:
        st = s.filter_state.get(self) if s.filter_state else None
        if not st or st[1] is None:
            return FILTER_CONTINUE_
        out = st[1].compress(data, end_stream)
        if end_stream:
            st[1] = None
        self._inc("total_uncompressed_bytes", len(data))
        self._inc("total_compressed_bytes", len(out))
        s.replace_data(out)
        return FILTER_CONTINUE_

    def encode_trailers(self, s: Any, trailers: Any) -> int:
        st = s.filter_state.get(self) if s.filter_state else None
        if not st or st[1] is None:
            return FILTER_CONTINUE_
        out = st[1].compress(b"", True)
        st[1] = None
        self._inc("total_compressed_bytes", len(out))
        s.replace_data(out)
        return FILTER_CONTINUE_


class PerRoute:
    __slots__ = ("disabled",)

    def __init__(self, msg: Any, path: str) -> None:
        if msg.WhichOneof("override") == "overrides":
            _refuse(path, "overrides")
        self.disabled = msg.disabled


def compile_route(typed_config: Any, context: dict) -> PerRoute:
    from envoy.extensions.filters.http.compressor.v3 import compressor_pb2

    path = context.get("path", "")
    msg = compressor_pb2.CompressorPerRoute()
    if not typed_config.Unpack(msg):
        _refuse(path, f"typed_config ({typed_config.type_url})")
    return PerRoute(msg, path)


def factory(typed_config: Any, context: dict) -> CompressorFilter:
    from envoy.extensions.filters.http.compressor.v3 import compressor_pb2

    path = context.get("path", "")
    msg = compressor_pb2.Compressor()
    typed_config.Unpack(msg)
    prefix = context.get("stat_prefix", "")
    return CompressorFilter(
        msg,
        f"{path}.typed_config",
        context["stats"],
        prefix + "." if prefix else "",
        context.get("name") or NAME,
    )


SPEC = register(
    FilterSpec(
        kind="http",
        names=(NAME,),
        type_urls=(TYPE_URL,),
        factory=factory,
        extra={"route_config": compile_route, "per_route_type_urls": (PER_ROUTE_URL,)},
    )
)
