"""A minimal Chrome DevTools Protocol client over aiohttp's websocket, for the console test."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
    "--window-size=1200,1000",
]
DEVTOOLS_LINE = re.compile(rb"DevTools listening on (ws://\S+)")


class CdpError(RuntimeError):
    """A DevTools command failed."""


class Page:
    """One browser tab attached in flat mode."""

    def __init__(self, browser: Browser, session_id: str) -> None:
        self.browser = browser
        self.session_id = session_id

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self.browser.send(method, session_id=self.session_id, **params)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JS expression (promises awaited); JS exceptions raise CdpError."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise CdpError(json.dumps(result["exceptionDetails"])[:500])
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float = 10.0) -> Any:
        """Poll until the expression is truthy; bounded by `timeout_s`."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"timed out waiting for: {expression}")
            await asyncio.sleep(0.05)

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))


class Browser:
    """A connection to a browser's DevTools websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.console: list[str] = []
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            future = self._pending.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                if "error" in data:
                    future.set_exception(CdpError(json.dumps(data["error"])))
                else:
                    future.set_result(data.get("result", {}))
            elif data.get("method") == "Runtime.consoleAPICalled":
                args = data["params"].get("args", [])
                self.console.append(" ".join(str(arg.get("value", "")) for arg in args))
            elif data.get("method") == "Runtime.exceptionThrown":
                self.console.append("exception: " + json.dumps(data["params"])[:300])
        for future in self._pending.values():
            if not future.done():
                future.set_exception(CdpError("browser connection closed"))

    async def send(self, method: str, session_id: str | None = None, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session_id is not None:
            message["sessionId"] = session_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = future
        await self.ws.send_str(json.dumps(message))
        return await asyncio.wait_for(future, timeout=20)

    async def new_page(self) -> Page:
        target = await self.send("Target.createTarget", url="about:blank")
        attached = await self.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)
        page = Page(self, attached["sessionId"])
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        return page

    async def close(self) -> None:
        self._reader.cancel()
        await self.ws.close()


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


@asynccontextmanager
async def launch(executable: str, user_data_dir: Path, extra_flags: list[str]) -> AsyncIterator[Browser]:
    """Start headless Chromium, connect over CDP, and always stop it again."""
    process = await asyncio.create_subprocess_exec(
        executable,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={user_data_dir}",
        *extra_flags,
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HOME": str(user_data_dir)},
        start_new_session=True,  # its own process group: every helper process is stopped with it
    )
    session: aiohttp.ClientSession | None = None
    browser: Browser | None = None
    drain: asyncio.Task[None] | None = None
    try:
        assert process.stderr is not None
        url = None
        async with asyncio.timeout(30):
            while url is None:
                line = await process.stderr.readline()
                if not line:
                    raise CdpError("chromium exited before DevTools was listening")
                match = DEVTOOLS_LINE.search(line)
                if match:
                    url = match.group(1).decode()

        async def _drain_stderr() -> None:
            while await process.stderr.readline():
                pass

        drain = asyncio.ensure_future(_drain_stderr())
        session = aiohttp.ClientSession()
        ws = await session.ws_connect(url, max_msg_size=0)
        browser = Browser(ws)
        yield browser
    finally:
        if browser is not None:
            try:
                await asyncio.wait_for(browser.send("Browser.close"), timeout=5)
            except (CdpError, TimeoutError, ConnectionError):
                pass
            await browser.close()
        if session is not None:
            await session.close()
        if process.returncode is None:
            try:
                await asyncio.wait_for(process.wait(), timeout=5)
            except TimeoutError:
                process.kill()
                await process.wait()
        try:
            os.killpg(process.pid, signal.SIGKILL)  # helpers left behind by the browser, if any
        except ProcessLookupError:
            pass
        if drain is not None:
            drain.cancel()
