"""The tool registry: each tool is a name, a JSON schema of its arguments and a function.

    box = Toolbox.build("calculator,python,search", ToolConfig(workspace="notes/"))
    box.schemas()                                  # OpenAI `tools` entries, for prompts and the server
    result = box.call("calculator", {"expression": "12345 * 6789"})
    result.text, result.images, result.error       # "83810205", [], False

A call never raises: an unknown tool, arguments that do not match the schema, a refused
confirmation or a tool's own failure all come back as an error result whose text says what was
wrong, so the model reads it and can try again. Every call is appended to the audit log (one JSON
line: time, tool, arguments, outcome, seconds) when the config names one.

Tools with side effects (writing files, reaching hosts beyond loopback) run only when the config
allows them by name (`allow`) or the `confirm` callback says yes (the terminal chat asks the user);
otherwise the model is told the call was declined.

Each tool lives in its own module (calculator.py, python_sandbox.py, search.py, files.py) and
registers a factory here: `factory(config) -> list[Tool]` (search.py offers `search` and `open`).
`box.mount_mcp(command)` adds the tools of an MCP server (llmos/tools/mcp.py).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import jsonschema

from llmos.common import LlmosError, llmos_home


class ToolError(Exception):
    """A tool's refusal or failure that the model should read: the message says what to change."""


@dataclass
class ToolResult:
    text: str
    images: list[bytes] = field(default_factory=list)  # PNG files the tool produced (charts)
    error: bool = False
    provenance: str = ""  # where the text came from when not from the tool itself (the LLM OS marks it)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments object
    run: Callable[[dict], ToolResult | str]
    side_effect: Callable[[dict], str | None] = lambda args: None  # what a call would change, if anything

    def schema(self) -> dict:
        """The OpenAI `tools` entry."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


@dataclass
class ToolConfig:
    """Where tools may act and what they may do without asking."""
    workspace: str = "."  # read_file/list_files/write_file stay inside it
    index: str = ""  # the search store (default LLMOS_HOME/search/index.sqlite; `llmos index` builds it)
    open_hosts: tuple[str, ...] = ()  # hosts beyond loopback that `open` may fetch
    allow: tuple[str, ...] = ()  # tools whose side effects need no confirmation
    audit_log: str = ""  # JSONL of every call ("" = none)
    python_wall_s: float = 10.0
    python_memory_mb: int = 1024

    def index_path(self) -> Path:
        return Path(self.index).expanduser() if self.index else llmos_home() / "search" / "index.sqlite"


FACTORIES: dict[str, Callable[[ToolConfig], list[Tool]]] = {}


def register(*names: str):
    """Decorator for a module's factory; `names` are the tools it returns (for listing and errors)."""
    def add(factory):
        for name in names:
            FACTORIES[name] = factory
        return factory
    return add


def _load_builtin() -> None:
    from llmos.tools import calculator, files, python_sandbox, search  # noqa: F401  (they register)
    from llmos.agent import peripherals  # noqa: F401  (speak, read_image)


def available() -> list[str]:
    _load_builtin()
    return sorted(FACTORIES)


class Toolbox:
    def __init__(self, tools: list[Tool], config: ToolConfig | None = None,
                 confirm: Callable[[Tool, dict, str], bool] | None = None):
        self.tools = {t.name: t for t in tools}
        self.config = config or ToolConfig()
        self.confirm = confirm
        self.calls = 0
        self.servers = []  # mounted MCP servers (llmos/tools/mcp.py)

    @classmethod
    def build(cls, names: str | list[str], config: ToolConfig | None = None, **kw) -> "Toolbox":
        """The named tools ("calculator,python" or a list; "all" for every built-in one)."""
        _load_builtin()
        config = config or ToolConfig()
        wanted = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
        if wanted == ["all"]:
            wanted = sorted(FACTORIES)
        unknown = [n for n in wanted if n not in FACTORIES]
        if unknown:
            raise LlmosError(f"unknown tool(s) {', '.join(unknown)}: choose from {', '.join(sorted(FACTORIES))}")
        tools, built = [], set()
        for name in wanted:
            factory = FACTORIES[name]
            if factory not in built:
                built.add(factory)
                tools += [t for t in factory(config) if t.name in wanted]
        return cls(tools, config, **kw)

    def add(self, tool: Tool) -> None:
        self.tools[tool.name] = tool

    def mount_mcp(self, command: str | list[str]) -> list[str]:
        """Start an MCP server (a command speaking MCP on stdio) and add its tools; their names."""
        from llmos.tools.mcp import MountedServer
        server = MountedServer(command)
        self.servers.append(server)
        added = server.tools()
        for tool in added:
            self.add(tool)
        return [t.name for t in added]

    def close(self) -> None:
        for server in self.servers:
            server.close()
        self.servers = []

    def schemas(self) -> list[dict]:
        return [t.schema() for t in self.tools.values()]

    def call(self, name: str, arguments) -> ToolResult:
        start = time.monotonic()
        result = self._call(name, arguments)
        self.calls += 1
        self._audit(name, arguments, result, time.monotonic() - start)
        return result

    def _call(self, name: str, arguments) -> ToolResult:
        tool = self.tools.get(name)
        if tool is None:
            return ToolResult(f"error: there is no tool named {name!r}; the tools are: "
                              f"{', '.join(self.tools) or 'none'}", error=True)
        if not isinstance(arguments, dict):
            return ToolResult(f"error: {name}'s arguments must be a JSON object, not {type(arguments).__name__}",
                              error=True)
        try:
            jsonschema.validate(arguments, tool.parameters)
        except jsonschema.ValidationError as e:
            where = "/".join(map(str, e.absolute_path)) or "arguments"
            return ToolResult(f"error: bad arguments for {name}: {where}: {e.message}", error=True)
        effect = tool.side_effect(arguments)
        if effect and name not in self.config.allow:
            if self.confirm is None or not self.confirm(tool, arguments, effect):
                return ToolResult(f"error: the call was declined ({effect}); it needs the user's confirmation "
                                  f"or `{name}` in the allowed tools", error=True)
        try:
            out = tool.run(arguments)
        except ToolError as e:
            return ToolResult(f"error: {e}", error=True)
        except Exception as e:  # a tool's bug must not end the conversation: the model is told
            return ToolResult(f"error: {name} failed: {type(e).__name__}: {e}", error=True)
        return out if isinstance(out, ToolResult) else ToolResult(str(out))

    def _audit(self, name: str, arguments, result: ToolResult, seconds: float) -> None:
        if not self.config.audit_log:
            return
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "tool": name, "arguments": arguments,
                 "ok": not result.error, "result": result.text[:500], "images": len(result.images),
                 "seconds": round(seconds, 3)}
        path = Path(self.config.audit_log).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:  # one write per line: lines never interleave
            f.write(json.dumps(entry, default=str) + "\n")
