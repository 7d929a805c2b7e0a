"""File tools, confined to one workspace folder: `list_files`, `read_file` and `write_file`.

    box = Toolbox.build("read_file,list_files", ToolConfig(workspace="~/notes"))
    box.call("read_file", {"path": "todo.md"})

A path is taken relative to the workspace. Absolute paths and `..` are refused, and the resolved
path (every symlink followed) must still lie inside the workspace's resolved path, so a link that
points outside is refused too. Reads stop at MAX_READ bytes and listings at MAX_ENTRIES names.
`write_file` changes the disk, so it runs only when allowed in the config or confirmed by the user;
it writes atomically (temp file + rename).
"""
from __future__ import annotations

import os
from pathlib import Path

from llmos.common import atomic_write
from llmos.tools.registry import Tool, ToolConfig, ToolError, register

MAX_READ = 64_000  # bytes returned by read_file
MAX_ENTRIES = 200  # names returned by list_files
MAX_WRITE = 1_000_000  # bytes write_file accepts


def inside(workspace: str | os.PathLike, relative: str) -> Path:
    """The real path of `relative` in `workspace`, or ToolError when it would leave it."""
    root = Path(workspace).expanduser().resolve()
    if not root.is_dir():
        raise ToolError(f"the workspace {root.name or root} is not a folder")
    if not isinstance(relative, str) or "\x00" in relative:
        raise ToolError("the path must be text")
    rel = Path(relative or ".")
    if rel.is_absolute() or ".." in rel.parts:
        raise ToolError(f"{relative!r} leaves the workspace: give a path inside it, without '..' or a leading '/'")
    target = (root / rel).resolve()
    if target != root and root not in target.parents:
        raise ToolError(f"{relative!r} leads outside the workspace (through a symbolic link)")
    return target


def read_file(workspace: str, path: str) -> str:
    target = inside(workspace, path)
    if not target.is_file():
        raise ToolError(f"there is no file {path!r} in the workspace (list_files shows what there is)")
    with open(target, "rb") as f:
        data = f.read(MAX_READ + 1)
    text = data[:MAX_READ].decode("utf-8", errors="replace")
    return text + (f"\n[... cut at {MAX_READ:,} bytes]" if len(data) > MAX_READ else "")


def list_files(workspace: str, path: str = ".") -> str:
    target = inside(workspace, path)
    if not target.is_dir():
        raise ToolError(f"there is no folder {path!r} in the workspace")
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in target.iterdir())
    shown = names[:MAX_ENTRIES]
    more = f"\n[... and {len(names) - MAX_ENTRIES} more]" if len(names) > MAX_ENTRIES else ""
    return "\n".join(shown) + more if names else "(empty folder)"


def write_file(workspace: str, path: str, content: str) -> str:
    data = content.encode("utf-8")
    if len(data) > MAX_WRITE:
        raise ToolError(f"the content has {len(data):,} bytes; write_file takes at most {MAX_WRITE:,}")
    target = inside(workspace, path)
    if target.is_dir():
        raise ToolError(f"{path!r} is a folder")
    with atomic_write(target) as f:
        f.write(data)
    return f"wrote {len(data):,} bytes to {path}"


PATH = {"type": "string", "description": "a path relative to the workspace"}


@register("read_file", "list_files", "write_file")
def tools(config: ToolConfig) -> list[Tool]:
    ws = config.workspace
    return [
        Tool("list_files", "List a folder of the workspace (folders end with /).",
             {"type": "object", "properties": {"path": PATH}, "additionalProperties": False},
             lambda a: list_files(ws, a.get("path", "."))),
        Tool("read_file", "Read a text file of the workspace.",
             {"type": "object", "properties": {"path": PATH}, "required": ["path"], "additionalProperties": False},
             lambda a: read_file(ws, a["path"])),
        Tool("write_file", "Write a text file in the workspace (asks the user first).",
             {"type": "object", "properties": {"path": PATH, "content": {"type": "string"}},
              "required": ["path", "content"], "additionalProperties": False},
             lambda a: write_file(ws, a["path"], a["content"]),
             side_effect=lambda a: f"writes the file {a.get('path')!r} in the workspace"),
    ]
