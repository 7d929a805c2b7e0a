"""Start `llmos serve`: load each model into its own engine and run the app under uvicorn.

    llmos serve --model runs/speedrun-cpu --model smol=smollm2-135m-instruct --port 8000
    llmos serve --model m.llmos --host 0.0.0.0 --api-key "$KEY"     # reachable beyond this machine

A model is addressed in the API by NAME when given as NAME=REF, else by REF as written. The server
binds to 127.0.0.1 unless told otherwise, and warns when it listens beyond loopback without a key.
SIGTERM (or Ctrl-C) stops taking connections, lets the requests in flight finish, then exits.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from llmos.common import LlmosError

DEFAULT_MAX_LEN = 4096  # positions per sequence: the KV cache holds max_batch of them


def parse_model_specs(specs: list[str]) -> dict[str, str]:
    """["smol=smollm2-135m-instruct", "runs/x"] -> {"smol": "smollm2-135m-instruct", "runs/x": "runs/x"}."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, ref = spec.partition("=")
        if not sep or not name or "/" in name or os.path.exists(spec):
            name, ref = spec, spec
        if not ref:
            raise LlmosError(f"--model {spec!r}: give a model reference after NAME=")
        if name in out:
            raise LlmosError(f"--model: the name {name!r} is given twice: use NAME=REF to tell them apart")
        out[name] = ref
    return out


