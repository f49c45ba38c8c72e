"""Polling helpers for tests: wait for a condition with a deadline, then fail naming it."""

from __future__ import annotations

import asyncio
import time


def wait_until(pred, timeout: float, what: str, step: float = 0.05):
    """Polls `pred()` until it returns something truthy (returned); AssertionError naming
    `what` and the last value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last={last!r}")


async def until(pred, timeout: float = 5.0, what: str = "condition"):
    """`wait_until` for a coroutine: polls the plain callable `pred()` without blocking the
    event loop the code under test runs on."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = pred()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
