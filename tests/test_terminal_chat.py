"""`llmos chat` driven through a pseudo-terminal, as a person would use it: it answers and returns to
the prompt; replies stream in pieces; the history feeds each reply, /clear forgets it and a long
conversation drops its oldest exchanges; commands check their input; Ctrl-C stops a reply without
ending the session; `-p` prints exactly the reply for scripts; a model that cannot chat is a clear
error.

The model is tiny and random, saved with the fixture tokenizer (which has llmos's chat tokens). Its
output weights for the stop tokens are zeroed, so greedy decoding never ends a reply early (among
~500 random logits some are always above 0): every reply runs to --max-tokens, which makes lengths
and timings predictable.
"""
from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import time

import pexpect
import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from conftest import ROOT, llmos_cmd, subprocess_env
from llmos.chat import ChatFormat
from llmos.infer.engine import generate, stream_text
from llmos.infer.sampling import SamplingParams
from llmos.load import load_model
from llmos.model import ModelConfig, Transformer
from llmos.params import save_params
from llmos.terminal_chat import Conversation
from llmos.tokenizer import Tokenizer

PROMPT = "you> "
QUESTION = "What is the capital of France?"
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")  # the dim status lines' colour codes, readline's modes


def random_chat_model(tok: Tokenizer, max_seq_len: int) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                      max_seq_len=max_seq_len, tie_embeddings=False)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight[ChatFormat(tok).stop_ids] = 0
    return model


@pytest.fixture(scope="module")
def tok(tokenizer_path):
    return Tokenizer.load(tokenizer_path)


@pytest.fixture(scope="module")
def model_file(tok, tmp_path_factory):
    return save_params(tmp_path_factory.mktemp("chat") / "chat.llmos", random_chat_model(tok, 2048), tok)


@pytest.fixture(scope="module")
def short_context_model_file(tok, tmp_path_factory):
    return save_params(tmp_path_factory.mktemp("chat") / "short.llmos", random_chat_model(tok, 64), tok)


def screen(raw: str) -> str:
    """What the terminal shows, as text: colour codes gone, the tty's CR LF back to LF."""
    return ANSI.sub("", raw).replace("\r\n", "\n")


