"""The HTML report of a real DAG run, rendered by headless Chromium.

Scope: the page loads with the network switched off, every <img> decodes (naturalWidth > 0),
nothing is logged as an error on the console, nothing is fetched but the page itself, and a
full-page screenshot is saved (its path is printed, so CI output shows where it is). The
checker is first shown to fail on a page with a broken image and a console error.

Chromium is driven through the DevTools Protocol over a websocket (websocket-client). The
test is skipped when Debian's ``chromium`` is not installed, and fails instead when
FMRIFLOW_REQUIRE_BROWSER=1 (CI sets it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)
ARTIFACTS_ENV = "FMRIFLOW_ARTIFACTS"
WIDTH = 1200  # CSS pixels of the window the page is laid out in


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        message = "chromium is not installed (apt-get install chromium)"
        if os.environ.get("FMRIFLOW_REQUIRE_BROWSER") == "1":
            pytest.fail(message + "; FMRIFLOW_REQUIRE_BROWSER=1 asks for the browser test")
        pytest.skip(message)
    pytest.importorskip("websocket", reason="websocket-client is not installed")
    profile = tempfile.mkdtemp(prefix="fmriflow-chromium-")
    proc = subprocess.Popen(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        port = _devtools_port(proc)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


def _devtools_port(proc: subprocess.Popen, timeout: float = 60) -> int:
    """Chromium prints 'DevTools listening on ws://127.0.0.1:PORT/...' on stderr once it is ready."""
    deadline = time.time() + timeout
    seen = []
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        match = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
        if match:
            return int(match.group(1))
    raise AssertionError("chromium did not start its DevTools endpoint:\n" + "".join(seen[-20:]))


class _Page:
    """One browser tab over the DevTools Protocol: commands, and the events collected meanwhile."""

    def __init__(self, port: int):
        import websocket

        request = urllib.request.Request(f"http://127.0.0.1:{port}/json/new?about:blank", method="PUT")
        with urllib.request.urlopen(request, timeout=30) as response:
            target = json.load(response)
        self.ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.events: list[dict] = []
        self._next = 0

    def send(self, method: str, **params):
        self._next += 1
        self.ws.send(json.dumps({"id": self._next, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._next:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while not any(e.get("method") == method for e in self.events):
            if time.time() > deadline:
                raise AssertionError(f"no {method} within {timeout} s")
            self.events.append(json.loads(self.ws.recv()))

    def close(self) -> None:
        self.ws.close()


def render(port: int, html: Path, screenshot: Path | None = None) -> dict:
    """Open ``html`` offline; return broken images, console errors, outside requests and counts."""
    page = _Page(port)
    try:
        for domain in ("Page", "Runtime", "Log", "Network"):
            page.send(f"{domain}.enable")
        page.send("Network.emulateNetworkConditions", offline=True, latency=0, downloadThroughput=-1, uploadThroughput=-1)
        page.send("Emulation.setDeviceMetricsOverride", width=WIDTH, height=900, deviceScaleFactor=1, mobile=False)
        page.send("Page.navigate", url=html.resolve().as_uri())
        page.wait_for("Page.loadEventFired")
        state = json.loads(page.send("Runtime.evaluate", returnByValue=True, expression="""JSON.stringify({
            images: [...document.images].map(i => ({alt: i.alt.slice(0, 80), complete: i.complete, width: i.naturalWidth})),
            figures: document.querySelectorAll('figure').length,
            sections: [...document.querySelectorAll('section')].map(s => s.id),
            height: document.documentElement.scrollHeight})""")["result"]["value"])
        if screenshot is not None:
            shot = page.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                             clip={"x": 0, "y": 0, "width": WIDTH, "height": state["height"], "scale": 1})
            import base64

            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        events = page.events
    finally:
        page.close()
    console = [e["params"] for e in events if e.get("method") == "Runtime.consoleAPICalled"
               and e["params"].get("type") in ("error", "assert")]
    exceptions = [e["params"] for e in events if e.get("method") == "Runtime.exceptionThrown"]
    log_errors = [e["params"]["entry"] for e in events if e.get("method") == "Log.entryAdded"
                  and e["params"]["entry"].get("level") == "error"]
    requests = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
    return {
        "broken_images": [i for i in state["images"] if not i["complete"] or i["width"] == 0],
        "console_errors": console + exceptions + log_errors,
        "outside_requests": [u for u in requests if not u.startswith(("file:", "data:"))],
        **state,
    }


def test_checker_catches_a_broken_image_and_a_console_error(browser, tmp_path):
    """The checks of the real report below can fail: a bad PNG and console.error are both caught."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><img alt="broken" src="data:image/png;base64,iVBORw0KGgoAAAA=">'
                   '<script>console.error("planted error")</script></body></html>')
    result = render(browser, bad)
    assert [i["alt"] for i in result["broken_images"]] == ["broken"]
    assert any("planted error" in json.dumps(e) for e in result["console_errors"])


def test_report_renders_offline_without_errors(browser, pipeline):
    _, results, base, _ = pipeline
    html = results / "report" / "fmriflow_report.html"
    folder = Path(os.environ.get(ARTIFACTS_ENV) or base)
    screenshot = folder / "fmriflow_report_screenshot.png"
    result = render(browser, html, screenshot)
    print(f"\nreport screenshot: {screenshot} ({result['height']} px high page, {len(result['images'])} images)")
    assert result["sections"] == ["summary", "dataset", "run-qc", "coverage", "connectivity", "pretraining",
                                  "finetuning", "provenance"]
    assert len(result["images"]) == result["figures"] >= 12
    assert result["broken_images"] == []
    assert result["console_errors"] == []
    assert result["outside_requests"] == []
    data = screenshot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width == WIDTH and height == result["height"] > 3000
