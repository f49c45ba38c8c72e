"""protoc-gen-validate rules, checked generically from the descriptors' `validate.rules` options.

Envoy rejects a config that breaks a `(validate.rules)` constraint of its API (a cluster
without a name, a zero `connect_timeout`, an undefined enum value, a missing required
oneof). xds-protos carries those options on every field, so one walker enforces them all,
with Envoy's wording ("value length must be at least 1 characters") and the field path.
Any fields are unpacked and validated as the message they hold.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from sofamesh.config import protos
from sofamesh.config.errors import Problem, join

_NUMBER_KINDS = {
    "float",
    "double",
    "int32",
    "int64",
    "uint32",
    "uint64",
    "sint32",
    "sint64",
    "fixed32",
    "fixed64",
    "sfixed32",
    "sfixed64",
}
_WRAPPERS = {
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
}
# protoc-gen-validate's well-known HTTP header regexes (strict mode).
_HEADER_NAME = re.compile(r"^:?[0-9a-zA-Z!#$%&'*+\-.^_|~`]+$")
_HEADER_VALUE = re.compile(r"^[^\x00-\x08\x0A-\x1F\x7F]*$")
_LOOSE = re.compile(r"^[^\x00\n\r]*$")

_rules_ext: Any = None
_required_ext: Any = None
_disabled_ext: Any = None


def _exts() -> tuple[Any, Any, Any]:
    global _rules_ext, _required_ext, _disabled_ext
    if _rules_ext is None:
        from validate import validate_pb2

        _rules_ext = validate_pb2.rules
        _required_ext = validate_pb2.required
        _disabled_ext = validate_pb2.disabled
    return _rules_ext, _required_ext, _disabled_ext


_field_rules_cache: dict[str, list[tuple[FieldDescriptor, Any]]] = {}
_oneof_cache: dict[str, list[str]] = {}


def _rules_for(desc: Descriptor) -> list[tuple[FieldDescriptor, Any]]:
    got = _field_rules_cache.get(desc.full_name)
    if got is None:
        rules_ext, required_ext, _ = _exts()
        got = []
        for f in desc.fields:
            opts = f.GetOptions()
            got.append((f, opts.Extensions[rules_ext] if opts.HasExtension(rules_ext) else None))
        _field_rules_cache[desc.full_name] = got
        _oneof_cache[desc.full_name] = [
            o.name
            for o in desc.oneofs
            if o.GetOptions().HasExtension(required_ext) and o.GetOptions().Extensions[required_ext]
        ]
    return got


def _dur_nanos(d: Any) -> int:
    return int(d.seconds) * 1_000_000_000 + int(d.nanos)


def _fmt_dur(d: Any) -> str:
    n = _dur_nanos(d)
    return f"{n / 1e9:g}s"


def _range(v: Any, r: Any, fmt=str, conv=lambda x: x) -> str | None:
    """PGV's const/lt/lte/gt/gte/in/not_in for numbers and durations; the failure text or None."""
    has = r.HasField
    if has("const") and v != conv(r.const):
        return f"value must equal {fmt(r.const)}"
    lo = hi = None
    lo_incl = hi_incl = False
    if has("gt"):
        lo = conv(r.gt)
    if has("gte"):
        lo, lo_incl = conv(r.gte), True
    if has("lt"):
        hi = conv(r.lt)
    if has("lte"):
        hi, hi_incl = conv(r.lte), True
    lo_s = fmt(r.gte if lo_incl else r.gt) if lo is not None else ""
    hi_s = fmt(r.lte if hi_incl else r.lt) if hi is not None else ""
    lo_ok = lo is None or (v >= lo if lo_incl else v > lo)
    hi_ok = hi is None or (v <= hi if hi_incl else v < hi)
    if lo is not None and hi is not None:
        if hi >= lo and not (lo_ok and hi_ok):
            return (
                f"value must be inside range {'[' if lo_incl else '('}{lo_s}, "
                f"{hi_s}{']' if hi_incl else ')'}"
            )
        if hi < lo and not (lo_ok or hi_ok):
            return (
                f"value must be outside range {'(' if hi_incl else '['}{hi_s}, "
                f"{lo_s}{')' if lo_incl else ']'}"
            )
        return None
    if not lo_ok:
        return f"value must be greater than {'or equal to ' if lo_incl else ''}{lo_s}"
    if not hi_ok:
        return f"value must be less than {'or equal to ' if hi_incl else ''}{hi_s}"
    if len(r.__class__.DESCRIPTOR.fields_by_name) and "in" in r.DESCRIPTOR.fields_by_name:
        ins = [conv(x) for x in getattr(r, "in")]
        if ins and v not in ins:
            return f"value must be in list {[fmt(x) for x in getattr(r, 'in')]}"
        if v in [conv(x) for x in r.not_in]:
            return f"value must not be in list {[fmt(x) for x in r.not_in]}"
    return None


