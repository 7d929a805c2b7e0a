"""The labeling page of `llmos label` in a real browser: Debian's chromium, headless, driven by selenium
through Debian's chromedriver (as tests/test_web_chat.py does).

A labeler gives a name, clicks "A is better", presses 2 and t, goes back to change a label, edits an
answer into an ideal one, and each of these is a row in the database; `llmos label export` then holds the preferences and the SFT
line. Model output containing HTML is shown as text. The test saves a screenshot (under pytest's tmp
dir, or in $LLMOS_SCREENSHOT_DIR when set: `LLMOS_SCREENSHOT_DIR=docs/screenshots` refreshes the docs' one).
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from conftest import require, unavailable
from serving import tiny_chat_model
from test_label import label_server, read_lines

from llmos.cli import main
from llmos.data.labels import LabelStore, Side

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT_S = 120  # a bound on each wait, far above what the tiny model's pair takes on a busy machine
HOSTILE = "<img src=x onerror=\"window.pwned=1\"><script>window.pwned=2</script> **bold?**"


@pytest.fixture(scope="module")
def browser():
    require("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        unavailable(f"{CHROMIUM} or {CHROMEDRIVER} is missing: install the Debian packages chromium and "
                    "chromium-driver (`make system-deps` as root)")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for switch in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,800"):
        options.add_argument(switch)
    # An explicit driver path keeps selenium-manager from looking for (or downloading) one.
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    yield driver
    driver.quit()


def wait_until(driver, condition, message: str):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(condition, message)


def shown_pair(driver) -> int | None:
    """The id of the pair on the page; fails at once if the page shows an error."""
    error = driver.execute_script("const e = document.getElementById('error'); return e.hidden ? '' : e.textContent")
    assert not error, f"the page shows an error: {error}"
    value = driver.execute_script("return document.body.dataset.pairId || ''")
    return int(value) if value else None


def rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as connection:
        return connection.execute(sql).fetchall()


def labeled(driver, db: Path, pair: int, choice: str) -> int:
    """Waits until the label is stored, acknowledged on the page, and the next pair shown; its id."""
    wait_until(driver, lambda d: (pair, "ada", choice) in rows(db, "SELECT pair_id, labeler, choice FROM labels"),
               f"no {choice!r} label of pair {pair} in the database")
    wait_until(driver, lambda d: f"(pair {pair})" in d.find_element("id", "ack").text, "the label was not acknowledged")
    wait_until(driver, lambda d: shown_pair(d) not in (None, pair), "the next pair did not come")
    return shown_pair(driver)


def test_label_with_mouse_keyboard_and_an_edit_then_export(browser, tmp_path, tokenizer_path):
    from selenium.webdriver.common.action_chains import ActionChains
    model = tiny_chat_model(tmp_path / "tiny.llmos", tokenizer_path)
    prompts = [f"Say something about the number {i}." for i in range(5)]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    db = tmp_path / "labels.sqlite"
    with LabelStore(db) as store:  # the first pair exists already: the server uses it rather than sampling anew
        store.add_pair([{"role": "user", "content": prompts[0]}], HOSTILE, "a plain answer",
                       Side("tiny", 0.7), Side("tiny", 1.2))
    args = ("--model", f"tiny={model}", "--prompts", str(tmp_path / "prompts.txt"), "--db", str(db),
            "--max-tokens", "24")
    with label_server(*args, log=tmp_path / "label.log") as (base, _):
        browser.get(base + "/")
        browser.find_element("id", "labeler-name").send_keys("ada")
        browser.find_element("id", "start").click()
        wait_until(browser, lambda d: shown_pair(d) is not None, "no pair was shown")
        first = shown_pair(browser)
        assert first == 1
        seen = browser.execute_script("""
            const a = document.getElementById('answer-a');
            return {text: a.textContent, elements: a.querySelectorAll('*').length, pwned: typeof window.pwned,
                    prompt: document.querySelector('#prompt .text').textContent,
                    left: document.getElementById('count-left').textContent};""")
        assert seen == {"text": HOSTILE, "elements": 0, "pwned": "undefined", "prompt": prompts[0],
                        "left": "5 of 5 pairs left"}

        browser.find_element("id", "choose-a").click()
        second = labeled(browser, db, first, "a")
        ActionChains(browser).send_keys("2").perform()
        third = labeled(browser, db, second, "b")
        ActionChains(browser).send_keys("t").perform()
        fourth = labeled(browser, db, third, "tie")
        assert browser.find_element("id", "count-you").text == "You: 3 labels"

        screenshot_dir = Path(os.environ.get("LLMOS_SCREENSHOT_DIR") or tmp_path)
        screenshot_dir.mkdir(parents=True, exist_ok=True)
        screenshot = screenshot_dir / "label-page.png"
        assert browser.save_screenshot(str(screenshot))
        print(f"screenshot: {screenshot}")

        browser.find_element("id", "previous").click()  # a change of mind: the latest label counts
        wait_until(browser, lambda d: shown_pair(d) == third, "Previous did not show the pair labeled before")
        assert browser.find_element("id", "your-label").text.startswith("Your label on this pair: Tie.")
        ActionChains(browser).send_keys("a").perform()
        assert labeled(browser, db, third, "a") == fourth
        assert browser.find_element("id", "count-you").text == "You: 3 labels"

        browser.find_element("id", "edit-b").click()
        box = browser.find_element("id", "edit-text")
        assert box.get_attribute("value") == browser.find_element("id", "answer-b").text
        box.clear()
        box.send_keys("1 2 t s: an ideal answer, typed")  # keys in the editor are text, not labels
        browser.find_element("id", "edit-submit").click()
        wait_until(browser, lambda d: rows(db, "SELECT pair_id, labeler, side, text FROM edits") ==
                   [(fourth, "ada", "b", "1 2 t s: an ideal answer, typed")], "the edit is not in the database")
        wait_until(browser, lambda d: "ideal answer" in d.find_element("id", "ack").text, "the edit was not acknowledged")
        assert shown_pair(browser) == fourth, "an edit keeps the pair on the page"
        assert len(rows(db, "SELECT id FROM labels")) == 4

        browser.refresh()  # the name is remembered
        wait_until(browser, lambda d: shown_pair(d) == fourth, "after a reload the page did not resume")
        assert browser.find_element("id", "labeler-shown").text == "ada"
        assert not browser.find_element("id", "name-form").is_displayed()

    prefs, sft = tmp_path / "prefs.jsonl", tmp_path / "edits.jsonl"
    assert main(["label", "export", "--db", str(db), "--out", str(prefs), "--sft", str(sft)]) == 0
    pairs = {p["id"]: p for p in LabelStore(db).pairs()}
    assert [(p["pair_id"], p["chosen"], p["rejected"]) for p in read_lines(prefs)] == [
        (first, HOSTILE, "a plain answer"), (second, pairs[second]["answer_b"], pairs[second]["answer_a"]),
        (third, pairs[third]["answer_a"], pairs[third]["answer_b"])]
    assert read_lines(sft) == [{"messages": [{"role": "user", "content": prompts[3]},
                                             {"role": "assistant", "content": "1 2 t s: an ideal answer, typed"}]}]
