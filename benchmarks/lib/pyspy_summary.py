"""Summarise a `py-spy record --native -f raw` profile: where a proxy's time goes.

    python benchmarks/lib/pyspy_summary.py PROFILE.txt [--top 25]

Samples whose leaf is epoll_wait/epoll_pwait are dropped (--keep-wait keeps them): py-spy
--native records the event loop's wait for I/O as activity, so they are mostly idle time.
Prints, as shares of the remaining samples:
- the leaf frame's layer (kernel calls through libc, libuv, uvloop's loop.c, CPython's
  object/interpreter code, sofamesh's Cython modules, Python source);
- self time by leaf function;
- self time by the deepest sofamesh Cython function on the stack (its own code plus the
  CPython, uvloop and libc calls it makes directly): the "whose cost is this" view;
- inclusive time by function (each function counted once per sample).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<fn>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
LIBUV = {"core.c", "stream.c", "linux.c", "timer.c", "heap-inl.h", "uv-common.c", "queue.h"}


def parse(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    out = []
    for raw in path.read_text().splitlines():
        stack, _, n = raw.rpartition(" ")
        if not n.isdigit():
            continue
        frames = []
        for f in stack.split(";"):
            m = FRAME.match(f)
            frames.append((m.group("fn"), m.group("file")) if m else (f, "?"))
        out.append((frames, int(n)))
    return out


def layer(fn: str, file: str) -> str:
    if file.endswith((".pyx", ".pxd")):
        return "sofamesh Cython (.pyx)"
    if "libc.so" in file or file == "[vdso]":
        return "libc (system calls, malloc)"
    if file in LIBUV:
        return "libuv"
    if file == "loop.c" or "uvloop" in file:
        return "uvloop (loop.c)"
    if file.endswith((".h", ".c")) or "python" in file.lower():
        return "CPython (refcounts, objects, calls)"
    if file.endswith(".py") or file == "sofamesh":
        return "Python source (.py)"
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("profile", type=Path)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--keep-wait", action="store_true", help="keep epoll_wait/epoll_pwait leaves")
    args = ap.parse_args()
    stacks = parse(args.profile)
    everything = sum(n for _, n in stacks)
    if not args.keep_wait:
        stacks = [
            (f, n) for f, n in stacks if not f[-1][0].startswith(("epoll_wait", "epoll_pwait"))
        ]
    total = sum(n for _, n in stacks)
    layers: Counter = Counter()
    leaf: Counter = Counter()
    owner: Counter = Counter()
    incl: Counter = Counter()
    for frames, n in stacks:
        fn, file = frames[-1]
        layers[layer(fn, file)] += n
        leaf[f"{fn} ({file})"] += n
        own = next(
            (f"{f} ({fl})" for f, fl in reversed(frames) if fl.endswith((".pyx", ".py"))), "?"
        )
        owner[own] += n
        for name in {f"{f} ({fl})" for f, fl in frames}:
            incl[name] += n

    def show(title: str, c: Counter, top: int) -> None:
        print(f"\n{title}")
        for name, n in c.most_common(top):
            print(f"  {100 * n / total:5.1f}%  {name}")

    print(
        f"{args.profile}: {everything} samples, {everything - total} waiting in epoll "
        f"{'kept' if args.keep_wait else 'dropped'}; shares of {total}"
    )
    show("leaf frame by layer", layers, 20)
    show("self time by leaf function", leaf, args.top)
    show("self time by deepest sofamesh / Python function", owner, args.top)
    show("inclusive time", incl, args.top + 15)


if __name__ == "__main__":
    main()
