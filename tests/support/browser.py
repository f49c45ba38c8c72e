"""A real headless Chromium (Debian's `chromium`) driven over the Chrome DevTools protocol.

    with HeadlessChromium(tmp_path) as browser:
        page = browser.open("http://127.0.0.1:8080/")
        page.wait_for("document.querySelectorAll('tr').length > 2")
        text = page.eval("document.body.innerText")
        assert not page.errors  # uncaught exceptions and console.error of the page

One browser process with a fresh profile, its DevTools endpoint on a free port (read from
DevToolsActivePort), spoken to with aiohttp's websocket client on a loop of its own, so the
test stays synchronous. ci/install.sh installs `chromium`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Self

import aiohttp

FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


class BrowserError(RuntimeError):
    pass


def chromium_binary() -> str:
    path = os.environ.get("SOFAMESH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        raise BrowserError(f"chromium not found at {path}: run `bash ci/install.sh test`")
    return path


class Page:
    def __init__(self, browser: HeadlessChromium, session: str):
        self.browser = browser
        self.session = session
        self.errors: list[str] = []  # uncaught exceptions and console.error messages

    def call(self, method: str, **params: Any) -> dict:
        return self.browser.call(method, params, self.session)

    def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression (awaited when it is a promise)."""
        r = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in r:
            raise BrowserError(f"{expression!r}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0) -> Any:
        """Polls `expression` until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout} s waiting for {expression!r}")
            time.sleep(0.1)


class HeadlessChromium:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.profile = workdir / "chromium-profile"
        self.proc: subprocess.Popen | None = None
        self._loop = asyncio.new_event_loop()
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._pages: dict[str, Page] = {}

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> None:
        self.profile.mkdir(parents=True, exist_ok=True)
        port_file = self.profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)  # a reused profile's is stale
        log = open(self.workdir / "chromium.log", "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [chromium_binary(), *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop() ends its helpers too
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            lines = port_file.read_text().split("\n") if port_file.exists() else []
            if len(lines) >= 2 and lines[1]:
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BrowserError(
                    "chromium did not start: " + (self.workdir / "chromium.log").read_text()[-2000:]
                )
            time.sleep(0.05)
        url = f"ws://127.0.0.1:{lines[0].strip()}{lines[1].strip()}"
        try:
            self._run(self._connect(url))
        except BaseException:
            self.stop()
            raise

    async def _connect(self, url: str) -> None:
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(url, max_msg_size=0, heartbeat=None)

    def _run(self, coro: Any, timeout: float = 30.0) -> Any:
        return self._loop.run_until_complete(asyncio.wait_for(coro, timeout))

    async def _call(self, method: str, params: dict, session: str | None) -> dict:
        assert self._ws is not None
        msg_id = next(self._ids)
        msg: dict = {"id": msg_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        await self._ws.send_str(json.dumps(msg))
        while True:
            frame = await self._ws.receive()
            if frame.type != aiohttp.WSMsgType.TEXT:
                raise BrowserError(f"DevTools connection ended: {frame.type!r}")
            reply = json.loads(frame.data)
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._event(reply)

    def _event(self, ev: dict) -> None:
        page = self._pages.get(ev.get("sessionId", ""))
        if page is None:
            return
        method, params = ev.get("method"), ev.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = params.get("exceptionDetails", {})
            page.errors.append(d.get("exception", {}).get("description") or d.get("text", "?"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            page.errors.append(" ".join(str(a.get("value", "")) for a in params.get("args", [])))

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        return self._run(self._call(method, params or {}, session))

    def open(self, url: str, timeout: float = 20.0) -> Page:
        """A new tab at `url`, once its load event fired."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        page = self._pages[session] = Page(self, session)
        page.call("Runtime.enable")
        page.call("Page.enable")
        nav = page.call("Page.navigate", url=url)
        if nav.get("errorText"):
            raise BrowserError(f"{url}: {nav['errorText']}")
        page.wait_for("document.readyState === 'complete'", timeout)
        return page

    def stop(self) -> None:
        if self._ws is not None or self._http is not None:
            with contextlib.suppress(Exception):  # the browser may be gone already
                self._run(self._close(), timeout=5)
        if self.proc is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.proc.pid, sig)  # the group started above, by its id
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=5)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self.proc = None
        if not self._loop.is_closed():
            self._loop.close()

    async def _close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
            self._ws = None
        if self._http is not None:
            await self._http.close()
            self._http = None
