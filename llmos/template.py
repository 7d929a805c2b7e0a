"""Chat templates come with model files, so they are untrusted code: compile and render them with limits.

    template = compile_template(text)      # LlmosError if it is not valid Jinja (or runs away compiling)
    text = render_template(template, messages=[...], add_generation_prompt=True, bos_token="<s>")

Templates render in Jinja's immutable sandbox (no attribute writes, no unsafe calls), as
transformers' `apply_chat_template` does, with `tojson` and `raise_exception` as Hugging Face
templates expect. On top of that a template gets TEMPLATE_TIME_LIMIT_S seconds, enforced by a
watchdog thread that raises into the rendering thread, whichever thread that is (signal.alarm
reaches only the main thread; a server renders in workers), and no value it builds (`*`, `+`, `**`,
`~`, a call or a filter) nor its output may exceed TEMPLATE_MAX_CHARS characters (or items;
integers TEMPLATE_MAX_INT_BITS bits), checked before `*` and `**` compute (one step could ask for
gigabytes) and after the others. A template past a limit, or one whose own code fails (a
TemplateError, 1/0, a wrong type), is an LlmosError naming the limit or the fault.
"""
from __future__ import annotations

import ctypes
import functools
import json
import queue
import threading
import time
from typing import Callable, TypeVar

import jinja2
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmos.common import LlmosError

TEMPLATE_TIME_LIMIT_S = 2.0  # real templates render a conversation in milliseconds
# A context of MAX_CONTEXT (2^20) tokens is ~4M characters of text: real renderings stay far below.
TEMPLATE_MAX_CHARS = 16_000_000
TEMPLATE_MAX_INT_BITS = 4096
T = TypeVar("T")


def compile_template(text: str) -> jinja2.Template:
    env = _BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
    env.filters.update({name: _bounded_filter(f) for name, f in env.filters.items()})
    env.globals["raise_exception"] = _raise_from_template
    try:  # compiling folds constant expressions, so it runs template code too
        return _within_time_limit(lambda: env.from_string(text))
    except jinja2.TemplateError as e:
        raise LlmosError(f"the model's chat template is not valid Jinja: {e}") from None


def render_template(template: jinja2.Template, **context) -> str:
    def render() -> str:
        pieces, size = [], 0
        for piece in template.generate(**context):
            size += len(piece)
            if size > TEMPLATE_MAX_CHARS:
                raise LlmosError(f"the model's chat template rendered more than the limit of "
                                 f"{TEMPLATE_MAX_CHARS:,} characters (TEMPLATE_MAX_CHARS): it is refused")
            pieces.append(piece)
        return "".join(pieces)

    try:
        return _within_time_limit(render)
    except LlmosError:
        raise
    except Exception as e:  # any fault of the template's own code: a TemplateError, 1/0, a wrong type
        raise LlmosError(f"the model's chat template failed on this conversation "
                         f"({type(e).__name__}: {e})") from None


def _raise_from_template(message: str):
    raise LlmosError(f"the model's chat template refused the conversation: {message}")


def _check_length(length: int) -> None:
    if length > TEMPLATE_MAX_CHARS:
        raise LlmosError(f"the model's chat template built a value of {length:,} characters or items, over the "
                         f"limit of {TEMPLATE_MAX_CHARS:,} (TEMPLATE_MAX_CHARS): it is refused")


def _bounded(value):
    """`value`, unless it is a string, sequence or integer past the template limits."""
    if isinstance(value, (str, bytes, list, tuple, dict)):
        _check_length(len(value))
    if isinstance(value, int) and value.bit_length() > TEMPLATE_MAX_INT_BITS:
        raise LlmosError(f"the model's chat template built an integer of {value.bit_length():,} bits, over the "
                         f"limit of {TEMPLATE_MAX_INT_BITS:,} (TEMPLATE_MAX_INT_BITS): it is refused")
    return value


