"""Compression libraries for envoy.filters.http.compressor / decompressor, by config type:
gzip (zlib, standard library), brotli (the `brotli` package) and zstd (`zstandard`), with
Envoy's defaults. A library gives the content-coding name Envoy writes, its stats prefix,
and a factory of streaming objects:

    compressor.compress(data, finish) -> bytes   # flushes what it has (Envoy's Flush/Finish)
    decompressor.decompress(data) -> bytes       # on bad input: what came out, and .error set

The compressed bytes need not equal Envoy's (Envoy links zlib-ng, its own brotli and zstd
builds, and chunks differently); what they decompress to does.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_T = "type.googleapis.com/envoy.extensions.compression."
GZIP_C = _T + "gzip.compressor.v3.Gzip"
BROTLI_C = _T + "brotli.compressor.v3.Brotli"
ZSTD_C = _T + "zstd.compressor.v3.Zstd"
GZIP_D = _T + "gzip.decompressor.v3.Gzip"
BROTLI_D = _T + "brotli.decompressor.v3.Brotli"
ZSTD_D = _T + "zstd.decompressor.v3.Zstd"


@dataclass(frozen=True)
class Library:
    encoding: str  # the content-coding: gzip, br, zstd
    stat_prefix: str  # gzip, brotli, zstd
    make: Callable[[], Any]  # a new streaming (de)compressor


def _u32(msg: Any, name: str, default: int) -> int:
    return getattr(msg, name).value if msg.HasField(name) else default


def _refuse(path: str, what: str) -> None:
    from sofamesh.proxy.errors import UnsupportedConfig

    raise UnsupportedConfig(f"{path}.{what}: not implemented by sofamesh")


# -- compressors --------------------------------------------------------------------------
class _Zlib:
    __slots__ = ("z",)

    def __init__(self, level: int, wbits: int, mem: int, strategy: int) -> None:
        self.z = zlib.compressobj(level, zlib.DEFLATED, wbits, mem, strategy)

    def compress(self, data: bytes, finish: bool) -> bytes:
        out = self.z.compress(data)
        return out + self.z.flush(zlib.Z_FINISH if finish else zlib.Z_SYNC_FLUSH)


class _Brotli:
    __slots__ = ("b",)

    def __init__(self, **kw: Any) -> None:
        import brotli

        self.b = brotli.Compressor(**kw)

    def compress(self, data: bytes, finish: bool) -> bytes:
        out = self.b.process(data) if data else b""
        return out + (self.b.finish() if finish else self.b.flush())


class _Zstd:
    __slots__ = ("z",)

    def __init__(self, level: int, checksum: bool) -> None:
        import zstandard

        self.z = zstandard.ZstdCompressor(level=level, write_checksum=checksum).compressobj()

    def compress(self, data: bytes, finish: bool) -> bytes:
        import zstandard

        out = self.z.compress(data) if data else b""
        mode = zstandard.COMPRESSOBJ_FLUSH_FINISH if finish else zstandard.COMPRESSOBJ_FLUSH_BLOCK
        return out + self.z.flush(mode)


def compressor_library(any_cfg: Any, path: str) -> Library:
    """Envoy's defaults: gzip level 6 (DEFAULT_COMPRESSION), memory_level 5, window_bits 12;
    brotli quality 3, window_bits 18, input_block_bits 24; zstd level 3, no checksum."""
    url = any_cfg.type_url
    if url == GZIP_C:
        from envoy.extensions.compression.gzip.compressor.v3 import gzip_pb2

        m = gzip_pb2.Gzip()
        any_cfg.Unpack(m)
        level = m.compression_level or -1  # DEFAULT_COMPRESSION (0) is zlib's -1
        wbits = 16 + _u32(m, "window_bits", 12)  # 16+: the gzip wrapper
        mem = _u32(m, "memory_level", 5)
        strategy = int(m.compression_strategy)  # DEFAULT, FILTERED, HUFFMAN_ONLY, RLE, FIXED
        zlib.compressobj(level, zlib.DEFLATED, wbits, mem, strategy)  # bad values fail here
        return Library("gzip", "gzip", lambda: _Zlib(level, wbits, mem, strategy))
    if url == BROTLI_C:
        import brotli
        from envoy.extensions.compression.brotli.compressor.v3 import brotli_pb2

        m = brotli_pb2.Brotli()
        any_cfg.Unpack(m)
        if m.disable_literal_context_modeling:
            _refuse(path, "typed_config.disable_literal_context_modeling")
        mode = {
            0: brotli.MODE_GENERIC,
            1: brotli.MODE_GENERIC,
            2: brotli.MODE_TEXT,
            3: brotli.MODE_FONT,
        }[int(m.encoder_mode)]
        kw = {
            "mode": mode,
            "quality": _u32(m, "quality", 3),
            "lgwin": _u32(m, "window_bits", 18),
            "lgblock": _u32(m, "input_block_bits", 24),
        }
        return Library("br", "brotli", lambda: _Brotli(**kw))
    if url == ZSTD_C:
        from envoy.extensions.compression.zstd.compressor.v3 import zstd_pb2

        m = zstd_pb2.Zstd()
        any_cfg.Unpack(m)
        if m.HasField("dictionary"):
            _refuse(path, "typed_config.dictionary")
        if m.strategy:
            _refuse(path, "typed_config.strategy")
        level = _u32(m, "compression_level", 3)
        checksum = m.enable_checksum
        return Library("zstd", "zstd", lambda: _Zstd(level, checksum))
    from sofamesh.proxy.errors import UnsupportedConfig

    raise UnsupportedConfig(
        f"{path}.typed_config: compressor library {url} is not implemented by sofamesh"
    )


# -- decompressors ------------------------------------------------------------------------
class _Inflate:
    """zlib inflate in pieces of chunk_size output bytes, as Envoy's: once the output exceeds
    max_inflate_ratio times the input given so far, it stops (that piece is kept) and
    `error` says why; so does invalid input (what came out before it is kept)."""

    __slots__ = ("chunk", "error", "ratio", "total_in", "total_out", "z")

    def __init__(self, wbits: int, ratio: int, chunk: int) -> None:
        self.z = zlib.decompressobj(wbits)
        self.ratio = ratio
        self.chunk = chunk
        self.total_in = 0
        self.total_out = 0
        self.error: str | None = None

    def decompress(self, data: bytes) -> bytes:
        if self.error is not None:
            return b""
        self.total_in += len(data)
        out: list[bytes] = []
        buf = data
        while True:
            try:
                piece = self.z.decompress(buf, self.chunk)
            except zlib.error as e:
                self.error = str(e)
                break
            buf = self.z.unconsumed_tail
            if piece:
                out.append(piece)
                self.total_out += len(piece)
                if self.total_out > self.ratio * self.total_in:
                    self.error = "max_inflate_ratio exceeded"
                    break
            if not buf and len(piece) < self.chunk:
                break
        return b"".join(out)


class _Unbrotli:
    __slots__ = ("b", "error")

    def __init__(self) -> None:
        import brotli

        self.b = brotli.Decompressor()
        self.error: str | None = None

    def decompress(self, data: bytes) -> bytes:
        import brotli

        if self.error is not None:
            return b""
        try:
            return self.b.process(data)
        except brotli.error as e:
            self.error = str(e)
            return b""


class _Unzstd:
    __slots__ = ("error", "z")

    def __init__(self) -> None:
        import zstandard

        self.z = zstandard.ZstdDecompressor().decompressobj()
        self.error: str | None = None

    def decompress(self, data: bytes) -> bytes:
        import zstandard

        if self.error is not None:
            return b""
        try:
            return self.z.decompress(data)
        except zstandard.ZstdError as e:
            self.error = str(e)
            return b""


def decompressor_library(any_cfg: Any, path: str) -> Library:
    """gzip: window_bits (default 15; a stream written with a larger window is refused, as
    zlib does), max_inflate_ratio (default 100), chunk_size (default 4096: the output piece
    the ratio is checked after); brotli and zstd with their defaults."""
    url = any_cfg.type_url
    if url == GZIP_D:
        from envoy.extensions.compression.gzip.decompressor.v3 import gzip_pb2

        m = gzip_pb2.Gzip()
        any_cfg.Unpack(m)
        wbits = 16 + _u32(m, "window_bits", 15)
        ratio = _u32(m, "max_inflate_ratio", 100)
        chunk = _u32(m, "chunk_size", 4096)
        return Library("gzip", "gzip", lambda: _Inflate(wbits, ratio, chunk))
    if url == BROTLI_D:
        from envoy.extensions.compression.brotli.decompressor.v3 import brotli_pb2

        m = brotli_pb2.Brotli()
        any_cfg.Unpack(m)
        if m.disable_ring_buffer_reallocation:
            _refuse(path, "typed_config.disable_ring_buffer_reallocation")
        return Library("br", "brotli", _Unbrotli)
    if url == ZSTD_D:
        from envoy.extensions.compression.zstd.decompressor.v3 import zstd_pb2

        m = zstd_pb2.Zstd()
        any_cfg.Unpack(m)
        if len(m.dictionaries):
            _refuse(path, "typed_config.dictionaries")
        return Library("zstd", "zstd", _Unzstd)
    from sofamesh.proxy.errors import UnsupportedConfig

    raise UnsupportedConfig(
        f"{path}.typed_config: decompressor library {url} is not implemented by sofamesh"
    )


def _register() -> None:
    from sofamesh.config.support import register_extension

    for url in (GZIP_C, BROTLI_C, ZSTD_C, GZIP_D, BROTLI_D, ZSTD_D):
        register_extension(url, "sofamesh.filters.http.compression")


_register()