def load_served_models(specs: dict[str, str], max_batch: int, max_len: int, prefix_cache_mb: int,
                       max_queue: int, weights: str | None = None, speculate: str = "lookup",
                       draft: str | None = None, compile: bool = False) -> dict:
    from llmos.chat import ChatFormat
    from llmos.infer.engine import Engine
    from llmos.infer.prefix_cache import PrefixCache
    from llmos.infer.scheduler import Scheduler
    from llmos.infer.speculate import DraftModel, PromptLookup
    from llmos.load import load_model
    from llmos.model import count_params
    from llmos.serve.app import ServedModel
    served = {}
    for name, ref in specs.items():
        model, tok, info = load_model(ref, weights=weights, compile=compile)
        speculator = None
        if draft is not None:
            speculator = DraftModel(load_model(draft, weights=weights)[0])
        elif speculate == "lookup":
            speculator = PromptLookup()
        try:
            fmt, fmt_error = ChatFormat(tok, info.get("chat_template", "")), ""
        except LlmosError as e:
            fmt, fmt_error = None, str(e)
        cache = PrefixCache(prefix_cache_mb << 20) if prefix_cache_mb > 0 else None
        engine = Engine(model, tok, max_batch=max_batch, max_len=min(max_len, model.cfg.max_seq_len),
                        prefix_cache=cache, speculator=speculator, compile=compile)
        served[name] = ServedModel(name, tok, info, Scheduler(engine, max_queue=max_queue), fmt, fmt_error)
        print(f"llmos serve: {name}: {count_params(model.cfg) / 1e6:.1f}M parameters ({info.get('weights', 'f32')} "
              f"weights{', served as ' + weights if weights else ''}), {engine.max_len} positions per sequence, "
              f"{max_batch} sequences at once, speculative decoding: "
              f"{'draft model ' + draft if draft else speculate}" + ("" if fmt else f" (completions only: {fmt_error})"),
              file=sys.stderr, flush=True)
    return served


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", required=True, metavar="[NAME=]REF",
                   help="a model to serve (repeat for several): run directory, .llmos file, .pt checkpoint or "
                        "named model; NAME is its id in the API (default: REF as written)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on (0: any free one)")
    p.add_argument("--api-key", default=os.environ.get("LLMOS_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 and /metrics (default: $LLMOS_API_KEY)")
    p.add_argument("--max-batch", type=int, default=16, help="sequences decoded together per model")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting for a slot before 429s")
    p.add_argument("--max-len", type=int, default=DEFAULT_MAX_LEN,
                   help="positions per sequence (prompt + reply), at most the model's context")
    p.add_argument("--prefix-cache-mb", type=int, default=256, help="memory for the KV of recent prompts")
    p.add_argument("--no-prefix-cache", action="store_true", help="prefill every prompt in full")
    p.add_argument("--request-timeout", type=float, default=600.0, help="seconds a request may run")
    p.add_argument("--max-body-mb", type=float, default=4.0, help="largest request body")
    from llmos.cli import add_inference_args
    add_inference_args(p, speculate_default="lookup")
    p.add_argument("--draft-model", metavar="REF", help="speculate with this small model (same tokenizer) instead")
    p.add_argument("--image-origin", action="append", default=[], metavar="URL",
                   help="an origin the chat page may show images from (repeat; default: only this server)")
    p.add_argument("--tools", default="", metavar="NAMES",
                   help="tools the server runs in replies when a request brings none, comma-separated: "
                        "calculator, python, search, open, read_file, list_files, write_file, speak, read_image, or 'all'")
    p.add_argument("--max-tool-calls", type=int, default=4, help="tool calls per reply at most")
    p.add_argument("--mcp", action="append", default=[], metavar="COMMAND",
                   help="mount the tools of an MCP server started by this command (repeat for several)")
    from llmos.cli.tools import tool_config_args
    tool_config_args(p)


def server_toolbox(args: argparse.Namespace):
    """The tools of --tools and --mcp (None without either). The server has no one to confirm a side
    effect: those tools run only when --allow names them. The python tool's layers are printed."""
    if not args.tools and not args.mcp:
        return None
    from llmos.cli.tools import tool_config
    from llmos.tools.registry import Toolbox
    if args.max_tool_calls < 1:
        raise LlmosError(f"--max-tool-calls must be at least 1, not {args.max_tool_calls}")
    box = Toolbox.build(args.tools, tool_config(args))
    for command in args.mcp:
        box.mount_mcp(command)
    print(f"llmos serve: tools {', '.join(box.tools)}; side effects allowed for: "
          f"{', '.join(box.config.allow) or 'none (--allow NAMES)'}", file=sys.stderr)
    if "python" in box.tools:
        from llmos.tools.python_sandbox import describe_layers
        print(describe_layers(), file=sys.stderr, flush=True)
    return box


def run_server(args: argparse.Namespace) -> None:
    import uvicorn

    from llmos.serve.app import ServerConfig, create_app
    for name, value, low in (("--max-batch", args.max_batch, 1), ("--max-queue", args.max_queue, 1),
                             ("--max-len", args.max_len, 2), ("--port", args.port, 0)):
        if value < low:
            raise LlmosError(f"{name} must be at least {low}, not {value}")
    if args.port > 65535:
        raise LlmosError(f"--port must be at most 65535, not {args.port}")
    if args.request_timeout <= 0 or args.max_body_mb <= 0:
        raise LlmosError("--request-timeout and --max-body-mb must be positive")
    specs = parse_model_specs(args.model)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"llmos serve: warning: listening on {args.host} without --api-key: anyone who can reach this "
              "machine can use the models", file=sys.stderr)
    models = load_served_models(specs, args.max_batch, args.max_len,
                                0 if args.no_prefix_cache else args.prefix_cache_mb, args.max_queue,
                                weights=args.weights, speculate=args.speculate, draft=args.draft_model,
                                compile=args.compile)
    config = ServerConfig(api_key=args.api_key, image_origins=args.image_origin,
                          max_body_bytes=int(args.max_body_mb * (1 << 20)), request_timeout_s=args.request_timeout,
                          toolbox=server_toolbox(args), max_tool_calls=args.max_tool_calls)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    print(f"llmos serve: http://{args.host}:{args.port}/ (chat page), /v1 (OpenAI API); Ctrl-C stops",
          file=sys.stderr, flush=True)
    uvicorn.run(create_app(models, config), host=args.host, port=args.port, access_log=False,
                log_level="warning", timeout_graceful_shutdown=args.request_timeout)
