"""Verbs of the tools: `llmos tools`, `llmos index` and `llmos mcp`.

    llmos tools                                   the tools, their argument schemas, the python sandbox's layers
    llmos tools call calculator '{"expression": "2**64"}'     run one tool as a model would
    llmos index                                   the search store over the Wikipedia leads (default)
    llmos index ~/notes [--out FILE]              ... or over a folder of .txt/.md/.rst/.html files
    llmos mcp [--tools calculator,search]         the tools as an MCP server on stdin/stdout
"""
from __future__ import annotations

import json

from llmos.common import LlmosError


def tool_config_args(p) -> None:
    """Options that say where tools act and what they may do (chat, serve, eval and `tools call`)."""
    g = p.add_argument_group("tools")
    g.add_argument("--workspace", default=".", help="the folder read_file/list_files/write_file stay inside")
    g.add_argument("--index", default="", help="the search store (default: LLMOS_HOME/search/index.sqlite)")
    g.add_argument("--open-hosts", default="", help="comma-separated hosts beyond loopback that `open` may fetch")
    g.add_argument("--allow", default="", help="comma-separated tools whose side effects need no confirmation")
    g.add_argument("--audit-log", default="", help="append every tool call to this JSONL file")


def tool_config(args):
    from llmos.tools.registry import ToolConfig

    def names(text: str) -> tuple[str, ...]:
        return tuple(n.strip() for n in text.split(",") if n.strip())
    return ToolConfig(workspace=args.workspace, index=args.index, open_hosts=names(args.open_hosts),
                      allow=names(args.allow), audit_log=args.audit_log)


def cmd_tools(args):
    from llmos.tools.python_sandbox import describe_layers
    from llmos.tools.registry import Toolbox, available
    if args.action == "list":
        box = Toolbox.build("all", tool_config(args))
        for schema in box.schemas():
            f = schema["function"]
            print(f"{f['name']}: {f['description']}\n  arguments: {json.dumps(f['parameters'])}")
        print(describe_layers())
        return
    if not args.name:
        raise LlmosError(f"say which tool to call: llmos tools call NAME '{{...}}' (tools: {', '.join(available())})")
    try:
        arguments = json.loads(args.arguments or "{}")
    except ValueError as e:
        raise LlmosError(f"the arguments are not JSON ({e}): give an object such as '{{\"expression\": \"1+1\"}}'")
    box = Toolbox.build(args.name, tool_config(args), confirm=ask)
    result = box.call(args.name, arguments)
    print(result.text)
    for i, png in enumerate(result.images, 1):
        path = f"{args.name}_chart_{i}.png"
        with open(path, "wb") as f:
            f.write(png)
        print(f"[chart saved to {path}]")
    if result.error:
        raise SystemExit(1)


def ask(tool, arguments, effect: str) -> bool:
    """The terminal's confirmation of a call with side effects."""
    try:
        answer = input(f"{tool.name} {json.dumps(arguments)[:200]} {effect}. Allow? [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def cmd_index(args):
    from llmos.tools.registry import ToolConfig
    from llmos.tools.search import SearchStore, folder_documents, wikipedia_leads
    out = ToolConfig(index=args.out).index_path()
    docs = folder_documents(args.folder) if args.folder else wikipedia_leads()
    store = SearchStore.build(out, docs)
    print(f"indexed {len(store):,} documents into {out}")


def cmd_mcp(args):
    from llmos.tools.mcp import serve
    from llmos.tools.registry import Toolbox
    serve(Toolbox.build(args.tools, tool_config(args)))


def add_parsers(verbs, fmt) -> None:
    p = verbs.add_parser("tools", help="list the tools (and the sandbox's layers) or call one", formatter_class=fmt)
    p.add_argument("action", nargs="?", choices=("list", "call"), default="list")
    p.add_argument("name", nargs="?", default="", help="call: the tool")
    p.add_argument("arguments", nargs="?", default="", help="call: its arguments, a JSON object")
    tool_config_args(p)
    p.set_defaults(func=cmd_tools)
    p = verbs.add_parser("index", help="build the search store that the search tool reads", formatter_class=fmt)
    p.add_argument("folder", nargs="?", default="", help="index this folder's text files (default: the Wikipedia leads)")
    p.add_argument("--out", default="", help="the store (default: LLMOS_HOME/search/index.sqlite)")
    p.set_defaults(func=cmd_index)
    p = verbs.add_parser("mcp", help="offer llmos's tools as an MCP server on stdin/stdout", formatter_class=fmt)
    p.add_argument("--tools", default="calculator,python,search,open,read_file,list_files",
                   help="the tools offered, comma-separated ('all' adds write_file)")
    tool_config_args(p)
    p.set_defaults(func=cmd_mcp)
