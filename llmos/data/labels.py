"""The comparison-label store of `llmos label`: pairs of answers, the labels people give them, and
the answers they edit into ideal ones, in one SQLite file.

    store = LabelStore("labels.sqlite")                  # created on first use
    pid = store.add_pair(messages, "answer one", "answer two", Side("m", 0.7), Side("m", 1.2))
    store.add_label(pid, "ada", "a")                     # a | b | tie | skip; committed on return
    store.add_edit(pid, "ada", "a", "a better answer")   # an SFT example
    store.counts(), store.agreement()
    store.export_preferences("prefs.jsonl"); store.export_sft("edits.jsonl")
    rows = load_preferences("labels.sqlite")             # [{"prompt": messages, "chosen", "rejected", "source": "label", ...}]

Durability: WAL journal with synchronous=FULL, and each write is one transaction committed before
the call returns, so a label the server has acknowledged survives `kill -9` (and a power cut). The
server answers a label only after `add_label` returns. Rows are only ever added: a labeler who
changes their mind adds a new label, and the latest label of each labeler on each pair is the one
that counts (for counts, agreement and exports alike).

Tables: pairs (the prompt's messages as JSON, answers A and B and where each came from: model name
and temperature, which side got which being random per pair), labels (pair, labeler, choice, time)
and edits (pair, labeler, the side the edit started from, the edited text, time).

Exports. Preferences: each pair's labels (latest per labeler; a skip abstains) are a vote among a,
b and tie; a pair is exported when a or b has strictly more votes than every other choice (so a
lone "tie", a tie-majority and an even split are left out), as `{"prompt": messages, "chosen",
"rejected", "source": "label", "pair_id", "votes", "chosen_from", "rejected_from"}`. SFT: each
labeler's latest edit of each pair as OpenAI fine-tuning JSONL, `{"messages": prompt + [assistant:
edited text]}`.

Agreement, over pairs that two or more labelers labeled (skips left out): every two labelers who
labeled the same pair make one comparison. Percent agreement is the share of comparisons where they
chose alike. Cohen's kappa, (p_o - p_e) / (1 - p_e) over the choices a, b and tie, is given for each
two labelers over the pairs both labeled, and overall over all comparisons pooled (the rater named
first alphabetically as rater 1); it is None where p_e is 1 (both always chose one same thing).
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from llmos.common import LlmosError, atomic_write, os_error_message

CHOICES = ("a", "b", "tie", "skip")
VOTES = ("a", "b", "tie")  # a skip is no opinion
SIDES = ("a", "b")
MAX_LABELER_LEN = 64
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS pairs (
    id INTEGER PRIMARY KEY,
    prompt TEXT NOT NULL,                 -- the conversation to answer: JSON list of messages
    answer_a TEXT NOT NULL,
    answer_b TEXT NOT NULL,
    model_a TEXT NOT NULL,
    temperature_a REAL NOT NULL,
    model_b TEXT NOT NULL,
    temperature_b REAL NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS pairs_by_prompt ON pairs (prompt);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY,
    pair_id INTEGER NOT NULL REFERENCES pairs (id),
    labeler TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'skip')),
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS labels_by_pair ON labels (pair_id, labeler);
CREATE INDEX IF NOT EXISTS labels_by_labeler ON labels (labeler);
CREATE TABLE IF NOT EXISTS edits (
    id INTEGER PRIMARY KEY,
    pair_id INTEGER NOT NULL REFERENCES pairs (id),
    labeler TEXT NOT NULL,
    side TEXT NOT NULL CHECK (side IN ('a', 'b')),
    text TEXT NOT NULL,
    created REAL NOT NULL
);
"""
LATEST_LABELS = """SELECT l.pair_id, l.labeler, l.choice FROM labels l
                   JOIN (SELECT MAX(id) AS id FROM labels GROUP BY pair_id, labeler) m ON l.id = m.id"""


class UnknownPair(LlmosError):
    """A pair id that is not in the store (the API answers it with a 404)."""


