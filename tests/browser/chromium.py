"""Real headless Chromium (Debian's `chromium`), driven through the DevTools protocol over a pipe.

`--remote-debugging-pipe` makes Chromium read protocol messages (JSON, NUL-terminated) on fd 3 and
write its answers and events on fd 4: no websocket, no port, no extra Python package. A Page records
console messages, uncaught exceptions, log entries and every network request, so a test can assert
that a page loaded cleanly and fetched nothing.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

CHROMIUM = "/usr/bin/chromium"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe")


class ChromiumError(RuntimeError):
    pass


class Chromium:
    """One browser process; use as a context manager."""

    def __init__(self, timeout: float = 60.0) -> None:
        if not os.access(CHROMIUM, os.X_OK):
            raise ChromiumError(f"{CHROMIUM} is missing: apt-get install chromium (make setup does)")
        self.timeout = timeout
        self.profile_dir = tempfile.mkdtemp(prefix="pyprof-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def child_fds() -> None:
            # the pipes at exactly fd 3 (browser reads) and fd 4 (browser writes)
            high_r, high_w = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(high_r, 3, inheritable=True)
            os.dup2(high_w, 4, inheritable=True)

        self.stderr_path = os.path.join(self.profile_dir, "stderr.txt")
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={self.profile_dir}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
            # close_fds=False keeps fd 3 and 4 (made inheritable above); Python's other fds are
            # close-on-exec anyway
            preexec_fn=child_fds, close_fds=False)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    # ---- protocol ------------------------------------------------------------------------------
    def send(self, method: str, params: Optional[dict] = None, session: Optional[str] = None,
             timeout: Optional[float] = None) -> dict:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise ChromiumError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChromiumError(f"no answer from Chromium in time; stderr: {self.stderr()[-2000:]}")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise ChromiumError(f"Chromium closed the pipe; stderr: {self.stderr()[-2000:]}")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def pump(self, seconds: float) -> None:
        """Collect events for a while."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                self.events.append(self._read(deadline))
            except ChromiumError:
                if time.monotonic() >= deadline:
                    return
                raise

    def stderr(self) -> str:
        try:
            return Path(self.stderr_path).read_text(errors="replace")
        except OSError:
            return ""

    def new_page(self, width: int = 1400, height: int = 900) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session, target)
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        self.send("Emulation.setDeviceMetricsOverride", metrics, session=session)
        return page

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.send("Browser.close", timeout=10)
                except (ChromiumError, OSError):
                    pass
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            for fd in (self._to_browser, self._from_browser):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._stderr.close()
            shutil.rmtree(self.profile_dir, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Page:
    def __init__(self, browser: Chromium, session: str, target: str) -> None:
        self.browser = browser
        self.session = session
        self.target = target

    def close(self) -> None:
        self.browser.send("Target.closeTarget", {"targetId": self.target})

    def send(self, method: str, params: Optional[dict] = None, timeout: Optional[float] = None) -> dict:
        return self.browser.send(method, params, session=self.session, timeout=timeout)

    def _mine(self) -> list[dict]:
        return [e for e in self.browser.events if e.get("sessionId") == self.session]

    def navigate(self, url: str, timeout: float = 120.0) -> float:
        """Load `url` and wait for its load event; returns the seconds it took."""
        started = time.monotonic()
        seen = len(self.browser.events)
        self.send("Page.navigate", {"url": url})
        deadline = started + timeout
        while True:
            for event in self.browser.events[seen:]:
                if event.get("sessionId") == self.session and event.get("method") == "Page.loadEventFired":
                    return time.monotonic() - started
            seen = len(self.browser.events)
            if time.monotonic() > deadline:
                raise ChromiumError(f"{url} did not load in {timeout:.0f} s")
            self.browser.events.append(self.browser._read(deadline))

    def evaluate(self, expression: str, timeout: Optional[float] = None) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, timeout=timeout)
        if "exceptionDetails" in result:
            raise ChromiumError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise ChromiumError(f"{expression!r} still false after {timeout:.0f} s")
            time.sleep(0.1)

    def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left",
                                                   "clickCount": 1})

    def move(self, x: float, y: float) -> None:
        self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})

    def type_text(self, text: str) -> None:
        self.send("Input.insertText", {"text": text})

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
            metrics = self.send("Page.getLayoutMetrics")
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 8000),
                              "scale": 1}
        data = self.send("Page.captureScreenshot", params)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    # ---- what happened -----------------------------------------------------------------------------
    def console_errors(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions, and error log entries (failed loads)."""
        out = []
        for e in self._mine():
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
                out.append(f"console.{params['type']}: " + " ".join(
                    str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                out.append("exception: " + str(details.get("exception", {}).get("description")
                                               or details.get("text")))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
                entry = params["entry"]
                out.append(f"log.{entry['level']}: {entry.get('text')} {entry.get('url', '')}".strip())
        return out

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self._mine()
                if e.get("method") == "Network.requestWillBeSent"]


# ---- screenshots for humans --------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent.parent


def screenshot_dir() -> Path:
    """Where tests leave their screenshots (PYPROF_SCREENSHOTS, default build/screenshots)."""
    path = Path(os.environ.get("PYPROF_SCREENSHOTS", ROOT / "build" / "screenshots"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def terminal_screenshot(browser: Chromium, text: str, path: Path, columns: int = 160) -> Path:
    """A picture of terminal output (ANSI colours kept), drawn by rich's HTML export in Chromium."""
    import io

    from rich.console import Console
    from rich.terminal_theme import MONOKAI
    from rich.text import Text

    console = Console(record=True, width=columns, file=io.StringIO(), color_system="truecolor")
    console.print(Text.from_ansi(text.rstrip("\n")), crop=False, soft_wrap=True)
    page_html = console.export_html(theme=MONOKAI, inline_styles=True)
    page_html = page_html.replace("<body>", '<body style="margin:0;padding:10px 14px">', 1)
    page_html = page_html.replace("</head>", "<style>pre{display:inline-block;margin:0}</style></head>", 1)
    html_path = path.with_suffix(".html")
    html_path.write_text(page_html, encoding="utf-8")
    page = browser.new_page(width=2400, height=300)
    page.navigate(html_path.as_uri())
    width = page.evaluate("Math.ceil(document.querySelector('pre').getBoundingClientRect().width) + 28")
    height = page.evaluate("document.documentElement.scrollHeight")
    page.send("Emulation.setDeviceMetricsOverride",
              {"width": int(width), "height": int(height), "deviceScaleFactor": 1, "mobile": False})
    page.screenshot(path)
    page.close()
    html_path.unlink()
    return path
