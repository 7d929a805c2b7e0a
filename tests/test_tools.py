"""The tools (llmos/tools/): the registry's error results and audit log, the exact calculator, the
workspace-confined file tools, and search/open over an FTS5 store and loopback pages."""
from __future__ import annotations

import http.server
import json
import os
import threading

import pytest

from llmos.tools.calculator import evaluate
from llmos.tools.registry import Tool, ToolConfig, Toolbox, ToolError
from llmos.tools.search import SearchStore, folder_documents, html_to_text


@pytest.mark.parametrize("expression, value", [
    ("12345 * 6789", "83810205"),
    ("123456789123456789 * 987654321987654321", "121932631356500531347203169112635269"),
    ("0.1 + 0.2", "0.3"),  # decimals are exact, not binary floats
    ("1/3 + 1/6", "0.5"),
    ("2/3", "2/3 (about 0.666666666667)"),
    ("2^10 - 3 × 4 ÷ 2", "1018"),
    ("(2/3)**-2", "2.25"),
    ("-7 % 3", "2"),
    ("17 // 5 =", "3"),
    ("1.5e-3 * 2", "0.003"),
])
def test_the_calculator_is_exact(expression, value):
    assert evaluate(expression) == value


@pytest.mark.parametrize("expression, reason", [
    ("__import__('os').system('id')", "function call"),
    ("x + 1", "a name"),
    ("'a' * 3", "is not a number"),
    ("3 < 4", "comparison"),
    ("1 / 0", "division by zero"),
    ("2 ** 0.5", "not an integer"),
    ("10 ** 10 ** 10", "more than 4,000 digits"),
    ("9 ** 99999", "more than 4,000 digits"),
    ("(10**3999) * (10**3999)", "more than 4,000 digits"),
    ("1 +", "could not parse"),
    ("", "empty"),
    ("(" * 5000 + "1" + ")" * 5000, "characters"),
])
def test_the_calculator_refuses_what_is_not_bounded_arithmetic(expression, reason):
    with pytest.raises(ToolError, match=reason):
        evaluate(expression)


def test_a_call_never_raises_and_every_call_is_audited(tmp_path):
    def broken(args):
        raise RuntimeError("disk on fire")
    log = tmp_path / "audit.jsonl"
    box = Toolbox.build("calculator", ToolConfig(audit_log=str(log)))
    box.add(Tool("broken", "always fails", {"type": "object"}, broken))
    ok = box.call("calculator", {"expression": "6 * 7"})
    assert (ok.text, ok.error) == ("42", False)
    for name, args, expected in [("weather", {}, "no tool named 'weather'"),
                                 ("calculator", {"expr": "1"}, "bad arguments for calculator"),
                                 ("calculator", {"expression": 5}, "expression: 5 is not of type 'string'"),
                                 ("calculator", ["1+1"], "must be a JSON object"),
                                 ("calculator", {"expression": "abs(-1)"}, "function call"),
                                 ("broken", {}, "broken failed: RuntimeError: disk on fire")]:
        result = box.call(name, args)
        assert result.error and expected in result.text, result.text
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["tool"] for e in lines] == ["calculator", "weather", "calculator", "calculator", "calculator",
                                          "calculator", "broken"]
    assert lines[0]["ok"] and lines[0]["result"] == "42" and not any(e["ok"] for e in lines[1:])


def test_unknown_tool_names_are_a_clear_error():
    from llmos.common import LlmosError
    with pytest.raises(LlmosError, match="unknown tool.*choose from.*calculator"):
        Toolbox.build("calculator,teleport")


def test_file_tools_stay_inside_the_workspace(tmp_path):
    ws, outside = tmp_path / "ws", tmp_path / "secret.txt"
    (ws / "notes").mkdir(parents=True)
    (ws / "notes" / "todo.md").write_text("buy milk\n")
    outside.write_text("the password")
    (ws / "escape").symlink_to(outside)
    (ws / "escape_dir").symlink_to(tmp_path)
    box = Toolbox.build("read_file,list_files,write_file", ToolConfig(workspace=str(ws)))
    assert box.call("read_file", {"path": "notes/todo.md"}).text == "buy milk\n"
    assert box.call("list_files", {}).text.splitlines() == ["escape", "escape_dir/", "notes/"]
    for path, reason in [("../secret.txt", "leaves the workspace"), (str(outside), "leaves the workspace"),
                         ("escape", "outside the workspace"), ("escape_dir/secret.txt", "outside the workspace"),
                         ("notes/nothing.md", "no file")]:
        result = box.call("read_file", {"path": path})
        assert result.error and reason in result.text and "password" not in result.text
    assert "outside the workspace" in box.call("list_files", {"path": "escape_dir"}).text


def test_writing_a_file_needs_the_users_yes_or_the_config(tmp_path):
    asked = []
    box = Toolbox.build("write_file", ToolConfig(workspace=str(tmp_path)),
                        confirm=lambda tool, args, effect: asked.append(effect) or False)
    declined = box.call("write_file", {"path": "a.txt", "content": "hi"})
    assert declined.error and "declined" in declined.text and not (tmp_path / "a.txt").exists()
    assert asked == ["writes the file 'a.txt' in the workspace"]
    box.confirm = lambda tool, args, effect: True
    assert not box.call("write_file", {"path": "a.txt", "content": "hi"}).error
    allowed = Toolbox.build("write_file", ToolConfig(workspace=str(tmp_path), allow=("write_file",)))
    assert not allowed.call("write_file", {"path": "b.txt", "content": "yo"}).error
    assert (tmp_path / "a.txt").read_text() == "hi" and (tmp_path / "b.txt").read_text() == "yo"
    assert "leaves the workspace" in allowed.call("write_file", {"path": "../c.txt", "content": "x"}).text