@dataclass(frozen=True)
class Side:
    """Where one answer of a pair came from."""
    model: str
    temperature: float

    def as_dict(self) -> dict:
        return {"model": self.model, "temperature": self.temperature}


def check_labeler(name) -> str:
    """A labeler's name, stripped; LlmosError if it is missing or unusable."""
    if not isinstance(name, str) or not name.strip():
        raise LlmosError("labeler: give the labeler's name (the page asks for it on the first visit)")
    name = name.strip()
    if len(name) > MAX_LABELER_LEN:
        raise LlmosError(f"labeler: a name of at most {MAX_LABELER_LEN} characters, not {len(name)}")
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise LlmosError("labeler: the name holds control characters: use letters, digits and spaces")
    return name


def canonical_prompt(messages: list[dict]) -> str:
    """The JSON a prompt is stored as, so one prompt always reads back the same (and is found again)."""
    return json.dumps(messages, ensure_ascii=False, sort_keys=True)


def cohen_kappa(ratings: list[tuple[str, str]]) -> float | None:
    """Cohen's kappa of two raters' (rating1, rating2) pairs; None where chance agreement is 1."""
    n = len(ratings)
    if n == 0:
        return None
    observed = sum(r1 == r2 for r1, r2 in ratings) / n
    first, second = Counter(r1 for r1, _ in ratings), Counter(r2 for _, r2 in ratings)
    expected = sum(first[c] * second[c] for c in first) / (n * n)
    return None if expected >= 1 else (observed - expected) / (1 - expected)


