"""Tools a model calls in its reply: one module per tool, registered by name (registry.py).

calculator.py (exact arithmetic), python_sandbox.py (contained code, charts), search.py (`search` and
`open` over an FTS5 store), files.py (workspace files), mcp.py (the tools as an MCP server, and MCP
servers as tools). The engine runs the calls (llmos/infer/tooluse.py); docs/tools.md has the whole picture.
"""
