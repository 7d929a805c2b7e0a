"""The web chat page of `llmos serve` in a real browser: Debian's chromium, headless, driven by selenium
through Debian's chromedriver (never a downloaded one).

- A conversation against a live server on a tiny model: the reply streams in, a second turn carries the
  history, New chat empties it. The test saves a screenshot (under pytest's tmp dir, or in
  $LLMOS_SCREENSHOT_DIR when set: `LLMOS_SCREENSHOT_DIR=docs/screenshots` refreshes the docs' one).
- A chart the python tool drew, shown in the reply (`llmos serve --tools python`; screenshot web-chat-chart.png).
- The page's markdown renderer on hostile model output: no script runs, no raw HTML, no event
  handlers, no javascript: links, and no image request to an origin off the allow-list.
"""
from __future__ import annotations

import json
import os
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import ROOT, require, unavailable
from serving import running_server, tiny_chat_model

STATIC_DIR = ROOT / "llmos" / "serve" / "static"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT_S = 120  # a bound on each wait, far above what a reply of the tiny model takes on a busy machine


@pytest.fixture(scope="module")
def browser_factory():
    """Start headless chromium with extra command-line switches; every browser is quit at the end."""
    require("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        unavailable(f"{CHROMIUM} or {CHROMEDRIVER} is missing: install the Debian packages chromium and "
                    "chromium-driver (`make system-deps` as root)")
    started = []

    def start(*switches: str):
        options = Options()
        options.binary_location = str(CHROMIUM)
        for switch in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,800",
                       *switches):
            options.add_argument(switch)
        # An explicit driver path keeps selenium-manager from looking for (or downloading) one.
        driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
        started.append(driver)
        return driver

    yield start
    for driver in started:
        driver.quit()


def wait_until(driver, condition, message: str):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(condition, message)


# Records every distinct non-empty text the newest assistant message shows, as it changes.
WATCH_REPLIES = """
window.replyStates = [];
new MutationObserver(() => {
  const replies = document.querySelectorAll('#messages .message.assistant .content');
  const text = replies.length ? replies[replies.length - 1].textContent.trim() : '';
  if (text && window.replyStates[window.replyStates.length - 1] !== text) window.replyStates.push(text);
}).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
window.sentBodies = [];
const originalFetch = window.fetch;
window.fetch = (url, init) => {
  if (String(url).endsWith('/v1/chat/completions')) window.sentBodies.push(JSON.parse(init.body));
  return originalFetch(url, init);
};
"""


def finished_replies(driver) -> int:
    """How many assistant messages have finished streaming; fails at once if the page shows an error."""
    error = driver.execute_script("const e = document.getElementById('error'); return e.hidden ? '' : e.textContent")
    assert not error, f"the page shows an error: {error}"
    return len(driver.find_elements("css selector", "#messages .message.assistant[data-done='true']"))


def send_and_wait(driver, text: str, replies_before: int, press_enter: bool) -> None:
    from selenium.webdriver.common.keys import Keys
    driver.execute_script("window.replyStates = []")
    box = driver.find_element("id", "input")
    box.send_keys(text)
    if press_enter:
        box.send_keys(Keys.ENTER)
    else:
        driver.find_element("id", "send").click()
    wait_until(driver, lambda d: finished_replies(d) == replies_before + 1, f"no finished reply to {text!r}")
    reply, states = driver.execute_script("""
        const replies = document.querySelectorAll('#messages .message.assistant .content');
        return [replies[replies.length - 1].textContent.trim(), window.replyStates];""")
    assert reply, "the reply is empty"
    assert len(states) > 1, f"the reply did not stream: it appeared in {len(states)} step(s): {states}"
    assert states[-1] == reply


