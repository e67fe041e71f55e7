"""A real headless Chromium driven over the DevTools protocol (websocket-client).

Started in its own session with a fresh profile and a kernel-chosen debugging
port (read back from ``DevToolsActivePort``); :meth:`Chromium.close` kills its
whole process group, and only it. Chromium is told not to phone home
(``--disable-background-networking`` and friends), so the only address it
talks to is the page's 127.0.0.1.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import websocket

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-quic", "--disable-extensions", "--disable-default-apps",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]


def require_chromium() -> str:
    path = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if not path:
        pytest.skip("status page tests need Debian's chromium (scripts/bootstrap.sh installs it)")
    return path


class Chromium:
    """One headless Chromium with one page target."""

    def __init__(self, profile: Path, timeout: float = 30.0) -> None:
        binary = require_chromium()
        profile.mkdir(parents=True, exist_ok=True)
        self.log_path = profile.parent / "chromium.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self._ids = itertools.count(1)
        self.ws: websocket.WebSocket | None = None
        try:
            port = self._devtools_port(profile, timeout)
            self.ws = websocket.create_connection(self._page_socket(port, timeout), timeout=timeout)
        except BaseException:
            self.close()
            raise

    def _devtools_port(self, profile: Path, timeout: float) -> int:
        marker = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.process.returncode}; "
                                   f"see {self.log_path}")
            if marker.exists():
                lines = marker.read_text().split()
                if lines:
                    return int(lines[0])
            time.sleep(0.1)
        raise TimeoutError(f"chromium wrote no DevToolsActivePort in {timeout} s")

    @staticmethod
    def _page_socket(port: int, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                targets = json.load(r)
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            if time.monotonic() > deadline:
                raise TimeoutError("chromium shows no page target")
            time.sleep(0.1)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a DevTools method and return its result (events in between are skipped)."""
        assert self.ws is not None
        call_id = next(self._ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str, width: int, height: int) -> None:
        """Show *url* in a window of *width* x *height* CSS pixels and wait for it to load."""
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=2, mobile=True)
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'", 15)

    def wait_for(self, expression: str, timeout: float) -> Any:
        """Poll *expression* until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression!r} still false after {timeout} s")
            time.sleep(0.1)

    def screenshot(self, path: Path) -> None:
        """The whole page (beyond the window's height) as a PNG file."""
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = self.send("Page.captureScreenshot", format="png", clip=clip,
                         captureBeyondViewport=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self._log.close()
