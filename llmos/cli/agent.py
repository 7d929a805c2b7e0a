"""`llmos os`: the LLM OS in a terminal or a web page; `llmos os-bench`: what its paging buys.

    llmos os --model smollm2-135m-instruct --session alice       # alice's memory, resumed if it exists
    llmos os --endpoint http://127.0.0.1:8000 --api-key K --session work     # any OpenAI-compatible server
    llmos os --model RUN --profile tutor.json --tools calculator,search,subtasks --web 8080
    llmos os-bench --model smollm2-135m-instruct --budget 1024 --histories 20

In the terminal, a line is a turn; a status line follows each reply (RAM used, pages in and out,
page faults). Commands: /inspect (what is in the context window, block by block, with token
counts), /core, /memory QUERY, /doc PATH (a document into archival memory), /image PATH (its text,
by OCR, into the window as untrusted), /summarise PATH... (one sub-task per file, run at once),
/new (a new conversation), /sessions, /quit. A privileged tool call while untrusted text is in the
window asks for a yes first.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from llmos.common import LlmosError

DEFAULT_BUDGET = 2048  # tokens of window when --budget is not given, or the model's whole context if smaller
HELP = """/inspect            what is in the context window, block by block
/core               the core-memory blocks
/memory QUERY       search recall and archival memory
/doc PATH           put a document in archival memory
/image PATH         read an image's text (OCR) into the window, marked untrusted
/summarise PATH...  summarise files at once, one sub-task each, into the window
/new                start a new conversation (memory stays)
/sessions           the saved sessions
/quit               leave (the session is saved as it goes)"""


def build_model(args):
    from llmos.agent.models import EndpointModel, LocalModel
    if bool(args.model) == bool(args.endpoint):
        raise LlmosError("give the model: --model (a run, params file or named model) or --endpoint URL, not both")
    if args.endpoint:
        return EndpointModel(args.endpoint, api_key=args.api_key, model=args.endpoint_model)
    return LocalModel.load(args.model)


def build_kernel(args, model, confirm=None):
    from llmos.agent.kernel import Kernel, KernelConfig
    from llmos.agent.memory import MemoryStore
    from llmos.agent.profile import Profile
    from llmos.cli.tools import tool_config
    from llmos.tools.registry import Toolbox
    profile = Profile.load(args.profile) if args.profile else None
    names = [n for n in (args.tools.split(",") if args.tools else profile.tools if profile else []) if n.strip()]
    config = tool_config(args)
    if profile and profile.allow:
        config.allow = tuple(dict.fromkeys([*config.allow, *profile.allow]))
    toolbox = Toolbox.build([n for n in names if n != "subtasks"], config, confirm=confirm)
    store = MemoryStore.open(args.session)
    if args.semantic:
        store.enable_embeddings()
    budget = (profile.budget if profile and profile.budget else args.budget) or min(DEFAULT_BUDGET, model.context)
    kernel = Kernel(model, store, KernelConfig(budget=budget, paging=not args.no_paging, summary=args.summary,
                                               reply_tokens=args.reply_tokens, summary_tokens=args.summary_tokens,
                                               system_prompt=profile.system_prompt if profile else ""),
                    toolbox=toolbox, confirm=confirm)
    if "subtasks" in names:
        toolbox.add(kernel.subtasks_tool())
    if profile:
        loaded = set(json.loads(store.state("profile.files", "[]")))
        for name in profile.files:
            if name not in loaded:
                kernel.remember(profile.file_path(name).read_text(encoding="utf-8", errors="replace"), name)
                loaded.add(name)
        store.set_state("profile.files", json.dumps(sorted(loaded)))
    return kernel


def ask_yes(tool, arguments, why: str) -> bool:
    answer = input(f"\n{tool.name} {json.dumps(arguments)[:200]}: {why}. Allow? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def print_blocks(kernel) -> None:
    from llmos.agent.kernel import is_untrusted
    blocks = kernel.inspect()
    total = sum(b.tokens for b in blocks)
    for b in blocks:
        flag = " UNTRUSTED" if is_untrusted(b.provenance) else ""
        preview = " ".join(b.text.split())[:70]
        print(f"{b.name:<28} {b.provenance:<11}{flag:<10} {b.tokens:>5} tok  {preview}")
    print(f"{'(blocks)':<28} {'':<21} {total:>5} tok of a {kernel.config.budget}-token budget "
          f"(the chat layout and tool list take the rest of {kernel.used_tokens()})")


def run_command(kernel, line: str) -> bool:
    """Run a /command; False when it is /quit."""
    from llmos.agent.memory import list_sessions
    command, _, rest = line.partition(" ")
    rest = rest.strip()
    if command in ("/quit", "/exit"):
        return False
    if command == "/help":
        print(HELP)
    elif command == "/inspect":
        print_blocks(kernel)
    elif command == "/core":
        for label, value in kernel.store.core().items():
            print(f"<{label}> {value}")
    elif command == "/memory":
        if not rest:
            raise LlmosError("/memory needs a query, e.g. /memory dog's name")
        for m in kernel.store.search(rest, k=8):
            where = "in window" if m.tier == "recall" and m.id in {r.id for r in kernel.resident} else m.tier
            print(f"[{where} #{m.id} {m.role}, {m.provenance}] {m.text[:160]}")
    elif command == "/doc":
        text = _read(rest, "/doc")
        print(f"kept as archival memory #{kernel.remember(text, Path(rest).name)} ({kernel.model.count(text)} tokens)")
    elif command == "/image":
        from llmos.agent.peripherals import read_image
        text = read_image(Path(rest).expanduser()) if rest else _read(rest, "/image")
        kernel.attach(text, "image text", Path(rest).name)
        print(f"read {len(text.split())} words from {rest}; they are in the window, marked untrusted")
    elif command == "/summarise":
        paths = rest.split()
        if not paths:
            raise LlmosError("/summarise needs one or more file paths")
        texts = [_read(p, "/summarise") for p in paths]
        budget_chars = 3 * kernel.config.budget  # each sub-task's context holds its file's start
        summaries = kernel.run_subtasks([f"Summarise this document in two sentences:\n\n{t[:budget_chars]}"
                                         for t in texts], provenance="file")
        for path, summary in zip(paths, summaries):
            print(f"{path}: {summary}")
            kernel.attach(summary, "file", f"summary of {Path(path).name}")
    elif command == "/new":
        kernel.new_conversation()
        print(f"conversation {kernel.conversation}")
    elif command == "/sessions":
        print("\n".join(list_sessions()) or "(none)")
    else:
        raise LlmosError(f"unknown command {command}; /help lists them")
    return True


def _read(path: str, command: str) -> str:
    if not path:
        raise LlmosError(f"{command} needs a file path")
    try:
        return Path(path).expanduser().read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise LlmosError(f"cannot read {path}: {e.strerror}") from None


def cmd_os(args):
    model = build_model(args)
    try:
        kernel = build_kernel(args, model, confirm=ask_yes if not args.web else None)
        if args.web:
            from llmos.agent.web import serve_os
            serve_os(kernel, args.host, args.web)
            return
        repl(kernel)
    finally:
        model.close()


def repl(kernel) -> None:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    print(f"llmos os: session {kernel.store.path.stem}, {kernel.model.name}. /help for commands.", file=sys.stderr)
    print(kernel.status_line(), file=sys.stderr)
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return
        if not line:
            continue
        try:
            if line.startswith("/"):
                if not run_command(kernel, line):
                    return
                continue
            out = kernel.turn(line)
        except LlmosError as e:
            print(f"error: {e}", file=sys.stderr)
            continue
        for call in out.calls:
            print(f"  [{call['name']} {json.dumps(call.get('arguments'))[:120]} -> {call['result'][:160]}]")
        print(out.reply)
        print(f"\033[2m{kernel.status_line()}\033[0m" if sys.stderr.isatty() else kernel.status_line(), file=sys.stderr)


def cmd_os_bench(args):
    from llmos.agent.kernel import KernelConfig
    from llmos.agent.membench import build_histories, plot, run_benchmark
    from llmos.common import llmos_home, write_json
    from llmos.report import markdown_table
    model = build_model(args)
    try:
        histories = build_histories(n=args.histories, seed=args.seed)
        config = KernelConfig(budget=args.budget, summary=args.summary, reply_tokens=args.reply_tokens,
                              summary_tokens=args.summary_tokens)
        report = run_benchmark(model, histories, config, progress=lambda s: print(s, file=sys.stderr, flush=True))
    finally:
        model.close()
    report["seed"] = args.seed
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(args.model or args.endpoint).name)
    out = Path(args.out).expanduser() if args.out else llmos_home() / "os" / f"bench-{slug}-{args.budget}"
    write_json(out / "report.json", report)
    png = plot(report, out / "memory-bench.png")
    modes = report["modes"]
    abilities = list(modes["paging"]["by_ability"])
    rows = []
    for name, mode in modes.items():
        low, high = mode["interval"]
        rows.append([name, f"{mode['accuracy']:.1%} [{low:.1%}, {high:.1%}]",
                     *(f"{mode['by_ability'][a]['accuracy']:.1%}" for a in abilities),
                     mode["page_faults"], mode["evidence_retrieved"], mode["pages_in"], mode["pages_out"]])
    print(markdown_table(["mode", "accuracy", *abilities, "page faults", "evidence paged in", "pages in", "pages out"],
                         rows))
    chance = report["chance"]
    print(f"{report['questions']} questions, {report['histories']} histories, a {args.budget}-token window; chance: "
          f"{chance['uniform_guess']:.1%} (a guess from each answer pool), {chance['always_abstain']:.1%} "
          f"(always \"I don't know\")")
    print(f"report: {out / 'report.json'}; plot: {png}")


def model_args(p) -> None:
    p.add_argument("--model", default="", help="a run directory, params file or named model")
    p.add_argument("--endpoint", default="", help="an OpenAI-compatible server's URL instead of --model")
    p.add_argument("--api-key", default="", help="the endpoint's API key")
    p.add_argument("--endpoint-model", default="", help="the endpoint's model name (default: its first)")
    p.add_argument("--summary", default="notes", choices=("notes", "model"),
                   help="the running summary of paged-out turns: the user's own sentences, or written by the model")
    p.add_argument("--reply-tokens", type=int, default=96, help="window room kept for the reply (small contexts: less)")
    p.add_argument("--summary-tokens", type=int, default=96, help="the running summary's bound")


def add_parsers(verbs, fmt) -> None:
    from llmos.cli.tools import tool_config_args
    p = verbs.add_parser("os", help="the LLM OS: a model whose context window pages to memory, with tools",
                         formatter_class=fmt)
    model_args(p)
    p.add_argument("--session", default="default", help="the memory's name: the same name resumes it")
    p.add_argument("--budget", type=int, default=0, help="tokens of context window the kernel may fill "
                                                          f"(default: {DEFAULT_BUDGET}, or the model's context if smaller)")
    p.add_argument("--tools", default="", help="comma-separated tools beside the memory tools "
                                               "(calculator, python, search, open, read_file, write_file, "
                                               "speak, read_image, subtasks, ...)")
    p.add_argument("--profile", default="", help="a profile file (system prompt, tools, files)")
    p.add_argument("--no-paging", action="store_true", help="drop the oldest turns instead of paging them")
    p.add_argument("--semantic", action="store_true", help="rank memory search with sentence embeddings too "
                                                           "(pip install 'llmos[os]')")
    p.add_argument("--web", type=int, default=0, metavar="PORT", help="serve the LLM OS page on this port")
    p.add_argument("--host", default="127.0.0.1", help="with --web: the address to listen on")
    tool_config_args(p)
    p.set_defaults(func=cmd_os)
    p = verbs.add_parser("os-bench", help="the memory benchmark: accuracy with paging and without, same budget",
                         formatter_class=fmt)
    model_args(p)
    p.add_argument("--budget", type=int, default=1024, help="tokens of context window (the RAM)")
    p.add_argument("--histories", type=int, default=20, help="users' histories (8 questions each)")
    p.add_argument("--seed", type=int, default=0, help="which histories (the prompt wording was chosen on seeds 1-2)")
    p.add_argument("--out", default="", help="folder for report.json and the PNG (default LLMOS_HOME/os/bench-...)")
    p.set_defaults(func=cmd_os_bench)
