"""Shared test helpers: free loopback ports, the real Envoy binary, loop-exception checks."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import shutil
import socket
import sys
from pathlib import Path

import pytest
import uvloop

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"  # copied in with provenance: tests/fixtures/README.md


# Ports for the servers tests start by number (Envoy, sofamesh, peers): below the kernel's
# ephemeral range (32768-60999 here), where outgoing connections take their source ports, and
# a slice of its own for each pytest-xdist worker, so that no other process or worker is
# handed the same port between the check and the bind (Envoy and gRPC would share it
# silently with SO_REUSEPORT).
_PORT_BASE = 20000
_PORT_SLICE = 2000
_worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
_slice = int(_worker[2:]) % 6 if _worker[2:].isdigit() else 0
# (from a random place in the slice: two test sessions at once do not walk in step)
_port_next = itertools.count(random.randrange(_PORT_SLICE))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing uses now: the next of this worker's slice that a
    plain bind (no SO_REUSEADDR: a port with connections in TIME_WAIT is passed over) takes."""
    for _ in range(_PORT_SLICE):
        port = _PORT_BASE + _slice * _PORT_SLICE + next(_port_next) % _PORT_SLICE
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_PORT_BASE + _slice * _PORT_SLICE} + {_PORT_SLICE}")


def envoy_binary() -> str:
    """The real Envoy 1.40 binary: $SOFAMESH_ENVOY, else .venv-envoy/bin/envoy (ci/install.sh)."""
    path = os.environ.get("SOFAMESH_ENVOY") or str(ROOT / ".venv-envoy" / "bin" / "envoy")
    if not os.access(path, os.X_OK):
        pytest.fail(f"Envoy binary not found at {path}: run `bash ci/install.sh test`")
    return path


def sofamesh_command() -> list[str]:
    """How tests start the `sofamesh` command as a separate process."""
    exe = shutil.which("sofamesh", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "sofamesh"]


@pytest.fixture
def unused_port() -> int:
    return free_port()


_LOOP_ERRORS: list[dict] = []


def _collect_loop_error(loop, context) -> None:
    _LOOP_ERRORS.append(context)
    loop.default_exception_handler(context)


def _new_checking_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop, as sofamesh runs, whose unhandled exceptions are collected."""
    loop = uvloop.new_event_loop()
    loop.set_exception_handler(_collect_loop_error)
    return loop


def pytest_asyncio_loop_factories(config, item):
    """pytest-asyncio runs every async test on a checking uvloop loop."""
    return {"uvloop": _new_checking_loop}


@pytest.fixture(autouse=True)
def _fail_on_loop_exceptions():
    """Any exception that reaches an asyncio loop's handler fails the test that caused it."""
    _LOOP_ERRORS.clear()
    orig = asyncio.BaseEventLoop.default_exception_handler

    def handler(self, context):
        _LOOP_ERRORS.append(context)
        orig(self, context)

    asyncio.BaseEventLoop.default_exception_handler = handler  # type: ignore[method-assign]
    try:
        yield
    finally:
        asyncio.BaseEventLoop.default_exception_handler = orig  # type: ignore[method-assign]
    if _LOOP_ERRORS:
        errors = list(_LOOP_ERRORS)
        _LOOP_ERRORS.clear()
        pytest.fail(f"unhandled event-loop exceptions: {errors!r}")