ARTICLES = {
    "eiffel.md": "# Eiffel Tower\nThe Eiffel Tower is a wrought-iron lattice tower in Paris, completed in 1889.",
    "nile.txt": "Nile\nThe Nile is a major north-flowing river in northeastern Africa, about 6,650 km long.",
    "page.html": "<html><head><title>t</title><style>p{}</style></head><body><h1>Volcanoes</h1>"
                 "<script>alert(1)</script><p>Mount Etna is an active volcano in Sicily.</p></body></html>",
    "skip.bin": "not indexed",
}


@pytest.fixture
def search_box(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in ARTICLES.items():
        (docs / name).write_text(text)
    index = tmp_path / "index.sqlite"
    SearchStore.build(index, folder_documents(docs))
    return Toolbox.build("search,open", ToolConfig(index=str(index)))


def test_search_ranks_the_document_that_answers_first_and_open_reads_it(search_box):
    hits = search_box.call("search", {"query": "How long is the Nile river?"}).text.splitlines()
    assert hits[0].startswith("[file:nile.txt] Nile:") and "6,650 km" in hits[0]
    assert search_box.call("search", {"query": "volcano Sicily"}).text.startswith("[file:page.html] Volcanoes")
    page = search_box.call("open", {"id": "file:page.html"}).text
    assert "Mount Etna is an active volcano" in page and "alert" not in page and "p{}" not in page
    assert search_box.call("search", {"query": "zeppelin"}).text == "no results"
    assert "no document" in search_box.call("open", {"id": "file:missing.md"}).text
    assert "has no words" in search_box.call("search", {"query": "?!"}).text


def test_search_without_an_index_says_how_to_build_one(tmp_path):
    box = Toolbox.build("search", ToolConfig(index=str(tmp_path / "none.sqlite")))
    result = box.call("search", {"query": "anything"})
    assert result.error and "llmos index" in result.text


class _Pages(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/away":
            self.send_response(302)
            self.send_header("Location", "http://example.com/")
            self.end_headers()
            return
        body = b"<html><body><p>Loopback page</p><script>x()</script></body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def loopback_site():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_open_fetches_loopback_pages_and_asks_before_any_other_host(search_box, loopback_site):
    assert search_box.call("open", {"id": loopback_site + "/"}).text == "Loopback page"
    declined = search_box.call("open", {"id": "http://example.com/"})
    assert declined.error and "declined" in declined.text and "example.com" in declined.text
    redirected = search_box.call("open", {"id": loopback_site + "/away"})  # a hop off loopback is checked
    assert redirected.error and "example.com is not a loopback host" in redirected.text
    assert "no document" in search_box.call("open", {"id": "file:///etc/passwd"}).text  # only http(s) is fetched


def test_html_is_reduced_to_its_text():
    assert html_to_text("<p>a &amp; b</p><style>x</style><ul><li>one</li><li>two</li></ul>") == "a & b\n\none\n\ntwo"


def test_an_index_is_never_half_written(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    from llmos.common import LlmosError
    with pytest.raises(LlmosError, match="no documents to index"):
        SearchStore.build(tmp_path / "i.sqlite", folder_documents(empty))
    assert os.listdir(tmp_path) == ["empty"]  # neither the store nor its temp file


def test_cloze_facts_blank_a_span_and_the_taught_search_finds_it(wiki_corpus_dir):
    from llmos.data.tooluse import check, corpus_toolbox, facts, teach, wiki_articles
    train, held_out = wiki_articles("train", wiki_corpus_dir), wiki_articles("eval", wiki_corpus_dir)
    assert len(train) == 40 and len(held_out) == 10 and not {t for t, _ in train} & {t for t, _ in held_out}
    problems = facts(held_out, seed=0, per_article=100)
    assert {p.kind for p in problems} == {"year", "number", "place"}
    for p in problems:
        title = p.question.split('"')[1]
        lead = dict(held_out)[title]
        assert p.answer in lead and "___" in p.question and p.answer not in p.question.split('": ', 1)[1]
    box = corpus_toolbox(wiki_corpus_dir)
    taught = [teach(p, box, ["calculator", "search"]) for p in problems]
    assert sum(t is not None for t in taught) >= 0.8 * len(problems)  # the store returns the span
    for p, messages in zip(problems, taught):
        if messages is not None:
            assert p.answer in messages[3]["content"] and messages[4]["content"] == f"Answer: {p.answer}"
            assert check(messages[4]["content"], p) and not check("Answer: 17", p)


def test_arithmetic_splits_never_share_operands_and_answers_are_exact():
    from llmos.data.tooluse import arithmetic, check
    train, held_out = arithmetic("train", 0, 300), arithmetic("eval", 0, 100)
    assert not {p.call["arguments"]["expression"] for p in train} & {p.call["arguments"]["expression"] for p in held_out}
    for p in held_out:
        assert evaluate(p.call["arguments"]["expression"]) == p.answer
        operands = p.call["arguments"]["expression"].replace("+", "*").split("*")
        assert all(4 <= len(x.strip()) <= 6 for x in operands) and len(operands) in (2, 3, 4, 5)
    p = held_out[0]
    assert check(f"Answer: {int(p.answer):,}", p) and check(f"It is {p.answer}.", p)
    assert not check(f"Answer: {int(p.answer) + 1}", p) and not check("I cannot say.", p)
