"""The Model Context Protocol both ways: llmos's tools as an MCP server, and MCP servers as tools.

    llmos mcp --tools calculator,python,search        # an MCP server on stdin/stdout (for any MCP client)
    box.mount_mcp("llmos mcp --tools search")          # a server's tools join a Toolbox (also --mcp CMD)
    llmos serve --model M --tools calculator --mcp "npx some-mcp-server"

Serving: each tool is listed with its JSON schema; a call runs through the Toolbox (argument checks,
audit log, confirmation policy) and comes back as text content, plus image content for charts, with
`isError` set for an error result. Read-only tools carry MCP's `readOnlyHint`.

Mounting: the command is started as a subprocess speaking MCP on stdio (the `mcp` package's client);
a background thread keeps the session and its event loop, and the Toolbox's calls (from any thread)
are sent through it. A mounted tool is a side effect (it is someone else's code) unless the server
marks it read-only, so it needs the user's confirmation or `--allow NAME`. A server that does not
start, or answers with an error, becomes a clear LlmosError or an error result.
"""
from __future__ import annotations

import asyncio
import base64
import shlex
import threading
from contextlib import AsyncExitStack

from llmos.common import LlmosError
from llmos.tools.registry import Tool, Toolbox, ToolResult

READ_ONLY = {"calculator", "python", "search", "read_file", "list_files"}  # python: contained, nothing on the host
CONNECT_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 120.0


async def serve_stdio(box: Toolbox) -> None:
    import mcp.types as types
    from mcp.server.lowlevel import Server
    from mcp.server.stdio import stdio_server

    async def list_tools(ctx, params) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[
            types.Tool(name=t.name, description=t.description, input_schema=t.parameters,
                       annotations=types.ToolAnnotations(read_only_hint=t.name in READ_ONLY))
            for t in box.tools.values()])

    async def call_tool(ctx, params) -> types.CallToolResult:
        result = await asyncio.to_thread(box.call, params.name, params.arguments or {})
        content = [types.TextContent(type="text", text=result.text)]
        content += [types.ImageContent(type="image", data=base64.b64encode(png).decode(), mime_type="image/png")
                    for png in result.images]
        return types.CallToolResult(content=content, is_error=result.error)

    server = Server("llmos", on_list_tools=list_tools, on_call_tool=call_tool)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def serve(box: Toolbox) -> None:
    asyncio.run(serve_stdio(box))


class MountedServer:
    """An MCP server in a subprocess, its session kept by a thread of its own."""

    def __init__(self, command: str | list[str]):
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        if not argv:
            raise LlmosError("an MCP server command is empty: give the program that starts it")
        self.argv = argv
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="llmos-mcp", daemon=True)
        self.thread.start()
        self.stack = AsyncExitStack()
        try:
            self.listed = self._wait(self._connect(), CONNECT_TIMEOUT_S)
        except Exception as e:
            self.close()
            raise LlmosError(f"could not start the MCP server {' '.join(argv)!r}: {type(e).__name__}: {e}") from None

    def _wait(self, coroutine, timeout: float):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _connect(self):
        from mcp import ClientSession, StdioServerParameters
        from mcp.client.stdio import stdio_client
        read, write = await self.stack.enter_async_context(
            stdio_client(StdioServerParameters(command=self.argv[0], args=self.argv[1:])))
        self.session = await self.stack.enter_async_context(ClientSession(read, write))
        await self.session.initialize()
        return (await self.session.list_tools()).tools

    def call(self, name: str, arguments: dict) -> ToolResult:
        try:
            result = self._wait(self.session.call_tool(name, arguments), CALL_TIMEOUT_S)
        except Exception as e:  # a server that died or hung: the model is told
            return ToolResult(f"error: the MCP server {self.argv[0]} failed: {type(e).__name__}: {e}", error=True)
        texts = [c.text for c in result.content if getattr(c, "type", "") == "text"]
        images = [base64.b64decode(c.data) for c in result.content
                  if getattr(c, "type", "") == "image" and getattr(c, "mime_type", "") == "image/png"]
        return ToolResult("\n".join(texts), images=images, error=bool(result.is_error))

    def tools(self) -> list[Tool]:
        out = []
        for listed in self.listed:
            read_only = bool(listed.annotations and listed.annotations.read_only_hint)
            effect = None if read_only else f"runs {listed.name} of the MCP server {self.argv[0]}"
            out.append(Tool(listed.name, listed.description or "", dict(listed.input_schema or {"type": "object"}),
                            lambda args, name=listed.name: self.call(name, args),
                            side_effect=lambda args, effect=effect: effect))
        return out

    def close(self) -> None:
        try:
            self._wait(self.stack.aclose(), 10)
        except Exception:  # the server may be gone already; the loop stops regardless
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