class LabelStore:
    """One SQLite label file; safe to share between threads (one connection behind a lock)."""

    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        if not create and not self.path.is_file():
            raise LlmosError(f"no label database at {self.path}: label some pairs first "
                             "(llmos label --model M --db PATH), or give the right --db")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: each write below opens and commits its own transaction explicitly.
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self._db.row_factory = sqlite3.Row
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise LlmosError(f"{self.path}: SQLite could not switch to WAL mode (it stays {mode}): "
                                 "put the database on a local file system")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise LlmosError(f"{self.path} was written by a newer llmos (label schema {version}, this "
                                 f"one reads {SCHEMA_VERSION}): upgrade llmos")
            with self._transaction() as db:  # executescript would commit early: one statement at a time
                for statement in filter(str.strip, SCHEMA.split(";")):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as e:
            raise LlmosError(f"{self.path} is not a usable label database ({e}): give another --db") from None
        except OSError as e:
            raise LlmosError(f"could not open the label database {os_error_message(e, self.path)}") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "LabelStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _transaction(self):
        return _Transaction(self._db)

    def _write(self, sql: str, values: tuple) -> int:
        """One INSERT as one committed transaction; its row id."""
        with self._lock, self._transaction() as db:
            return db.execute(sql, values).lastrowid

    def _read(self, sql: str, values: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, values).fetchall()

    # ----- writes -----

    def add_pair(self, prompt: list[dict], answer_a: str, answer_b: str, side_a: Side, side_b: Side) -> int:
        return self._write("INSERT INTO pairs (prompt, answer_a, answer_b, model_a, temperature_a, model_b, "
                           "temperature_b, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           (canonical_prompt(prompt), answer_a, answer_b, side_a.model, float(side_a.temperature),
                            side_b.model, float(side_b.temperature), time.time()))

    def add_label(self, pair_id: int, labeler: str, choice: str) -> int:
        """Record a label (committed when this returns); UnknownPair or LlmosError for bad input."""
        labeler = check_labeler(labeler)
        if choice not in CHOICES:
            raise LlmosError(f"choice must be one of {', '.join(CHOICES)}, not {_shown(choice)}")
        self._check_pair(pair_id)
        return self._write("INSERT INTO labels (pair_id, labeler, choice, created) VALUES (?, ?, ?, ?)",
                           (pair_id, labeler, choice, time.time()))

    def add_edit(self, pair_id: int, labeler: str, side: str, text: str) -> int:
        """Record an answer edited into an ideal one (an SFT example), starting from side a or b."""
        labeler = check_labeler(labeler)
        if side not in SIDES:
            raise LlmosError(f"side must be a or b (the answer the edit started from), not {_shown(side)}")
        if not isinstance(text, str) or not text.strip():
            raise LlmosError("text: the edited answer is empty: write the ideal answer")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise LlmosError("text: the edited answer holds a lone surrogate (half a UTF-16 pair): "
                             "send it as UTF-8 text") from None
        self._check_pair(pair_id)
        return self._write("INSERT INTO edits (pair_id, labeler, side, text, created) VALUES (?, ?, ?, ?, ?)",
                           (pair_id, labeler, side, text.strip(), time.time()))

    def _check_pair(self, pair_id) -> None:
        if not _row_id(pair_id) or not self._read("SELECT 1 FROM pairs WHERE id = ?", (pair_id,)):
            raise UnknownPair(f"pair_id: there is no pair {_shown(pair_id)} in this database")

    # ----- reads -----

    def pair(self, pair_id: int) -> dict | None:
        rows = self._read("SELECT * FROM pairs WHERE id = ?", (pair_id,)) if _row_id(pair_id) else []
        return _pair_dict(rows[0]) if rows else None

    def pairs(self) -> list[dict]:
        return [_pair_dict(r) for r in self._read("SELECT * FROM pairs ORDER BY id")]

    def find_pair(self, prompt: list[dict], side_a: Side, side_b: Side) -> int | None:
        """The first pair of this prompt between these two sources (either way round), if any."""
        for row in self._read("SELECT * FROM pairs WHERE prompt = ? ORDER BY id", (canonical_prompt(prompt),)):
            sides = {Side(row["model_a"], row["temperature_a"]), Side(row["model_b"], row["temperature_b"])}
            if sides == {side_a, side_b}:
                return row["id"]
        return None

    def latest_labels(self) -> list[tuple[int, str, str]]:
        """(pair id, labeler, choice): each labeler's latest label on each pair."""
        return [(r["pair_id"], r["labeler"], r["choice"]) for r in self._read(LATEST_LABELS)]

    def labels_by(self, labeler: str) -> dict[int, str]:
        """pair id -> this labeler's latest choice."""
        rows = self._read("SELECT pair_id, choice FROM labels WHERE id IN "
                          "(SELECT MAX(id) FROM labels WHERE labeler = ? GROUP BY pair_id)", (labeler,))
        return {r["pair_id"]: r["choice"] for r in rows}

    def counts(self, labeler: str | None = None) -> dict:
        """Pairs, labels (latest per labeler and pair; skips apart), choices, labelers and edited pairs; with
        `labeler`, also that labeler's own figures under "you"."""
        latest = self.latest_labels()
        choices = Counter(choice for _, _, choice in latest)
        per_labeler: dict[str, Counter] = defaultdict(Counter)
        for _, name, choice in latest:
            per_labeler[name][choice] += 1
        # Edits as sft_examples exports them: each labeler's pairs edited (a re-edit replaces the last).
        edits = Counter(r["labeler"] for r in self._read("SELECT labeler FROM edits GROUP BY pair_id, labeler"))
        pairs = self._read("SELECT COUNT(*) FROM pairs")[0][0]
        labeled_pairs = {pid for pid, _, choice in latest if choice != "skip"}
        names = sorted(set(per_labeler) | set(edits))
        out = {"pairs": pairs, "labeled_pairs": len(labeled_pairs),
               "labels": sum(choices[c] for c in VOTES), "skips": choices["skip"],
               "choices": {c: choices[c] for c in CHOICES}, "labelers": len(names),
               "edits": sum(edits.values()),
               "by_labeler": {name: {"labels": sum(per_labeler[name][c] for c in VOTES),
                                     "skips": per_labeler[name]["skip"], "edits": edits[name]}
                              for name in names}}
        if labeler is not None:
            out["you"] = out["by_labeler"].get(labeler, {"labels": 0, "skips": 0, "edits": 0})
        return out

    def agreement(self) -> dict:
        """Agreement between labelers where two or more labeled the same pair (see the module docstring)."""
        votes: dict[int, dict[str, str]] = defaultdict(dict)
        for pair_id, name, choice in self.latest_labels():
            if choice != "skip":
                votes[pair_id][name] = choice
        shared = {pid: v for pid, v in votes.items() if len(v) >= 2}
        pooled: list[tuple[str, str]] = []
        by_raters: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
        for by_name in shared.values():
            for first, second in combinations(sorted(by_name), 2):
                rating = (by_name[first], by_name[second])
                pooled.append(rating)
                by_raters[first, second].append(rating)

        def summary(ratings: list[tuple[str, str]]) -> dict:
            agree = sum(r1 == r2 for r1, r2 in ratings)
            return {"comparisons": len(ratings), "agreements": agree,
                    "percent_agreement": 100 * agree / len(ratings) if ratings else None,
                    "kappa": cohen_kappa(ratings)}

        return {"pairs": len(shared), **summary(pooled),
                "by_labelers": [{"labelers": list(raters), **summary(r)}
                                for raters, r in sorted(by_raters.items())]}

    def preferences(self) -> list[dict]:
        """The pairs whose labels settle a winner (see the module docstring), oldest pair first."""
        tallies: dict[int, Counter] = defaultdict(Counter)
        for pair_id, _, choice in self.latest_labels():
            if choice != "skip":
                tallies[pair_id][choice] += 1
        pairs = {p["id"]: p for p in self.pairs()} if tallies else {}
        out = []
        for pair_id in sorted(tallies):
            tally = tallies[pair_id]
            (winner, top), *rest = tally.most_common()
            if winner == "tie" or (rest and rest[0][1] == top):
                continue
            pair = pairs[pair_id]
            loser = "b" if winner == "a" else "a"
            out.append({"prompt": pair["prompt"], "chosen": pair[f"answer_{winner}"],
                        "rejected": pair[f"answer_{loser}"], "source": "label", "pair_id": pair_id,
                        "votes": {c: tally[c] for c in VOTES},
                        "chosen_from": pair[f"from_{winner}"], "rejected_from": pair[f"from_{loser}"]})
        return out

    def sft_examples(self) -> list[dict]:
        """Each labeler's latest edit of each pair as an OpenAI fine-tuning conversation."""
        rows = self._read("SELECT e.text, p.prompt FROM edits e JOIN pairs p ON p.id = e.pair_id WHERE e.id IN "
                          "(SELECT MAX(id) FROM edits GROUP BY pair_id, labeler) ORDER BY e.id")
        return [{"messages": [*json.loads(r["prompt"]), {"role": "assistant", "content": r["text"]}]} for r in rows]

    def export_preferences(self, path: str | Path) -> int:
        """Write the preferences as JSONL (atomically); the number of lines."""
        return _write_jsonl(path, self.preferences())

    def export_sft(self, path: str | Path) -> int:
        """Write the edits as OpenAI SFT JSONL (atomically); the number of lines."""
        return _write_jsonl(path, self.sft_examples())


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, value, tb) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


def _row_id(value) -> bool:
    """Whether a value can be a row id (SQLite's are 64-bit; a larger int would not even bind)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1 << 63


def _shown(value) -> str:
    """A client's value in an error message, cut short."""
    return repr(value[:40] if isinstance(value, str) else value)[:60]


def _pair_dict(row: sqlite3.Row) -> dict:
    return {"id": row["id"], "prompt": json.loads(row["prompt"]), "answer_a": row["answer_a"],
            "answer_b": row["answer_b"], "from_a": Side(row["model_a"], row["temperature_a"]).as_dict(),
            "from_b": Side(row["model_b"], row["temperature_b"]).as_dict(), "created": row["created"]}


def _write_jsonl(path: str | Path, rows: list[dict]) -> int:
    with atomic_write(Path(path).expanduser(), "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)


def load_preferences(db: str | Path) -> list[dict]:
    """The preference pairs people labeled in a label database: [{"prompt": messages, "chosen",
    "rejected", "source": "label", "pair_id", "votes", "chosen_from", "rejected_from"}]."""
    with LabelStore(db, create=False) as store:
        return store.preferences()
