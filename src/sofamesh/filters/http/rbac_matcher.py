"""The `matcher` form of envoy.filters.http.rbac (an xds.type.matcher.v3.Matcher list whose
actions are envoy.config.rbac.v3.Action) compiled into a MatcherEngine.

Implemented: `matcher_list` with predicates `single_predicate` (input
`envoy.matching.inputs.request_headers`: the header's values joined by ","; a missing header
matches nothing; `value_match`), `or_matcher`, `and_matcher`, `not_matcher`; `on_match.action`
and `on_no_match.action` (ALLOW, DENY, LOG). With no match and no on_no_match the request is
denied, as in Envoy. Refused by path: `matcher_tree`, nested `matcher`, `keep_matching`,
`custom_match`, other inputs.
"""

from __future__ import annotations

from typing import Any

from sofamesh.config.support import register_extension
from sofamesh.proxy.errors import UnsupportedConfig

ACTION_URL = "type.googleapis.com/envoy.config.rbac.v3.Action"
HEADER_INPUT_URL = "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput"
register_extension(ACTION_URL, __name__)
register_extension(HEADER_INPUT_URL, __name__)


class _MatcherCompiler:
    def __init__(self) -> None:
        self.header_names: set[str] = set()

    def engine(self, m: Any, path: str) -> Any:
        from sofamesh._core.rbac_matcher import MatcherEngine

        if m.WhichOneof("matcher_type") == "matcher_tree":
            raise UnsupportedConfig(
                f"{path}.matcher_tree: RBAC matcher trees are not implemented by sofamesh "
                "(use matcher_list)"
            )
        matchers = []
        for i, fm in enumerate(m.matcher_list.matchers):
            fpath = f"{path}.matcher_list.matchers[{i}]"
            rule = self.predicate(fm.predicate, f"{fpath}.predicate")
            action, name = self.action(fm.on_match, f"{fpath}.on_match")
            matchers.append((rule, action, name))
        default = None
        if m.HasField("on_no_match"):
            default = self.action(m.on_no_match, f"{path}.on_no_match")
        return MatcherEngine(matchers, default, sorted(self.header_names))

    def action(self, om: Any, path: str) -> tuple[int, str]:
        from envoy.config.rbac.v3 import rbac_pb2

        from sofamesh._core import rbac as C

        if om.keep_matching:
            raise UnsupportedConfig(f"{path}.keep_matching is not implemented by sofamesh")
        if om.WhichOneof("on_match") != "action":
            raise UnsupportedConfig(
                f"{path}.matcher: nested RBAC matchers are not implemented by sofamesh"
            )
        tc = om.action.typed_config
        msg = rbac_pb2.Action()
        if tc.type_url != ACTION_URL or not tc.Unpack(msg):
            raise UnsupportedConfig(f"{path}.action.typed_config: expected {ACTION_URL}")
        act = {0: C.ACTION_ALLOW, 1: C.ACTION_DENY, 2: C.ACTION_LOG}.get(msg.action)
        if act is None:
            raise UnsupportedConfig(f"{path}.action: unknown RBAC action {msg.action}")
        return act, msg.name

    def predicate(self, p: Any, path: str) -> Any:
        from sofamesh._core import rbac as C

        kind = p.WhichOneof("match_type")
        kpath = f"{path}.{kind}"
        if kind == "single_predicate":
            return self.single(p.single_predicate, kpath)
        if kind in ("or_matcher", "and_matcher"):
            rules = [
                self.predicate(x, f"{kpath}.predicate[{i}]")
                for i, x in enumerate(getattr(p, kind).predicate)
            ]
            return C.OrRule(rules) if kind == "or_matcher" else C.AndRule(rules)
        if kind == "not_matcher":
            return C.NotRule(self.predicate(p.not_matcher, kpath))
        raise UnsupportedConfig(f"{path}: predicate {kind!r} is not implemented by sofamesh")

    def single(self, sp: Any, path: str) -> Any:
        from envoy.type.matcher.v3 import http_inputs_pb2

        from sofamesh._core import rbac as C
        from sofamesh._core import router as R
        from sofamesh.proxy.routes import string_matcher

        tc = sp.input.typed_config
        if tc.type_url != HEADER_INPUT_URL:
            raise UnsupportedConfig(
                f"{path}.input: matching input {tc.type_url or sp.input.name!r} is not "
                "implemented by sofamesh (request_headers only)"
            )
        if sp.WhichOneof("matcher") != "value_match":
            raise UnsupportedConfig(f"{path}.custom_match is not implemented by sofamesh")
        inp = http_inputs_pb2.HttpRequestHeaderMatchInput()
        tc.Unpack(inp)
        name = inp.header_name.lower()
        self.header_names.add(name)
        sm = string_matcher(sp.value_match, f"{path}.value_match")
        # a present header whose (joined) value the string matcher takes; absent: no match
        return C.HeaderRule(R.HeaderMatcher(name, sm, True, False), False)


def compile_matcher(m: Any, path: str) -> Any:
    """A MatcherEngine from an RBAC `matcher` / `shadow_matcher`."""
    return _MatcherCompiler().engine(m, path)