def _check_string(v: str, r: Any) -> str | None:
    if getattr(r, "ignore_empty", False) and v == "":
        return None
    has = r.HasField
    n = len(v)
    if has("const") and v != r.const:
        return f"value must equal {r.const}"
    if has("len") and n != r.len:
        return f"value length must be {r.len} characters"
    if has("min_len") and n < r.min_len:
        return f"value length must be at least {r.min_len} characters"
    if has("max_len") and n > r.max_len:
        return f"value length must be at most {r.max_len} characters"
    b = len(v.encode())
    if has("min_bytes") and b < r.min_bytes:
        return f"value length must be at least {r.min_bytes} bytes"
    if has("max_bytes") and b > r.max_bytes:
        return f"value length must be at most {r.max_bytes} bytes"
    if has("pattern"):
        try:
            if not re.search(r.pattern, v):
                return f"value does not match regex pattern {r.pattern!r}"
        except re.error:
            pass  # an RE2-only construct: Envoy's check is the one that counts
    if has("prefix") and not v.startswith(r.prefix):
        return f"value does not have prefix {r.prefix!r}"
    if has("suffix") and not v.endswith(r.suffix):
        return f"value does not have suffix {r.suffix!r}"
    if has("contains") and r.contains not in v:
        return f"value does not contain substring {r.contains!r}"
    if has("not_contains") and r.not_contains in v:
        return f"value contains substring {r.not_contains!r}"
    ins = list(getattr(r, "in"))
    if ins and v not in ins:
        return f"value must be in list {ins}"
    if v in r.not_in:
        return f"value must not be in list {list(r.not_in)}"
    if has("well_known_regex") and v:
        strict = not has("strict") or r.strict
        wk = r.well_known_regex
        if wk in (1, 2):  # HTTP_HEADER_NAME, HTTP_HEADER_VALUE
            rx = _LOOSE if not strict else (_HEADER_NAME if wk == 1 else _HEADER_VALUE)
            if not rx.match(v):
                return "value does not match regex pattern " + repr(rx.pattern)
    return None


def _check_scalar(v: Any, fr: Any, kind: str, f: FieldDescriptor) -> str | None:
    r = getattr(fr, kind)
    if kind == "string":
        return _check_string(v, r)
    if kind == "bytes":
        has = r.HasField
        if has("min_len") and len(v) < r.min_len:
            return f"value length must be at least {r.min_len} bytes"
        if has("max_len") and len(v) > r.max_len:
            return f"value length must be at most {r.max_len} bytes"
        if has("len") and len(v) != r.len:
            return f"value length must be {r.len} bytes"
        return None
    if kind == "bool":
        if r.HasField("const") and v != r.const:
            return f"value must equal {r.const}"
        return None
    if kind == "enum":
        if r.defined_only and f.enum_type is not None and v not in f.enum_type.values_by_number:
            return "value must be one of the defined enum values"
        if r.HasField("const") and v != r.const:
            return f"value must equal {r.const}"
        ins = list(getattr(r, "in"))
        if ins and v not in ins:
            return f"value must be in list {ins}"
        if v in r.not_in:
            return f"value must not be in list {list(r.not_in)}"
        return None
    if kind in _NUMBER_KINDS:
        if getattr(r, "ignore_empty", False) and v == 0:
            return None
        return _range(v, r)
    return None


