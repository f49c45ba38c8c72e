"""The suite's own guard: async tests run on uvloop, and an unhandled loop error is caught."""

import asyncio

import uvloop

from tests.conftest import _LOOP_ERRORS


async def test_async_tests_run_on_uvloop():
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


async def test_unhandled_task_error_is_collected():
    loop = asyncio.get_running_loop()
    loop.call_exception_handler({"message": "probe"})
    assert _LOOP_ERRORS and _LOOP_ERRORS[-1]["message"] == "probe"
    _LOOP_ERRORS.clear()  # this test provoked it on purpose