def _bounded_filter(f):
    @functools.wraps(f)  # keeps Jinja's pass_context / pass_eval_context marks
    def bounded(*args, **kwargs):
        return _bounded(f(*args, **kwargs))
    return bounded


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles `a ~ b` so that the joined string goes through the size check too."""

    def visit_Concat(self, node, frame) -> None:
        self.write("environment.bounded(")
        super().visit_Concat(node, frame)
        self.write(")")


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with every operator, call and `~` that can build a large value checked:
    `*` and `**` before they compute (one step could ask for gigabytes), the others after."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})  # also keeps Jinja from folding them at compile time

    @staticmethod
    def bounded(value):
        return _bounded(value)

    def call_binop(self, context, operator: str, left, right):
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, bytes, list, tuple)) and isinstance(times, int):
                    _check_length(len(seq) * times)
        if (operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1
                and right * abs(left).bit_length() > TEMPLATE_MAX_INT_BITS):
            raise LlmosError(f"the model's chat template computes {left} ** {right}, an integer over the limit of "
                             f"{TEMPLATE_MAX_INT_BITS:,} bits (TEMPLATE_MAX_INT_BITS): it is refused")
        return _bounded(super().call_binop(context, operator, left, right))

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's own signature)
        return _bounded(super().call(__context, __obj, *args, **kwargs))


class _RenderTimeout(BaseException):
    """Raised into the rendering thread by its watchdog; a BaseException, so that no `except
    Exception` in Jinja or in the template's callbacks swallows it."""


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> None:
    """Make `exc` raise in thread `thread_id` at its next bytecode (None: withdraw one not yet raised)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(exc) if exc is not None else None)


class _Watchdog:
    """One daemon thread for every renderer: it raises _RenderTimeout into each thread whose deadline
    passes (an asynchronous exception, which reaches any thread, unlike signal.alarm). The exception
    lands between two bytecodes of the renderer, even inside library code; so the renderer, while one
    may be pending, touches only C-level primitives (a Lock, a SimpleQueue), never Python-level ones
    (Condition, Event, Timer.cancel) that such an exception could leave half-acquired."""

    def __init__(self):
        self._lock = threading.Lock()
        self._deadlines: dict[int, float] = {}  # thread id -> time.monotonic() deadline
        self._fired: set[int] = set()
        self._wakeups: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def run(self, work: Callable[[], T], seconds: float) -> T:
        """work(), or _RenderTimeout raised inside it after `seconds`. Every moment the exception
        could arrive, until it is withdrawn, lies inside the caller's `try`."""
        thread_id = threading.get_ident()
        try:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._watch, name="llmos-template-watchdog", daemon=True)
                    self._thread.start()
                self._fired.discard(thread_id)
                self._deadlines[thread_id] = time.monotonic() + seconds
            self._wakeups.put(None)  # the watchdog recomputes its next deadline
            return work()
        finally:
            with self._lock:
                self._deadlines.pop(thread_id, None)
                if thread_id in self._fired:  # the work may have ended before the exception was raised
                    self._fired.discard(thread_id)
                    _set_async_exc(thread_id, None)

    def _watch(self) -> None:
        timeout = None  # idle: sleep until a render starts
        while True:
            try:
                self._wakeups.get(timeout=timeout)
            except queue.Empty:
                pass
            with self._lock:
                now = time.monotonic()
                for thread_id, deadline in list(self._deadlines.items()):
                    if deadline <= now:
                        del self._deadlines[thread_id]
                        self._fired.add(thread_id)
                        _set_async_exc(thread_id, _RenderTimeout)
                timeout = max(0.0, min(self._deadlines.values()) - now) if self._deadlines else None


_WATCHDOG = _Watchdog()


def _within_time_limit(work: Callable[[], T]) -> T:
    """work(), or an LlmosError if it runs longer than TEMPLATE_TIME_LIMIT_S, in any thread."""
    try:
        return _WATCHDOG.run(work, TEMPLATE_TIME_LIMIT_S)
    except _RenderTimeout:
        raise LlmosError(f"the model's chat template took longer than the limit of {TEMPLATE_TIME_LIMIT_S:g} s "
                         "(TEMPLATE_TIME_LIMIT_S) to render: it is refused") from None
