"""One Bolt connection carrying SOFARegistry messages, either end (asyncio).

The pilot's SOFARegistry adapter dials session servers with it; the emulated session server
in tests/support accepts with it. It answers heartbeats, matches responses to requests by
id, and hands each incoming request's message to `on_request`, whose return value (a
message, or None for no reply) goes back as the response. A frame that is not Bolt closes
the connection; a frame whose body is not the message its class names is counted
(`stats["bad_frames"]`), answered with a deserialization-error status, and dropped.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

from sofamesh._core.codecs.bolt import (
    STATUS_NAMES,
    STATUS_SERVER_DESERIAL_EXCEPTION,
    STATUS_SERVER_EXCEPTION,
    STATUS_SUCCESS,
    BoltDecoder,
    BoltFrame,
    error_response,
    heartbeat,
    heartbeat_ack,
)

from .sofa_wire import (
    BOLT_CMD_HEARTBEAT,
    Message,
    WireError,
    decode_body,
    encode_request,
    encode_response,
)

log = logging.getLogger("sofamesh.pilot.registries.sofaregistry")

MAX_FRAME = 64 * 1024 * 1024  # one ReceivedData holds every publisher of a dataId

OnRequest = Callable[["BoltPeer", Message], "Message | None"]


class CallError(Exception):
    """A request got an error status, a bad reply, or no reply in time."""


class BoltPeer(asyncio.Protocol):
    def __init__(
        self,
        on_request: OnRequest | None = None,
        on_close: Callable[[BoltPeer], None] | None = None,
        stats: Counter[str] | None = None,
    ) -> None:
        self.on_request = on_request
        self.on_close = on_close
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self.transport: asyncio.Transport | None = None
        self.peername: tuple[Any, ...] | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self._decoder = BoltDecoder(max_frame=MAX_FRAME)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}

    # ---------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike
        self.transport = cast(asyncio.Transport, transport)
        self.peername = transport.get_extra_info("peername")

    def data_received(self, data: bytes) -> None:
        for f in self._decoder.feed(data):
            if not isinstance(f, BoltFrame):
                self.stats["protocol_errors"] += 1
                log.warning("sofaregistry: %s from %s: closing", f.reason, self.peername)
                self.close()
                return
            try:
                self._frame(f)
            except Exception:  # a handler bug must not take the event loop down
                self.stats["handler_errors"] += 1
                log.exception("sofaregistry: handling a frame from %s failed", self.peername)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(CallError("connection closed"))
        self._pending.clear()
        if not self.closed.done():
            self.closed.set_result(None)
        if self.on_close is not None:
            self.on_close(self)

    # ---------------------------------------------------------------- frames

    def _frame(self, f: BoltFrame) -> None:
        if f.cmdcode == BOLT_CMD_HEARTBEAT:
            if f.is_request:
                self._write(heartbeat_ack(f))
            return
        if not f.is_request:
            fut = self._pending.pop(f.request_id, None)
            if fut is None or fut.done():
                return
            if f.status != STATUS_SUCCESS:
                name = STATUS_NAMES.get(f.status, str(f.status))
                fut.set_exception(CallError(f"status {f.status} ({name})"))
                return
            try:
                fut.set_result(decode_body(f.class_name, f.content))
            except WireError as e:
                self.stats["bad_frames"] += 1
                fut.set_exception(CallError(str(e)))
            return
        try:
            msg = decode_body(f.class_name, f.content)
        except WireError as e:
            self.stats["bad_frames"] += 1
            log.warning("sofaregistry: bad request from %s: %s", self.peername, e)
            if not f.is_oneway:
                self._write(error_response(f, STATUS_SERVER_DESERIAL_EXCEPTION))
            return
        reply = None
        if self.on_request is not None:
            try:
                reply = self.on_request(self, msg)
            except WireError as e:  # valid frame, meaningless content: the handler says so
                self.stats["bad_frames"] += 1
                log.warning(
                    "sofaregistry: bad %s from %s: %s", type(msg).__name__, self.peername, e
                )
                if not f.is_oneway:
                    self._write(error_response(f, STATUS_SERVER_EXCEPTION))
                return
        if reply is not None and not f.is_oneway:
            self._write(encode_response(f.request_id, reply))

    # ---------------------------------------------------------------- sending

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    async def call(self, msg: Message, timeout: float = 3.0) -> Message:
        """Send a request and wait for its response's message."""
        if not self.is_open:
            raise CallError("not connected")
        rid = next(self._ids) & 0x7FFFFFFF
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        self._write(encode_request(rid, msg, int(timeout * 1000)))
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise CallError(f"{type(msg).__name__}: no response in {timeout:g}s") from None
        finally:
            self._pending.pop(rid, None)

    def push(self, msg: Message, timeout: float = 3.0) -> asyncio.Future[Message]:
        """Send a request without waiting; the future gets the response (or CallError)."""
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        if not self.is_open:
            fut.set_exception(CallError("not connected"))
            return fut
        rid = next(self._ids) & 0x7FFFFFFF
        self._pending[rid] = fut
        self._write(encode_request(rid, msg, int(timeout * 1000)))
        timer = asyncio.get_running_loop().call_later(timeout, self._expire, rid)
        fut.add_done_callback(lambda f: _settled(f, timer))
        return fut

    def _expire(self, rid: int) -> None:
        fut = self._pending.pop(rid, None)
        if fut is not None and not fut.done():
            self.stats["push_timeouts"] += 1
            fut.set_exception(CallError("no response in time"))

    def ping(self) -> None:
        self._write(heartbeat(next(self._ids) & 0x7FFFFFFF))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _settled(fut: asyncio.Future[Message], timer: asyncio.TimerHandle) -> None:
    timer.cancel()
    if not fut.cancelled():
        fut.exception()  # retrieved: an unanswered push is counted, not logged by asyncio