def test_chat_page_streams_a_multi_turn_conversation(browser_factory, tmp_path, tokenizer_path):
    driver = browser_factory()
    model_path = tiny_chat_model(tmp_path / "tiny.llmos", tokenizer_path, max_seq_len=1024)
    with running_server("--model", f"tiny={model_path}", log=tmp_path / "serve.log") as base_url:
        driver.get(base_url + "/")
        wait_until(driver, lambda d: d.execute_script(
            "return [...document.querySelectorAll('#model option')].map(o => o.value)") == ["tiny"],
            "the model picker was not filled from /v1/models")
        driver.execute_script(WATCH_REPLIES)
        driver.find_element("id", "system").send_keys("You are terse.")
        for field, value in (("temperature", "0"), ("max-tokens", "16")):  # short replies keep 3 turns in context
            driver.find_element("id", field).clear()
            driver.find_element("id", field).send_keys(value)

        send_and_wait(driver, "Hello there", replies_before=0, press_enter=True)
        send_and_wait(driver, "And again", replies_before=1, press_enter=False)

        users = driver.find_elements("css selector", "#messages .message.user")
        assert [u.find_element("css selector", ".content").text for u in users] == ["Hello there", "And again"]
        first, second = driver.execute_script("return window.sentBodies")
        assert [m["role"] for m in first["messages"]] == ["system", "user"]
        assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "user"]
        assert second["messages"][2]["content"], "the second turn did not carry the first reply"
        assert (second["model"], second["stream"], second["temperature"], second["max_tokens"]) == ("tiny", True, 0, 16)

        screenshot_dir = Path(os.environ.get("LLMOS_SCREENSHOT_DIR") or tmp_path)
        screenshot_dir.mkdir(parents=True, exist_ok=True)
        screenshot = screenshot_dir / "web-chat.png"
        assert driver.save_screenshot(str(screenshot))
        print(f"screenshot: {screenshot}")

        driver.find_element("id", "new-chat").click()
        assert driver.find_elements("css selector", "#messages .message") == []
        send_and_wait(driver, "A fresh start", replies_before=0, press_enter=True)
        third = driver.execute_script("return window.sentBodies")[-1]
        assert [m["role"] for m in third["messages"]] == ["system", "user"]


class ConnectionCounter:
    """A loopback TCP listener that counts the connections a browser opens to it (and drops them)."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.count = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.count += 1
            conn.close()

    def close(self):
        self.sock.close()


ALLOWED_ORIGIN = "https://images.example"


def serve_static_page(config: dict) -> ThreadingHTTPServer:
    """The page's own files and /ui/config.json from a loopback HTTP server: no model is needed."""
    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(STATIC_DIR), **kwargs)

        def do_GET(self):
            if self.path == "/ui/config.json":
                body = json.dumps(config).encode()
            elif self.path == "/v1/models":
                body = json.dumps({"object": "list", "data": []}).encode()
            else:
                self.path = "/index.html" if self.path == "/" else self.path.removeprefix("/static")
                return super().do_GET()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


HOSTILE = [
    "<img src=x onerror=alert(1)>",
    "<img src=x onerror=\"window.pwned=2\">",
    "<script>window.pwned=1</script>",
    "![x](https://evil.example/a.png)",
    "![x](http://evil.example/b.png)",
    "<a href=\"https://evil.example/\" onclick=\"window.pwned=3\">click</a>",
    "[a](javascript:alert(1))",
    "[docs](https://example.org/docs)",
    "[b](JaVaScRiPt:window.pwned=4)",
    "![ok](/static/x.png)",
    f"![fine]({ALLOWED_ORIGIN}/y.png)",
]

INSPECT = """
const root = document.getElementById('rendered');
const own = [...root.querySelectorAll('*')];
return {
  pwned: typeof window.pwned,
  scripts: root.querySelectorAll('script').length,
  handlers: own.flatMap(e => [...e.attributes].map(a => a.name)).filter(n => n.startsWith('on')),
  images: [...root.querySelectorAll('img')].map(i => i.src),
  links: [...root.querySelectorAll('a')].map(a => [a.getAttribute('href'), a.target, a.rel]),
  text: root.textContent,
  requested: performance.getEntriesByType('resource').map(e => e.name),
};
"""


