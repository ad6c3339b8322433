"""Browser fixtures: a real headless Chromium (Debian package), driven over the DevTools protocol.

`chromium` installs the Debian package when it is not on PATH (the tests run as root in CI);
where it cannot be installed, the tests that need it are skipped with the reason.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
START_TIMEOUT_S = 30
CALL_TIMEOUT_S = 60


def _apt_install(package: str) -> str:
    """Install a Debian package (refreshing the package lists once if needed); '' or why not."""
    if shutil.which("apt-get") is None:
        return "apt-get not found (not a Debian/Ubuntu machine)"
    if os.geteuid() != 0:
        return f"not root, cannot apt-get install {package}"
    install = ["apt-get", "install", "-y", "--no-install-recommends", package]
    result = subprocess.run(install, env=APT_ENV, capture_output=True, text=True)
    if result.returncode != 0:  # stale or missing package lists: refresh them once
        subprocess.run(["apt-get", "update"], env=APT_ENV, capture_output=True)
        result = subprocess.run(install, env=APT_ENV, capture_output=True, text=True)
    if result.returncode == 0:
        return ""
    lines = (result.stderr or result.stdout).strip().splitlines()
    return f"apt-get install {package} failed: {lines[-1] if lines else result.returncode}"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of the system Chromium, installed from Debian when missing."""
    path = shutil.which("chromium")
    if path is None:
        started = time.perf_counter()
        reason = _apt_install("chromium")
        if reason:
            pytest.skip(f"headless Chromium unavailable: {reason}")
        print(f"\ninstalled chromium in {time.perf_counter() - started:.0f} s")
        path = shutil.which("chromium")
        if path is None:
            pytest.skip("headless Chromium unavailable: installed, but `chromium` is not on PATH")
    return path


@dataclass
class Page:
    """One tab, driven over the DevTools protocol; records console errors and dialogs."""

    socket: object  # websocket.WebSocket
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def call(self, method: str, **params) -> dict:
        """Send one command and return its result, recording the events that arrive meanwhile."""
        call_id = self._send(method, **params)
        return self._until(lambda message: message.get("id") == call_id)["result"]

    def _send(self, method: str, **params) -> int:
        call_id = next(self._ids)
        self.socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
        return call_id

    def open(self, url: str) -> None:
        """Navigate to `url` and wait for its load event (images and media metadata started)."""
        self.errors.clear()
        self.dialogs.clear()
        self.call("Page.navigate", url=url)
        self._until(lambda message: message.get("method") == "Page.loadEventFired")

    def evaluate(self, expression: str) -> object:
        """The JSON value of a JavaScript expression (promises are awaited)."""
        result = self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"JavaScript failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def _until(self, done) -> dict:
        deadline = time.monotonic() + CALL_TIMEOUT_S
        while time.monotonic() < deadline:
            message = json.loads(self.socket.recv())
            if "error" in message:
                raise AssertionError(f"DevTools error: {message['error']}")
            self._record(message)
            if done(message):
                return message
        raise TimeoutError("no answer from Chromium")

    def _record(self, message: dict) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            self.errors.append(" ".join(str(a.get("value", a)) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            self.errors.append(params["exceptionDetails"].get("text", "exception"))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            self.errors.append(f"{params['entry']['text']} {params['entry'].get('url', '')}")
        elif method == "Page.javascriptDialogOpening":
            self.dialogs.append(params["message"])
            self._send("Page.handleJavaScriptDialog", accept=True)  # else the page stays blocked


@pytest.fixture
def browser_page(chromium: str, tmp_path_factory) -> Iterator[Page]:
    """A fresh headless Chromium with one tab whose console and dialogs are recorded."""
    websocket = pytest.importorskip("websocket", reason="pip install websocket-client")
    profile = tmp_path_factory.mktemp("chromium-profile")
    process = subprocess.Popen(
        [
            chromium,
            "--headless",
            "--no-sandbox",  # root (CI) cannot use Chromium's sandbox
            "--disable-gpu",
            "--no-first-run",
            "--autoplay-policy=no-user-gesture-required",  # let tests press play
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port = _devtools_port(profile / "DevToolsActivePort", process)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as response:
            targets = json.load(response)
        page_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        socket = websocket.create_connection(page_url, timeout=CALL_TIMEOUT_S, suppress_origin=True)
        page = Page(socket)
        for domain in ("Page", "Runtime", "Log"):
            page.call(f"{domain}.enable")
        yield page
        socket.close()
    finally:
        process.terminate()
        process.wait(timeout=10)


def _devtools_port(port_file: Path, process: subprocess.Popen) -> int:
    """The debugging port Chromium chose, from the file it writes once it listens."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"chromium exited with status {process.returncode}")
        if port_file.exists() and port_file.read_text().strip():
            return int(port_file.read_text().splitlines()[0])
        time.sleep(0.1)
    raise TimeoutError(f"chromium did not open its debugging port in {START_TIMEOUT_S} s")
