"""A headless Chromium driven over the DevTools protocol pipe: load a page, run JavaScript in
it, move and click the real mouse, take a screenshot.

What the viewer's browser test and load-time benchmark need, and nothing more: no package
from outside the standard library, no network port (``--remote-debugging-pipe`` speaks the
protocol over file descriptors 3 and 4 as NUL-terminated JSON messages). Chromium comes from
Debian (``apt-get install chromium``); ``find_chromium`` says whether it is there.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class BrowserError(RuntimeError):
    """Chromium died, timed out or answered a command with an error."""


def find_chromium() -> str | None:
    """The path of a Chromium-like browser on PATH (``$CHROMIUM`` first), or None."""
    for name in (os.environ.get("CHROMIUM"), *CANDIDATES):
        if name and (path := shutil.which(name)):
            return path
    return None


class Browser:
    """One headless Chromium with one page; use as a context manager.

    ``load(url)`` navigates and waits for the load event; ``evaluate(js)`` returns the value of
    an expression (promises awaited); ``click``/``move`` send real mouse events at CSS pixel
    coordinates of the viewport; ``screenshot`` writes a PNG.
    """

    def __init__(self, width: int = 1400, height: int = 900, timeout: float = 60.0):
        executable = find_chromium()
        if executable is None:
            raise BrowserError("no chromium on PATH (apt-get install chromium)")
        self.timeout = timeout
        self._profile = tempfile.TemporaryDirectory(prefix="viewer-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_pipe():  # in the child: the protocol's fds 3 (commands in) and 4 (answers out)
            high_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)  # out of 3 and 4's way
            high_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self._stderr = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [
                executable, "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--disable-background-networking", "--mute-audio",
                "--remote-debugging-pipe", f"--user-data-dir={self._profile.name}",
                f"--window-size={width},{height}", "about:blank",
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
            preexec_fn=wire_pipe, close_fds=False,
        )  # fmt: skip
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict] = []
        self._session: str | None = None
        try:
            targets = self._send("Target.getTargets")["targetInfos"]
            page = next(t for t in targets if t["type"] == "page")
            self._session = self._send(
                "Target.attachToTarget", targetId=page["targetId"], flatten=True
            )["sessionId"]
            self.send("Page.enable")
            self.send("Runtime.enable")
            self.send(
                "Emulation.setDeviceMetricsOverride",
                width=width, height=height, deviceScaleFactor=1, mobile=False,
            )  # fmt: skip
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ protocol
    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"chromium did not answer within {self.timeout:.0f} s")
            ready, _, _ = select.select([self._from_browser], [], [], min(left, 1.0))
            if not ready:
                if self._process.poll() is not None:
                    raise BrowserError(f"chromium exited: {self._stderr_tail()}")
                continue
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise BrowserError(f"chromium closed the pipe: {self._stderr_tail()}")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def _send(self, method: str, session: str | None = None, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            answer = self._read_message(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise BrowserError(f"{method}: {answer['error'].get('message')}")
                return answer.get("result", {})
            if "method" in answer:
                self._events.append(answer)

    def send(self, method: str, **params) -> dict:
        """One protocol command to the page; its result."""
        return self._send(method, self._session, **params)

    def wait_event(self, method: str, timeout: float | None = None) -> dict:
        """The next event ``method`` of the page (those already received count)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            for k, event in enumerate(self._events):
                if event["method"] == method:
                    return self._events.pop(k)
            self._events.append(self._read_message(deadline))

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        return " | ".join(lines[-3:]) or "(no message)"

    # ------------------------------------------------------------------ page
    def load(self, url: str | Path) -> None:
        """Navigate to ``url`` (a path becomes a file:// URL) and wait for its load event."""
        if isinstance(url, Path):
            url = url.resolve().as_uri()
        self._events = [e for e in self._events if e["method"] != "Page.loadEventFired"]
        result = self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"cannot load {url}: {result['errorText']}")
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (JSON-serialisable values)."""
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"JavaScript error: {text}")
        return result["result"].get("value")

    def move(self, x: float, y: float) -> None:
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)

    def click(self, x: float, y: float, *, modifiers: int = 0) -> None:
        """A left click at (x, y); ``modifiers``: 1 Alt, 2 Ctrl, 4 Meta, 8 Shift."""
        self.move(x, y)
        for kind in ("mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1,
                modifiers=modifiers,
            )  # fmt: skip

    def type_text(self, text: str) -> None:
        """Type ``text`` into the focused element."""
        self.send("Input.insertText", text=text)

    def screenshot(self, path: str | Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        path = Path(path)
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self._send("Browser.close")
            except (BrowserError, OSError):
                pass
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        self._stderr.close()
        self._profile.cleanup()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
