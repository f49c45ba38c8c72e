"""The `sofamesh` command: dispatches to each component's own command line, imported lazily."""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, function, one-line help). Each module owns its own argument parser,
# so a component's flags change without touching this file.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "proxy": ("sofamesh.proxy.cli", "main", "run the sidecar (Envoy-compatible flags)"),
    "pilot": ("sofamesh.pilot.cli", "main", "run the control plane (xDS + registry API)"),
    "register": ("sofamesh.pilot.register", "main", "register a service instance with a pilot"),
    "policy": ("sofamesh.pilot.policy_cli", "main", "who may call a service, and its rate"),
    "cert": (
        "sofamesh.pilot.bootstrap",
        "main",
        "bootstrap certificates from a pilot's CA (join secret, tokens, requests)",
    ),
    "proxy-status": (
        "sofamesh.pilot.proxy_status",
        "main",
        "which sidecars a pilot serves, and whether each is in sync",
    ),
    "mixer": ("sofamesh.mixer.cli", "main", "global quota, rate-limit and access log services"),
    "demo": ("sofamesh.demo", "main", "start a small mesh: pilot, two apps, a sidecar each"),
}


def _usage() -> str:
    lines = ["usage: sofamesh COMMAND [ARGS...]", "", "commands:"]
    for name, (_, _, text) in COMMANDS.items():
        lines.append(f"  {name:<13} {text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if args[0] == "--version":
        from sofamesh import __version__

        print(f"sofamesh {__version__}")
        return 0
    cmd = COMMANDS.get(args[0])
    if cmd is None:
        print(f"sofamesh: unknown command {args[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, func, _ = cmd
    rc = getattr(importlib.import_module(module), func)(args[1:])
    return int(rc or 0)
