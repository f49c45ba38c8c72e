"""Envoy's regular expressions are RE2: what RE2 refuses that Python's engine would take."""

from __future__ import annotations

import re

_RE2_PERL_OP = re.compile(r"\(\?(<=|<!|=|!|>)")
_RE2_BAD_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*(\\[1-9ZG])")
_RE2_ONLY = re.compile(r"\\[pPzC]")


def re2_error(pattern: str) -> str | None:
    """Why RE2 (Envoy's regex engine) refuses `pattern`, as far as can be told here: Perl
    operators and escapes RE2 lacks, else whatever Python's engine refuses, unless the
    pattern uses RE2-only syntax Python cannot parse."""
    m = _RE2_PERL_OP.search(pattern)
    if m:
        return f"invalid perl operator: (?{m.group(1)}"
    m = _RE2_BAD_ESCAPE.search(pattern)
    if m:
        return f"invalid escape sequence: {m.group(1)}"
    if _RE2_ONLY.search(pattern):
        return None
    try:
        re.compile(pattern)
    except re.error as e:
        return f"invalid regex '{pattern}': {e}"
    return None