class Validator:
    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, path: str, msg: str) -> None:
        self.problems.append(Problem(path, msg, "constraint"))

    def message(self, m: Message, path: str) -> None:
        desc = m.DESCRIPTOR
        if desc.full_name == "google.protobuf.Any":
            inner = protos.unpack_any(m)
            if inner is None:
                from sofamesh.filters.istio import ISTIO_TYPE_PREFIXES

                if protos.type_name(m.type_url).startswith(ISTIO_TYPE_PREFIXES):
                    # Istio's own protos, as istiod sends them over xDS (xds-protos lacks
                    # them): passed through as filters (config/validate.py, filters/istio.py)
                    return
                self.problems.append(
                    Problem(path, f"could not find @type '{m.type_url}'", "unknown_type")
                )
                return
            self.message(inner, path)
            return
        if desc.full_name.startswith("google.protobuf."):
            return
        _, _, disabled_ext = _exts()
        mopts = desc.GetOptions()
        if mopts.HasExtension(disabled_ext) and mopts.Extensions[disabled_ext]:
            return
        rules = _rules_for(desc)
        for oneof in _oneof_cache[desc.full_name]:
            if m.WhichOneof(oneof) is None:
                self.add(join(path, oneof), "value is required")
        for f, fr in rules:
            self.field(m, f, fr, join(path, f.name))

    def field(self, m: Message, f: FieldDescriptor, fr: Any, path: str) -> None:
        if f.containing_oneof is not None and m.WhichOneof(f.containing_oneof.name) != f.name:
            return  # rules of a oneof member apply only when it is the one set
        kind = fr.WhichOneof("type") if fr is not None else None
        is_msg = f.message_type is not None
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            mp = getattr(m, f.name)
            if fr is not None and kind == "map":
                r = fr.map
                if r.HasField("min_pairs") and len(mp) < r.min_pairs:
                    self.add(path, f"value must contain at least {r.min_pairs} pair(s)")
                if r.HasField("max_pairs") and len(mp) > r.max_pairs:
                    self.add(path, f"value must contain no more than {r.max_pairs} pair(s)")
            vf = f.message_type.fields_by_name["value"]
            kf = f.message_type.fields_by_name["key"]
            for k in mp:
                if kind == "map" and fr.map.HasField("keys"):
                    self._one(k, kf, fr.map.keys, f"{path}[{k!r}]")
                v = mp[k]
                if kind == "map" and fr.map.HasField("values"):
                    self._one(v, vf, fr.map.values, f"{path}[{k!r}]")
                elif vf.message_type is not None:
                    self.message(v, f"{path}[{k!r}]")
            return
        if f.is_repeated:
            items = getattr(m, f.name)
            item_rules = None
            if kind == "repeated":
                r = fr.repeated
                if getattr(r, "ignore_empty", False) and len(items) == 0:
                    return
                if r.HasField("min_items") and len(items) < r.min_items:
                    self.add(path, f"value must contain at least {r.min_items} item(s)")
                if r.HasField("max_items") and len(items) > r.max_items:
                    self.add(path, f"value must contain no more than {r.max_items} item(s)")
                if r.unique and len(set(items)) != len(items) and not is_msg:
                    self.add(path, "repeated value must contain unique items")
                if r.HasField("items"):
                    item_rules = r.items
            for i, v in enumerate(items):
                p = f"{path}[{i}]"
                if item_rules is not None:
                    self._one(v, f, item_rules, p)
                elif is_msg:
                    self.message(v, p)
            return
        if is_msg:
            present = m.HasField(f.name)
            if fr is not None:
                if fr.HasField("message"):
                    if fr.message.required and not present:
                        self.add(path, "value is required")
                    if fr.message.skip:
                        return
                if kind in ("any", "duration", "timestamp") and (
                    getattr(fr, kind).required and not present
                ):
                    self.add(path, "value is required")
            if not present:
                return
            self._one(getattr(m, f.name), f, fr, path)
            return
        if fr is None or kind is None:
            return
        # proto3 `optional` scalars are checked only when set
        if f.has_presence and f.containing_oneof is None and not m.HasField(f.name):
            return
        err = _check_scalar(getattr(m, f.name), fr, kind, f)
        if err:
            self.add(path, err)

    def _one(self, v: Any, f: FieldDescriptor, fr: Any, path: str) -> None:
        """One value (a singular field's, a list item, a map key or value) against rules."""
        kind = fr.WhichOneof("type") if fr is not None else None
        mt = f.message_type
        if mt is None:
            if kind:
                err = _check_scalar(v, fr, kind, f)
                if err:
                    self.add(path, err)
            return
        name = mt.full_name
        if kind == "duration":
            r = fr.duration
            err = _range(_dur_nanos(v), r, fmt=_fmt_dur, conv=_dur_nanos)
            if err:
                self.add(path, err)
            return
        if kind == "any":
            r = fr.any
            ins = list(getattr(r, "in"))
            if ins and v.type_url not in ins:
                self.add(path, f"type URL must be in list {ins}")
            if v.type_url in r.not_in:
                self.add(path, f"type URL must not be in list {list(r.not_in)}")
        if name in _WRAPPERS and kind and kind not in ("message",):
            err = _check_scalar(v.value, fr, kind, mt.fields_by_name["value"])
            if err:
                self.add(path, err)
            return
        self.message(v, path)


def validate_message(m: Message, path: str = "") -> list[Problem]:
    """Every protoc-gen-validate constraint `m` breaks, with field paths."""
    v = Validator()
    v.message(m, path)
    return v.problems


def iter_set_fields(m: Message) -> Iterator[tuple[FieldDescriptor, Any]]:
    yield from m.ListFields()
