"""A real-browser check of rlkit serve's chat page (not part of the test suite: it needs Chromium).

Starts `rlkit serve CHECKPOINT --port 0`, opens the page in headless Chromium through the DevTools
protocol, types a question into the box and presses Enter (real input events), records the reply's text
while it streams, and saves a screenshot once the reply is done.

    python tests/manual/browser_check.py runs/quickstart /tmp/chat.png   # Debian: apt-get install chromium
    python tests/manual/browser_check.py runs/quickstart /tmp/chat.png KEY   # a server with --api-key KEY:
                                                                             # the key is typed into the page
"""
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from base64 import b64decode
from pathlib import Path

import websockets

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have now?"


def start_server(checkpoint, log, key):
    extra = ["--api-key", key] if key else []
    proc = subprocess.Popen([sys.executable, "-m", "rlkit", "serve", checkpoint, "--port", "0", *extra],
                            stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    while not (m := re.search(r"on (http://[\d.]+:\d+) ", Path(log).read_text())):
        assert proc.poll() is None, Path(log).read_text()
        time.sleep(0.1)
    return proc, m.group(1)


def start_browser(profile):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    proc = subprocess.Popen([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
                             f"--user-data-dir={profile}", "--window-size=1000,700", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = Path(profile) / "DevToolsActivePort"
    while not port_file.exists() or not port_file.read_text().strip():
        time.sleep(0.1)
    port = port_file.read_text().split()[0]
    while True:
        try:
            pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
            return proc, next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")
        except (OSError, StopIteration):
            time.sleep(0.1)


async def drive(ws_url, url, shot, key):
    async with websockets.connect(ws_url, max_size=None) as ws:
        ids = iter(range(1, 10**6))

        async def call(method, **params):
            i = next(ids)
            await ws.send(json.dumps({"id": i, "method": method, "params": params}))
            while True:
                msg = json.loads(await ws.recv())
                if msg.get("id") == i:
                    return msg.get("result", {})

        async def js(expr):
            return (await call("Runtime.evaluate", expression=expr, returnByValue=True))["result"].get("value")

        await call("Page.enable")
        await call("Page.navigate", url=url)
        while await js("document.readyState") != "complete" or not await js("document.getElementById('model').textContent"):
            await asyncio.sleep(0.05)
        if key:  # the page asked for one: type it in
            assert await js("document.getElementById('keybox').hidden") is False
            await js("document.getElementById('key').focus()")
            await call("Input.insertText", text=key)
            await js("document.getElementById('key').dispatchEvent(new Event('change'))")
        else:
            assert await js("document.getElementById('keybox').hidden") is True
        await js("document.getElementById('input').focus()")
        await call("Input.insertText", text=QUESTION)
        for kind in ("keyDown", "keyUp"):
            await call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13)
        seen = []
        while True:
            text = await js("(document.querySelector('.assistant') || {}).textContent || ''")
            if text and (not seen or seen[-1] != text):
                seen.append(text)
            if text and not await js("document.getElementById('send').disabled"):
                break
            await asyncio.sleep(0.005)
        Path(shot).write_bytes(b64decode((await call("Page.captureScreenshot", format="png"))["data"]))
        return seen, await js("document.getElementById('model').textContent")


def main():
    checkpoint, shot, key = sys.argv[1], sys.argv[2], (sys.argv[3:] or [None])[0]
    with tempfile.TemporaryDirectory() as tmp:
        server, url = start_server(checkpoint, Path(tmp) / "serve.log", key)
        browser, ws_url = start_browser(Path(tmp) / "profile")
        try:
            seen, model = asyncio.run(drive(ws_url, url + "/", shot, key))
        finally:
            browser.terminate()
            server.terminate()
            browser.wait(10)
            server.wait(10)
    print(f"model shown: {model}")
    print(f"the reply grew through {len(seen)} states while streaming; first {seen[0]!r}, last {seen[-1]!r}")
    print(f"screenshot: {shot}")


if __name__ == "__main__":
    main()
