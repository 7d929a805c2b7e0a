"""Continuous batching for many clients: one engine thread per model, requests from any thread.

    sched = Scheduler(Engine(model, tok, max_batch=16, prefix_cache=PrefixCache(256 << 20)), max_queue=64)
    sched.start()
    seqs = sched.submit(prompt_ids, params, n=2, listener=wake)   # QueueFull when the queue is full
    ...                                                            # wake(seq) after each step that changed seq
    seqs[0].cancel()                                               # its row is freed at the next step
    sched.stop()                                                   # finish what is running, then end

The engine thread loops: take newly submitted groups into the engine's queue, run one engine step
(admit and prefill, decode every running row), then call each changed sequence's listener. It sleeps
when there is nothing to do. Requests beyond `max_queue` waiting groups are refused at once with an
estimate of when to retry, so a flood costs no memory. `stop()` refuses new work and returns once
every admitted sequence has finished. Counters for /metrics live here and in the engine.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Callable

from llmos.infer.engine import Constraint, Engine, Sequence
from llmos.infer.sampling import SamplingParams

if TYPE_CHECKING:
    from llmos.infer.tooluse import ToolUse

Listener = Callable[[Sequence], None]


class QueueFull(Exception):
    def __init__(self, queued: int, retry_after: int):
        super().__init__(f"the server is busy: {queued} requests are waiting; retry in {retry_after} s")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    pass


class Scheduler:
    def __init__(self, engine: Engine, max_queue: int = 64):
        self.engine, self.max_queue = engine, max_queue
        self._incoming: deque[list[Sequence]] = deque()
        self._listeners: dict[int, tuple[Sequence, Listener | None, int, str | None]] = {}  # id -> (seq, fn, seen tokens, seen finish)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="llmos-engine", daemon=True)
        self.requests_refused = 0
        self.seconds_per_sequence = 1.0  # running mean, for Retry-After

    def start(self) -> "Scheduler":
        self._thread.start()
        return self

    @property
    def queued(self) -> int:
        return len(self._incoming) + len(self.engine.waiting)

    @property
    def running(self) -> int:
        return len(self.engine.running)

    def submit(self, prompt: list[int], params: SamplingParams, n: int = 1,
               constraints: list[Constraint | None] | None = None, deadline: float | None = None,
               listener: Listener | None = None, tools: "ToolUse | None" = None) -> list[Sequence]:
        """Queue n samples of a prompt (their tool calls run by `tools`, when given); LlmosError for a
        bad prompt, QueueFull when busy."""
        if self._stopping:
            raise ShuttingDown("the server is shutting down: it finishes what runs and takes no new requests")
        group = self.engine.make_group(prompt, params, n, constraints, deadline)
        for seq in group if tools is not None else []:
            tools.attach(seq)
        with self._lock:
            if self.queued >= self.max_queue:
                self.requests_refused += 1
                waves = self.queued / max(1, self.engine.max_batch) + 1
                raise QueueFull(self.queued, max(1, math.ceil(waves * self.seconds_per_sequence)))
            for seq in group:
                seq.submitted = time.monotonic()
                self._listeners[seq.id] = (seq, listener, 0, None)
            self._incoming.append(group)
        self._wake.set()
        return group

    def cancel(self, seqs: list[Sequence]) -> None:
        for seq in seqs:
            seq.cancel()
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Take no new requests, let the admitted ones finish, then end the engine thread."""
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        engine = self.engine
        while True:
            with self._lock:
                while self._incoming:
                    engine.waiting.append(self._incoming.popleft())
            if not engine.has_work:
                if self._stopping:
                    return
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            engine.step()
            self._notify()

    def _notify(self) -> None:
        with self._lock:
            changed = []
            for seq_id, (seq, listener, seen, finish) in list(self._listeners.items()):
                if len(seq.tokens) != seen or seq.finish_reason != finish:
                    changed.append((seq, listener))
                    self._listeners[seq_id] = (seq, listener, len(seq.tokens), seq.finish_reason)
                if seq.finished:
                    del self._listeners[seq_id]
                    elapsed = time.monotonic() - seq.submitted
                    self.seconds_per_sequence += 0.1 * (elapsed - self.seconds_per_sequence)
        for seq, listener in changed:
            if listener is not None:
                listener(seq)
