"""Envoy's metadata matchers (envoy.type.matcher.v3.MetadataMatcher and ValueMatcher) on
sofamesh's dynamic metadata: a namespace's value is a dict as `json_format` gives a Struct
(str, float or int, bool, None, list, dict).

As Envoy's: the path walks nested structs from the namespace (`filter`); a missing key, or a
non-struct before the path's end, is an absent value. A ValueMatcher then tests the value:
`null_match` a null, `double_match` (range [start, end) or exact) a number, `string_match` a
string, `bool_match` a bool, `present_match: true` any value there, `list_match.one_of` a
list with one matching element, `or_match` any of its matchers. `invert` flips the result,
absent value included. Used by the RBAC `metadata` principal and permission
(filters/http/rbac.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sofamesh.proxy.errors import UnsupportedConfig

ValueTest = Callable[[Any], bool]
_ABSENT = object()


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def value_matcher(m: Any, path: str) -> ValueTest:
    """A ValueMatcher as a test of a value (`_ABSENT` when the path led nowhere)."""
    from sofamesh.proxy.routes import string_matcher

    kind = m.WhichOneof("match_pattern")
    if kind == "null_match":
        return lambda v: v is None
    if kind == "bool_match":
        want = m.bool_match
        return lambda v: isinstance(v, bool) and v == want
    if kind == "present_match":
        if not m.present_match:
            return lambda v: False  # Envoy's: present_match false never matches
        return lambda v: v is not _ABSENT
    if kind == "string_match":
        sm = string_matcher(m.string_match, f"{path}.string_match")
        return lambda v: isinstance(v, str) and sm.test(v.encode())
    if kind == "double_match":
        d = m.double_match
        which = d.WhichOneof("match_pattern")
        if which == "exact":
            x = d.exact
            return lambda v: _is_number(v) and float(v) == x
        if which == "range":
            lo, hi = d.range.start, d.range.end
            return lambda v: _is_number(v) and lo <= float(v) < hi
        raise UnsupportedConfig(f"{path}.double_match: a range or exact value is required")
    if kind == "list_match":
        if m.list_match.WhichOneof("match_pattern") != "one_of":
            raise UnsupportedConfig(f"{path}.list_match: one_of is required")
        inner = value_matcher(m.list_match.one_of, f"{path}.list_match.one_of")
        return lambda v: isinstance(v, list) and any(inner(x) for x in v)
    if kind == "or_match":
        tests = [
            value_matcher(x, f"{path}.or_match.value_matchers[{i}]")
            for i, x in enumerate(m.or_match.value_matchers)
        ]
        return lambda v: any(t(v) for t in tests)
    raise UnsupportedConfig(f"{path}: a ValueMatcher needs a match pattern")


class MetadataMatch:
    """A compiled MetadataMatcher: `matches(namespace dict or None)`."""

    __slots__ = ("filter", "invert", "keys", "test")

    def __init__(self, msg: Any, path: str) -> None:
        if not msg.filter:
            raise UnsupportedConfig(f"{path}.filter: required")
        keys = []
        for i, seg in enumerate(msg.path):
            if seg.WhichOneof("segment") != "key":
                raise UnsupportedConfig(f"{path}.path[{i}]: a path segment needs a key")
            keys.append(seg.key)
        if not keys:
            raise UnsupportedConfig(f"{path}.path: at least one segment is required")
        if not msg.HasField("value"):
            raise UnsupportedConfig(f"{path}.value: required")
        self.filter: str = msg.filter
        self.keys = tuple(keys)
        self.test = value_matcher(msg.value, f"{path}.value")
        self.invert = bool(msg.invert)

    def value(self, ns: dict | None) -> Any:
        v: Any = ns if ns is not None else _ABSENT
        for k in self.keys:
            if not isinstance(v, dict):
                return _ABSENT
            v = v.get(k, _ABSENT)
        return v

    def matches(self, ns: dict | None) -> bool:
        return self.test(self.value(ns)) != self.invert
