"""`sofamesh policy`: set, show and remove a pilot's operator policies (pilot/policy.py).

    sofamesh policy allow reviews --from productpage --from ratings   # only these may call
    sofamesh policy rate reviews 100                                  # 100 requests/s in all
    sofamesh policy delete reviews access|rate
    sofamesh policy list [SERVICE]

`--pilot URL` (default http://127.0.0.1:15020; repeat or comma-separate for replicas: the
next is tried when one cannot be reached). Prints the pilot's JSON answer; a refused
policy prints its error (the field and why) and exits 1, an unreachable pilot exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from urllib.parse import quote


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sofamesh policy", description=__doc__.split("\n\n")[0])
    p.add_argument("--pilot", action="append", default=None, help="pilot REST API base URL")
    sub = p.add_subparsers(dest="verb", required=True)
    a = sub.add_parser("allow", help="SERVICE accepts calls only from the --from services")
    a.add_argument("service")
    a.add_argument("--from", dest="allow_from", action="append", required=True)
    r = sub.add_parser("rate", help="SERVICE takes at most RPS requests/s in total")
    r.add_argument("service")
    r.add_argument("rps", type=int)
    d = sub.add_parser("delete", help="remove SERVICE's access or rate policy")
    d.add_argument("service")
    d.add_argument("kind", choices=("access", "rate"))
    ls = sub.add_parser("list", help="every policy, or one service's")
    ls.add_argument("service", nargs="?")
    return p


def _request(base: str, method: str, path: str, body: dict | None) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        base + path, data=data, method=method, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw) if raw else {}
    except ValueError:
        return status, {"error": raw.decode(errors="replace")}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    bases = [
        u.strip().rstrip("/")
        for arg in (args.pilot or ["http://127.0.0.1:15020"])
        for u in arg.split(",")
        if u.strip()
    ]
    svc = quote(args.service or "", safe="")
    body = None
    if args.verb == "allow":
        method, path, body = (
            "PUT",
            f"/v1/services/{svc}/policies/access",
            {"allow_from": args.allow_from},
        )
    elif args.verb == "rate":
        method, path, body = (
            "PUT",
            f"/v1/services/{svc}/policies/rate",
            {"requests_per_second": args.rps},
        )
    elif args.verb == "delete":
        method, path = "DELETE", f"/v1/services/{svc}/policies/{args.kind}"
    else:
        method, path = "GET", f"/v1/services/{svc}/policies" if args.service else "/v1/policies"
    last: Exception | None = None
    for base in bases:
        try:
            status, out = _request(base, method, path, body)
        except OSError as e:
            last = e
            continue
        if status >= 500:
            last = OSError(f"{base}: HTTP {status}: {out}")
            continue
        if status >= 400:
            err = out.get("error") if isinstance(out, dict) else out
            print(f"sofamesh policy: {err}", file=sys.stderr)
            return 1
        if status != 204:
            print(json.dumps(out, indent=1, sort_keys=True))
        return 0
    print(f"sofamesh policy: no pilot answered: {last}", file=sys.stderr)
    return 2
