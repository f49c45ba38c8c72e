"""Runs `--mode validate` over Envoy's example corpus and compares with Envoy's verdicts.

`python -m sofamesh.config.conformance DIR` prints the Markdown table of
docs/ENVOY_CONFORMANCE.md. DIR holds the configs and `envoy-verdicts.tsv`
(`file<TAB>accepted|rejected<TAB>Envoy's reason`); it runs with DIR as the working
directory, as Envoy's verdicts were taken.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass

from sofamesh.config.errors import ConfigError, Problem

_KEY_PATTERNS = (
    r"Invalid path: (\S+)",
    r"from path: (\S+)",
    r"could not find @type '([^']+)",
    r"module '([^']+)' not found",
    r"system: '([^']+)' does not exist",
    r"watch for file (\S+?):",
    r"unknown cluster '([^']+)'",
)


def reason_key(reason: str) -> str:
    """The object Envoy's reason names (a file, type URL, module, cluster), or the reason."""
    for pat in _KEY_PATTERNS:
        m = re.search(pat, reason)
        if m:
            return m.group(1)
    return reason


@dataclass
class Row:
    file: str
    envoy: str  # accepted | rejected
    envoy_reason: str
    sofamesh: str  # accepted | rejected | unsupported
    problems: list[Problem]

    @property
    def agrees(self) -> bool:
        if self.envoy == "accepted":
            return self.sofamesh in ("accepted", "unsupported")
        key = reason_key(self.envoy_reason)
        return self.sofamesh == "rejected" and any(
            p.kind != "unsupported" and key[:90] in p.message for p in self.problems
        )


def read_verdicts(folder: str) -> list[tuple[str, str, str]]:
    rows = []
    with open(os.path.join(folder, "envoy-verdicts.tsv")) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 2 and parts[0]:
                rows.append((parts[0], parts[1], parts[2] if len(parts) > 2 else ""))
    return rows


def judge(path: str) -> tuple[str, list[Problem]]:
    """sofamesh's verdict on one config, relative paths resolved from the current dir."""
    from sofamesh.config import load_bootstrap

    try:
        load_bootstrap(path)
    except ConfigError as e:
        return ("unsupported" if e.unsupported_only else "rejected"), e.problems
    return "accepted", []


def run(folder: str) -> list[Row]:
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        return [Row(f, v, r, *judge(f)) for f, v, r in read_verdicts(".")]
    finally:
        os.chdir(cwd)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def markdown(rows: list[Row]) -> str:
    out = [
        "| file | Envoy 1.40 | sofamesh | agrees | sofamesh's reason (first findings) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        shown = r.problems
        if r.envoy == "rejected":
            shown = sorted(r.problems, key=lambda p: p.kind == "unsupported")
        why = "; ".join(f"`{p.path}`: {p.message}" if p.path else p.message for p in shown[:3])
        if len(shown) > 3:
            why += f"; ... ({len(shown) - 3} more)"
        out.append(
            f"| {r.file} | {r.envoy} | {r.sofamesh} | {'yes' if r.agrees else '**NO**'} "
            f"| {_cell(why)} |"
        )
    return "\n".join(out)


def gaps_table(rows: list[Row]) -> str:
    """Which unimplemented feature stops how many of the configs Envoy accepts."""
    counts: dict[str, set[str]] = {}
    for r in rows:
        if r.envoy != "accepted":
            continue
        for p in r.problems:
            if p.kind == "unsupported":
                what = re.sub(r"^\w+: ", "", p.message) if ": " in p.message[:12] else p.message
                counts.setdefault(what, set()).add(r.file)
    out = ["| not implemented by sofamesh | configs it stops |", "|---|---|"]
    for what, files in sorted(counts.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        out.append(f"| {_cell(what)} | {len(files)} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    folder = args[0] if args else "."
    rows = run(folder)
    print(markdown(rows))
    print()
    print(gaps_table(rows))
    n_ok = sum(r.agrees for r in rows)
    print(
        f"\n{n_ok}/{len(rows)} agree with Envoy; "
        f"{sum(r.sofamesh == 'accepted' for r in rows)} accepted, "
        f"{sum(r.sofamesh == 'unsupported' for r in rows)} refused as not implemented, "
        f"{sum(r.sofamesh == 'rejected' for r in rows)} rejected."
    )
    return 0 if n_ok == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