def default_sigint() -> None:
    """Ctrl-C as a person's terminal delivers it: a suite started in the background by a
    non-interactive shell (`make test &`) runs with SIGINT ignored, which children inherit, and a
    Python started that way never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def chat_session(model, *args: str):
    """A `llmos chat` on a pseudo-terminal, greedy, waiting at its first prompt; killed if a test fails."""
    child = pexpect.spawn(sys.executable, ["-m", "llmos.cli", "chat", "--model", str(model), "--temperature", "0",
                                           *args],
                          cwd=str(ROOT), env=subprocess_env(TERM="xterm"), encoding="utf-8", codec_errors="replace",
                          timeout=60, dimensions=(24, 1000), preexec_fn=default_sigint)
    try:
        child.expect_exact(PROMPT)
        yield child
    finally:
        child.close(force=True)


def say(child, line: str) -> str:
    """Type a line and wait for the next prompt; what came back, without the echoed line."""
    child.sendline(line)
    child.expect_exact(PROMPT)
    echo, _, answer = screen(child.before).partition("\n")
    assert echo.endswith(line)
    return answer


def reply_to(child, line: str) -> str:
    answer = say(child, line)
    assert answer.endswith("\n\n"), answer  # the reply, then a blank line before the prompt
    return answer[:-2]


def leave(child, how: str = "/exit") -> None:
    child.sendeof() if how == "eof" else child.sendline(how)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_answers_uses_the_history_and_clear_forgets_it(model_file):
    with chat_session(model_file, "--max-tokens", "20") as child:
        first = reply_to(child, QUESTION)
        assert first.strip()
        with_history = reply_to(child, QUESTION)  # the model now also sees the first exchange
        assert with_history.strip() and with_history != first
        assert "[conversation cleared]" in say(child, "/clear")
        assert reply_to(child, QUESTION) == first
        assert "[system prompt set; conversation cleared]" in say(child, "/system You answer in one word.")
        assert reply_to(child, QUESTION) not in (first, with_history)
        leave(child)


def test_one_shot_prompt_prints_exactly_the_reply(model_file):
    model, tok, info = load_model(model_file)
    fmt = ChatFormat(tok, info["chat_template"])
    prompt = fmt.render_prompt([{"role": "user", "content": QUESTION}])
    expected = "".join(stream_text(tok, generate(model, prompt, SamplingParams(max_tokens=30, temperature=0, stop_ids=list(fmt.stop_ids)))))
    command = llmos_cmd("chat", "--model", str(model_file), "--temperature", "0", "--max-tokens", "30")
    for args, stdin in ((["-p", QUESTION], b""), (["-p", "-"], QUESTION.encode())):
        done = subprocess.run(command + args, input=stdin, capture_output=True, env=subprocess_env(), timeout=60)
        assert done.returncode == 0, done.stderr.decode()
        assert done.stdout.decode() == expected + "\n"  # bytes as they are: no prompt, no status lines
        assert done.stderr == b""


def test_replies_stream_in_pieces(model_file):
    """The reply's first text shows up long before it is complete: over most of the time from Enter
    to the next prompt (all of it is sampling 300 tokens), text is already on the screen."""
    with chat_session(model_file, "--max-tokens", "300") as child:
        sent = time.monotonic()
        child.sendline(QUESTION)
        arrivals = []  # (time, text on the screen after the echoed line so far)
        raw = ""
        while not arrivals or PROMPT not in arrivals[-1][1]:
            raw += child.read_nonblocking(size=100_000, timeout=60)
            arrivals.append((time.monotonic(), screen(raw).partition("\n")[2]))
        first_text = next(t for t, shown in arrivals if shown.strip())
        prompt_back = arrivals[-1][0]
        assert prompt_back - first_text > 0.5 * (prompt_back - sent), (sent, first_text, prompt_back)
        assert len({shown for _, shown in arrivals if shown.strip()}) >= 3  # several pieces
        leave(child, "eof")


def test_commands_check_their_input(model_file):
    with chat_session(model_file, "--max-tokens", "10") as child:
        help_text = say(child, "/help")
        for command in ("/clear", "/system", "/temperature", "/help", "/exit", "/quit", "Ctrl-C"):
            assert command in help_text
        assert "/temperature needs a number >= 0 (0: greedy), not 'abc'" in say(child, "/temperature abc")
        assert "/temperature needs a number" in say(child, "/temperature -1")
        assert "[temperature 0]" in say(child, "/temperature")  # unchanged by the bad values
        assert "unknown command /frobnicate: /help lists the commands" in say(child, "/frobnicate now")
        child.sendintr()  # at the prompt: a hint, not an exit
        child.expect_exact(PROMPT)
        assert "use /exit or Ctrl-D to leave" in screen(child.before)
        assert reply_to(child, QUESTION).strip()
        leave(child, "/quit")


def test_ctrl_c_stops_a_reply_and_the_session_goes_on(model_file):
    with chat_session(model_file, "--max-tokens", "1500") as child:  # a reply of ~10 s unless stopped
        child.sendline(QUESTION)
        child.expect_exact(QUESTION + "\r\n")
        child.expect(r"\S")  # the reply has begun
        child.sendintr()
        child.expect_exact("[reply stopped]")
        child.expect_exact(PROMPT)
        assert child.isalive()
        assert "[temperature 0]" in say(child, "/temperature")
        leave(child)


def test_interrupted_reply_stays_in_the_history(model_file):
    model, tok, info = load_model(model_file)
    chat = Conversation(model, ChatFormat(tok), "", SamplingParams(temperature=0.0, top_k=50, top_p=0.95), max_tokens=50)
    shown = []

    def write_then_interrupt(piece: str) -> None:
        shown.append(piece)
        if len(shown) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        chat.reply(QUESTION, write_then_interrupt)
    assert chat.history == [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "".join(shown)}]


def test_a_seed_makes_every_reply_reproducible(model_file):
    model, tok, _ = load_model(model_file)
    chat = Conversation(model, ChatFormat(tok), "", SamplingParams(temperature=1.0), max_tokens=20)

    def fresh_reply(seed: int) -> str:
        chat.clear()
        chat.sampling.seed = seed
        pieces = []
        chat.reply(QUESTION, pieces.append)
        return "".join(pieces)

    assert fresh_reply(3) == fresh_reply(3) != fresh_reply(4)


def test_a_long_conversation_drops_its_oldest_exchanges(short_context_model_file):
    """Each exchange lengthens the prompt, so with a 64-token context and 20-token replies the oldest
    exchanges must go after a few turns; a message that cannot fit at all is refused."""
    with chat_session(short_context_model_file, "--max-tokens", "20") as child:
        assert "dropped" not in say(child, "Hello there")
        for turn in range(2, 9):
            answer = say(child, "Hello there")
            if "[dropped the oldest" in answer:
                break
        else:
            pytest.fail("eight exchanges fit a 64-token context: the history is not in the prompt")
        assert "[dropped the oldest 1 exchange to fit the model's context of 64 tokens]" in answer
        assert answer.endswith("\n\n") and answer.count("\n") > 2  # and the reply still came
        assert "with --max-tokens 20 that exceeds the model's context of 64 tokens" in say(child, "word " * 60)
        assert say(child, "Hello there").strip()
        leave(child)


def test_a_model_that_cannot_chat_is_a_clear_error(tmp_path):
    hf = HFTokenizer(models.BPE())  # byte-level BPE without llmos's chat tokens, and no chat template
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(["plain text, no chat"] * 10, trainer=trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = Tokenizer(hf)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, max_seq_len=64)
    path = save_params(tmp_path / "base.llmos", Transformer(cfg), tok)
    done = subprocess.run(llmos_cmd("chat", "--model", str(path), "-p", QUESTION), capture_output=True, text=True,
                          env=subprocess_env(), timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("llmos chat: error: this tokenizer has no llmos chat tokens"), done.stderr
    assert "cannot chat" in done.stderr and "Traceback" not in done.stderr


def test_default_reply_length_fits_any_context(short_context_model_file, capsys, monkeypatch):
    """Without --max-tokens a reply may use what the context leaves: on a 64-token model (the tiny
    speedrun's) `chat -p` answers instead of refusing a default made for bigger models, and a turn
    whose history leaves less than a quarter of the context drops the oldest exchanges."""
    done = subprocess.run(llmos_cmd("chat", "--model", str(short_context_model_file), "-p", QUESTION),
                          capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert done.returncode == 0 and done.stdout.strip(), done.stderr[-2000:]
    model, tok, _ = load_model(short_context_model_file)
    chat = Conversation(model, ChatFormat(tok), "", SamplingParams(temperature=0.0))
    prompt, generated = chat._prompt(QUESTION), []

    def counted(*args, **kwargs):
        for token in generate(*args, **kwargs):
            generated.append(token)
            yield token

    monkeypatch.setattr("llmos.terminal_chat.generate", counted)
    chat.reply(QUESTION, lambda piece: None)  # this model never stops by itself: the reply fills the context
    assert len(generated) == 64 - len(prompt)
    chat.reply("And of Spain?", lambda piece: None)
    assert "[dropped the oldest 1 exchange to fit the model's context of 64 tokens]" in capsys.readouterr().err
    assert [m["content"] for m in chat.history if m["role"] == "user"] == ["And of Spain?"]
