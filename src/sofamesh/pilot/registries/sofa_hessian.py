"""SOFA's pre-final Hessian 2.0 draft, in pure Python, for SOFARegistry's control messages.

This is the dialect sofa-hessian (Java) and hessian.js-1's "2.0" (sofa-registry-node,
sofa-rpc-node) put in Bolt bodies; it differs from final Hessian 2 (see
`_core/codecs/hessian.pyx` for the data-plane reader). Grammar, first byte of a value:

    'N' null   'T' / 'F' booleans
    int    0x80-0xbf (-16..47)  0xc0-0xcf b0  0xd0-0xd7 b1 b0  'I' b3..b0
    long   0xd8-0xef (-8..15)   0xf0-0xff b0  0x38-0x3f b1 b0  0x77 b3..b0  'L' b7..b0
    double 'D' 8 bytes  0x67 0.0  0x68 1.0  0x69 b0  0x6a b1 b0  0x6b float32
    string 0x00-0x1f utf8   'S' u16 utf8 (final chunk)   's' u16 utf8 (more follow)
           lengths count UTF-16 units
    binary 0x20-0x2f bytes  'B' u16 bytes  'b' u16 bytes (more follow)
    'd'    date, ms i64
    object 'O' int len, name (raw utf8), int n, n strings   -- a class definition, then:
           'o' int classref, n values
    list   'V' [type] ('n' u8 | 'l' i32) length, values, 'z'
           'v' int typeref, int length, values
    map    'M' [type] (key value)* 'z'     'H' (key value)* 'z'
    type   't' u16 len, raw name           'u' int typeref
    ref    0x4a u8   0x4b u16   'R' i32    (to the n-th list/map/object read)

Bad input raises `HessianError` (a ValueError) with the offset; never anything else.
Objects decode to `JavaObject(class_name, fields)`; lists to list, maps to dict.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HessianError", "JavaLong", "JavaObject", "decode", "encode"]

MAX_DEPTH = 64  # nesting bound: hostile input must not exhaust the stack


class HessianError(ValueError):
    """Bytes that are not a valid value of the draft dialect."""


@dataclass(frozen=True, slots=True)
class JavaLong:
    """An int to write as a Java long (Python ints are written as Java ints)."""

    value: int


@dataclass(slots=True)
class JavaObject:
    """A serialized Java object: its class name and fields in declaration order."""

    class_name: str
    fields: dict[str, Any] = field(default_factory=dict)


_S_U16 = struct.Struct(">H")
_S_I32 = struct.Struct(">i")
_S_I64 = struct.Struct(">q")
_S_F64 = struct.Struct(">d")
_S_F32 = struct.Struct(">f")


# ---------------------------------------------------------------- encoding


def encode(value: Any) -> bytes:
    """One value (with its own class and reference tables, as one Bolt body has)."""
    out = bytearray()
    _Writer(out).write(value)
    return bytes(out)


class _Writer:
    __slots__ = ("classes", "out", "types")

    def __init__(self, out: bytearray) -> None:
        self.out = out
        self.classes: dict[str, int] = {}
        self.types: dict[str, int] = {}

    def write(self, v: Any) -> None:
        out = self.out
        if v is None:
            out += b"N"
        elif v is True:
            out += b"T"
        elif v is False:
            out += b"F"
        elif isinstance(v, str):
            self.put_string(v)
        elif isinstance(v, JavaLong):
            self.put_long(v.value)
        elif isinstance(v, int):
            self.put_int(v)
        elif isinstance(v, float):
            out += b"D" + _S_F64.pack(v)
        elif isinstance(v, (bytes, bytearray)):
            self.put_binary(bytes(v))
        elif isinstance(v, JavaObject):
            self.put_obj(v)
        elif isinstance(v, (list, tuple)):
            out += b"V"
            n = len(v)
            if n < 0x100:
                out += b"n" + bytes((n,))
            else:
                out += b"l" + _S_I32.pack(n)
            for item in v:
                self.write(item)
            out += b"z"
        elif isinstance(v, dict):
            out += b"M"
            for k, item in v.items():
                self.write(k)
                self.write(item)
            out += b"z"
        else:
            raise TypeError(f"cannot write {type(v).__name__} as hessian")

    def put_int(self, v: int) -> None:
        out = self.out
        if -0x10 <= v <= 0x2F:
            out.append(v + 0x90)
        elif -0x800 <= v <= 0x7FF:
            out += bytes(((v >> 8) + 0xC8, v & 0xFF))
        elif -0x40000 <= v <= 0x3FFFF:
            out += bytes(((v >> 16) + 0xD4, (v >> 8) & 0xFF, v & 0xFF))
        elif -(2**31) <= v < 2**31:
            out += b"I" + _S_I32.pack(v)
        else:
            raise ValueError(f"{v} does not fit a Java int; wrap it in JavaLong")

    def put_long(self, v: int) -> None:
        out = self.out
        if -8 <= v <= 15:
            out.append(v + 0xE0)
        elif -2048 <= v <= 2047:
            out += bytes(((v >> 8) + 0xF8, v & 0xFF))
        elif -262144 <= v <= 262143:
            out += bytes(((v >> 16) + 0x3C, (v >> 8) & 0xFF, v & 0xFF))
        elif -(2**31) <= v < 2**31:
            out += b"\x77" + _S_I32.pack(v)
        else:
            out += b"L" + _S_I64.pack(v)

    def put_string(self, s: str) -> None:
        out = self.out
        if s.isascii():
            n = len(s)
            if n <= 31:
                out.append(n)
                out += s.encode()
                return
            pos = 0
            while n - pos > 0x8000:
                out += b"s\x80\x00" + s[pos : pos + 0x8000].encode()
                pos += 0x8000
            rest = s[pos:]
            if len(rest) <= 31:
                out.append(len(rest))
            else:
                out += b"S" + _S_U16.pack(len(rest))
            out += rest.encode()
            return
        # non-ASCII: lengths count UTF-16 units, and a chunk must not split a surrogate pair
        units = s.encode("utf-16-be")
        total = len(units) // 2
        pos = 0
        while total - pos > 0x8000:
            end = pos + 0x8000
            if 0xD800 <= _S_U16.unpack_from(units, 2 * end - 2)[0] <= 0xDBFF:
                end -= 1
            out += b"s" + _S_U16.pack(end - pos) + _utf8(units[2 * pos : 2 * end])
            pos = end
        n = total - pos
        if n <= 31:
            out.append(n)
        else:
            out += b"S" + _S_U16.pack(n)
        out += _utf8(units[2 * pos :])

    def put_binary(self, b: bytes) -> None:
        out = self.out
        pos = 0
        while len(b) - pos > 0x8000:
            out += b"b\x80\x00" + b[pos : pos + 0x8000]
            pos += 0x8000
        rest = b[pos:]
        if len(rest) <= 15:
            out.append(0x20 + len(rest))
        else:
            out += b"B" + _S_U16.pack(len(rest))
        out += rest

    def put_obj(self, o: JavaObject) -> None:
        ref = self.classes.get(o.class_name)
        names = list(o.fields)
        if ref is None:
            ref = self.classes[o.class_name] = len(self.classes)
            raw = o.class_name.encode()
            self.out += b"O"
            self.put_int(len(raw))
            self.out += raw
            self.put_int(len(names))
            for name in names:
                self.put_string(name)
        self.out += b"o"
        self.put_int(ref)
        for name in names:
            self.write(o.fields[name])


def _utf8(utf16: bytes) -> bytes:
    return utf16.decode("utf-16-be", "surrogatepass").encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------- decoding


def decode(data: bytes | bytearray | memoryview) -> Any:
    """The first value in data (trailing bytes are ignored, as Bolt bodies may pad)."""
    r = _Reader(bytes(data))
    try:
        return r.read(0)
    except (IndexError, struct.error) as e:
        raise HessianError(f"truncated at offset {r.pos}") from e
    except UnicodeDecodeError as e:
        raise HessianError(f"bad UTF-8 near offset {r.pos}") from e


class _Reader:
    __slots__ = ("b", "classes", "pos", "refs", "types")

    def __init__(self, b: bytes) -> None:
        self.b = b
        self.pos = 0
        self.classes: list[tuple[str, list[str]]] = []
        self.types: list[str] = []
        self.refs: list[Any] = []

    def fail(self, msg: str) -> HessianError:
        return HessianError(f"{msg} at offset {self.pos}")

    def byte(self) -> int:
        c = self.b[self.pos]
        self.pos += 1
        return c

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.b):
            raise self.fail(f"truncated: want {n} bytes")
        v = self.b[self.pos : self.pos + n]
        self.pos += n
        return v

    def u16(self) -> int:
        v: int = _S_U16.unpack_from(self.b, self.pos)[0]
        self.pos += 2
        return v

    def i32(self) -> int:
        v: int = _S_I32.unpack_from(self.b, self.pos)[0]
        self.pos += 4
        return v

    def read_int(self) -> int:
        c = self.byte()
        if 0x80 <= c <= 0xBF:
            return c - 0x90
        if 0xC0 <= c <= 0xCF:
            return ((c - 0xC8) << 8) + self.byte()
        if 0xD0 <= c <= 0xD7:
            return ((c - 0xD4) << 16) + self.u16()
        if c == 0x49:
            return self.i32()
        self.pos -= 1
        raise self.fail(f"expected an int, got 0x{c:02x}")

    def chars(self, n: int) -> str:
        """n UTF-16 units of UTF-8 from the stream."""
        b = self.b
        start = pos = self.pos
        while n > 0:
            c = b[pos]
            if c < 0x80:
                pos += 1
            elif c < 0xC0:
                raise self.fail("bad UTF-8 lead byte")
            elif c < 0xE0:
                pos += 2
            elif c < 0xF0:
                pos += 3
            else:
                pos += 4
                n -= 1  # a surrogate pair: two UTF-16 units
            n -= 1
        if pos > len(b):
            raise self.fail("truncated string")
        self.pos = pos
        return b[start:pos].decode("utf-8", "surrogatepass")

    def string_rest(self, c: int) -> str:
        parts = []
        while True:
            if c <= 0x1F:
                parts.append(self.chars(c))
                return "".join(parts)
            if c in (0x53, 0x73):  # 'S' final, 's' more
                parts.append(self.chars(self.u16()))
                if c == 0x53:
                    return "".join(parts)
                c = self.byte()
                continue
            self.pos -= 1
            raise self.fail(f"expected a string chunk, got 0x{c:02x}")

    def read_type(self) -> str:
        c = self.b[self.pos]
        if c == 0x74:  # 't'
            self.pos += 1
            name = self.take(self.u16()).decode()
            self.types.append(name)
            return name
        if c == 0x75:  # 'u'
            self.pos += 1
            i = self.read_int()
            if not 0 <= i < len(self.types):
                raise self.fail(f"type ref {i} out of range")
            return self.types[i]
        return ""

    def read(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise self.fail("nested too deep")
        c = self.byte()
        if c <= 0x1F or c in (0x53, 0x73):
            return self.string_rest(c)
        if 0x80 <= c <= 0xBF:
            return c - 0x90
        if 0xC0 <= c <= 0xCF:
            return ((c - 0xC8) << 8) + self.byte()
        if 0xD0 <= c <= 0xD7:
            return ((c - 0xD4) << 16) + self.u16()
        if 0xD8 <= c <= 0xEF:
            return c - 0xE0
        if c >= 0xF0:
            return ((c - 0xF8) << 8) + self.byte()
        if 0x38 <= c <= 0x3F:
            return ((c - 0x3C) << 16) + self.u16()
        if c == 0x4E:
            return None
        if c == 0x54:
            return True
        if c == 0x46:
            return False
        if c in (0x49, 0x77):
            return self.i32()
        if c in (0x4C, 0x64):  # 'L' long, 'd' date (ms)
            v: int = _S_I64.unpack_from(self.b, self.pos)[0]
            self.pos += 8
            return v
        if c == 0x44:
            d: float = _S_F64.unpack_from(self.b, self.pos)[0]
            self.pos += 8
            return d
        if c == 0x67:
            return 0.0
        if c == 0x68:
            return 1.0
        if c == 0x69:
            return float(struct.unpack_from(">b", self.b, self._adv(1))[0])
        if c == 0x6A:
            return float(struct.unpack_from(">h", self.b, self._adv(2))[0])
        if c == 0x6B:
            return float(_S_F32.unpack_from(self.b, self._adv(4))[0])
        if 0x20 <= c <= 0x2F:
            return self.take(c - 0x20)
        if c in (0x42, 0x62):
            return self.binary_rest(c)
        if c == 0x4F:  # 'O' class definition, then the instance
            name = self.take(self.read_int()).decode()
            n = self.read_int()
            if n < 0 or n > len(self.b):
                raise self.fail(f"bad field count {n}")
            names = []
            for _ in range(n):
                fc = self.byte()
                names.append(self.string_rest(fc))
            self.classes.append((name, names))
            return self.read(depth + 1)
        if c == 0x6F:  # 'o'
            i = self.read_int()
            if not 0 <= i < len(self.classes):
                raise self.fail(f"class ref {i} out of range")
            name, names = self.classes[i]
            o = JavaObject(name)
            self.refs.append(o)
            for fname in names:
                o.fields[fname] = self.read(depth + 1)
            return o
        if c == 0x56:  # 'V'
            self.read_type()
            lc = self.b[self.pos]
            n = -1
            if lc == 0x6E:
                self.pos += 1
                n = self.byte()
            elif lc == 0x6C:
                self.pos += 1
                n = self.i32()
            items: list[Any] = []
            self.refs.append(items)
            if n >= 0:
                if n > len(self.b) - self.pos:
                    raise self.fail(f"bad list length {n}")
                for _ in range(n):
                    items.append(self.read(depth + 1))
                if self.byte() != 0x7A:
                    raise self.fail("list without its 'z'")
            else:
                while self.b[self.pos] != 0x7A:
                    items.append(self.read(depth + 1))
                self.pos += 1
            return items
        if c == 0x76:  # 'v' typeref, length
            self.read_int()
            n = self.read_int()
            if n < 0 or n > len(self.b) - self.pos:
                raise self.fail(f"bad list length {n}")
            items = []
            self.refs.append(items)
            for _ in range(n):
                items.append(self.read(depth + 1))
            return items
        if c in (0x4D, 0x48):  # 'M' [type], 'H'
            if c == 0x4D:
                self.read_type()
            m: dict[Any, Any] = {}
            self.refs.append(m)
            while self.b[self.pos] != 0x7A:
                k = self.read(depth + 1)
                if isinstance(k, (list, dict, JavaObject)):
                    raise self.fail("unhashable map key")
                m[k] = self.read(depth + 1)
            self.pos += 1
            return m
        if c in (0x4A, 0x4B, 0x52):
            i = self.byte() if c == 0x4A else self.u16() if c == 0x4B else self.i32()
            if not 0 <= i < len(self.refs):
                raise self.fail(f"ref {i} out of range")
            return self.refs[i]
        self.pos -= 1
        raise self.fail(f"unexpected byte 0x{c:02x}")

    def _adv(self, n: int) -> int:
        p = self.pos
        if p + n > len(self.b):
            raise self.fail("truncated")
        self.pos += n
        return p

    def binary_rest(self, c: int) -> bytes:
        parts = []
        while True:
            if 0x20 <= c <= 0x2F:
                parts.append(self.take(c - 0x20))
                return b"".join(parts)
            if c in (0x42, 0x62):
                parts.append(self.take(self.u16()))
                if c == 0x42:
                    return b"".join(parts)
                c = self.byte()
                continue
            raise self.fail(f"expected a binary chunk, got 0x{c:02x}")