def test_markdown_rendering_is_safe_in_the_browser(browser_factory):
    evil, control = ConnectionCounter(), ConnectionCounter()
    # control.example is allowed: the page's Content-Security-Policy would stop its image otherwise
    server = serve_static_page({"image_origins": [ALLOWED_ORIGIN, "http://control.example"], "auth_required": False})
    try:
        # Both hosts lead to a loopback listener, so a request that should never happen would be seen.
        driver = browser_factory(f"--host-resolver-rules=MAP evil.example 127.0.0.1:{evil.port}, "
                                 f"MAP control.example 127.0.0.1:{control.port}")
        base_url = f"http://127.0.0.1:{server.server_address[1]}"
        driver.get(base_url + "/")
        wait_until(driver, lambda d: d.execute_script("return document.body.dataset.config") == "loaded",
                   "the page did not load /ui/config.json")
        assert driver.execute_script("return typeof window.llmosRender") == "function"
        driver.execute_script("""
            const root = document.createElement('div');
            root.id = 'rendered';
            document.body.append(root);
            for (const text of arguments[0]) root.append(window.llmosRender(text));
        """, HOSTILE)
        # The control: an image put into the page directly does reach its listener. Requests start in
        # page order, so once the control's has arrived, one for evil.example would have too.
        driver.execute_script("const i = new Image(); i.src = 'http://control.example/c.png'; document.body.append(i)")
        wait_until(driver, lambda d: control.count > 0, "the control image request never arrived")
        seen = driver.execute_script(INSPECT)
    finally:
        server.shutdown()
        evil.close()
        control.close()

    assert seen["pwned"] == "undefined", "model output ran a script"
    assert seen["scripts"] == 0
    assert seen["handlers"] == [], f"event handler attributes survived: {seen['handlers']}"
    assert sorted(seen["images"]) == sorted([base_url + "/static/x.png", ALLOWED_ORIGIN + "/y.png"])
    assert "[image blocked: https://evil.example/a.png]" in seen["text"]
    assert "[image blocked: http://evil.example/b.png]" in seen["text"]
    assert "<script>window.pwned=1</script>" in seen["text"], "raw HTML was not shown as text"
    assert "<img src=x onerror=alert(1)>" in seen["text"]
    assert not any(href and href.lower().startswith("javascript:") for href, _, _ in seen["links"])
    assert all(target == "_blank" and rel == "noopener noreferrer" for href, target, rel in seen["links"] if href)
    assert evil.count == 0, "the browser connected to evil.example"
    assert not [name for name in seen["requested"] if "evil.example" in name]
    assert any("control.example" in name for name in seen["requested"]), \
        "performance entries do not list failed image requests, so they cannot show evil.example's absence"


CHART_QUESTION = "Plot the squares."
CHART_CODE = "import matplotlib.pyplot as plt\nplt.plot([1, 4, 9, 16])"


def test_the_chat_page_shows_a_chart_the_python_tool_drew(browser_factory, tmp_path, tokenizer_path):
    """`llmos serve --tools python` on a tiny model that learned to answer with a plot: the sandbox
    runs its code, the reply carries the PNG and the page shows it (screenshot: web-chat-chart.png)."""
    from llmos.params import save_params
    from llmos.tokenizer import Tokenizer
    from serving import memorizing_model, tool_conversation
    tok = Tokenizer.load(tokenizer_path)
    conversation = tool_conversation(["python"], CHART_QUESTION, {"name": "python", "arguments": {"code": CHART_CODE}},
                                     "exit 0\n[1 chart]", "Here is the chart.")
    model_path = save_params(tmp_path / "plotter.llmos", memorizing_model(tok, [conversation]), tok,
                             provenance={"name": "plotter"})
    driver = browser_factory()
    with running_server("--model", f"plotter={model_path}", "--tools", "python",
                        log=tmp_path / "serve.log") as base_url:
        driver.get(base_url + "/")
        wait_until(driver, lambda d: d.execute_script(
            "return [...document.querySelectorAll('#model option')].map(o => o.value)") == ["plotter"],
            "the model picker was not filled from /v1/models")
        for field, value in (("temperature", "0"), ("max-tokens", "160")):  # the call's code takes ~70 tokens
            driver.find_element("id", field).clear()
            driver.find_element("id", field).send_keys(value)
        driver.find_element("id", "input").send_keys(CHART_QUESTION)
        driver.find_element("id", "send").click()
        wait_until(driver, lambda d: finished_replies(d) == 1, "no finished reply")
        tools = driver.execute_script("return document.querySelector('#messages .message.assistant .tools').textContent")
        size = wait_until(driver, lambda d: d.execute_script("""
            const img = document.querySelector('#messages .message.assistant .tool-chart');
            return img && img.complete && img.naturalWidth ? [img.naturalWidth, img.naturalHeight, img.src.slice(0, 5)]
                                                           : null;"""), f"no chart shown; the tools box: {tools!r}")
        assert size[0] > 100 and size[1] > 100 and size[2] == "blob:", size
        summary = driver.find_element("css selector", ".tool-call summary").text
        assert summary.startswith("python ") and "plt.plot" in summary
        reply = driver.find_element("css selector", "#messages .message.assistant .content").text
        assert reply == "Here is the chart."
        driver.execute_script("document.querySelector('#messages .message.assistant').scrollIntoView({block: 'end'})")
        screenshot_dir = Path(os.environ.get("LLMOS_SCREENSHOT_DIR") or tmp_path)
        screenshot_dir.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(screenshot_dir / "web-chat-chart.png"))
