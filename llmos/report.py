"""Plots and the run report: metrics.jsonl -> loss.png, and a markdown report.md from sections.

    records = read_metrics(run / "metrics.jsonl")    # survives a last line torn by a kill
    plot_metrics(run / "metrics.jsonl", run / "loss.png")
    write_report(run / "report.md", "llmos speedrun", [("Config", "..."), ("Losses", "...")])
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from llmos.common import LlmosError, atomic_write, os_error_message


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl. A last line cut short (a kill or a full disk mid-write) is
    dropped with a warning; a bad line before it is an error naming it."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except OSError as e:
        raise LlmosError(f"could not read {os_error_message(e, path)}") from None
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if any(rest.strip() for rest in lines[lineno:]):
                raise LlmosError(f"{path}:{lineno} is not a JSON line: the metrics file was damaged; "
                                 "delete the line (or the file) and run again") from None
            print(f"warning: {path}:{lineno}: dropped a line cut short (the run was killed mid-write)",
                  file=sys.stderr)
    return records


def plot_metrics(metrics_path: str | Path, png_path: str | Path) -> Path | None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path) if Path(metrics_path).is_file() else []
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(*zip(*train), label="train loss", lw=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(Path(metrics_path).parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_write(png_path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return Path(png_path)


def write_report(path: str | Path, title: str, sections: list[tuple[str, str]]) -> Path:
    text = f"# {title}\n\n" + "".join(f"## {name}\n\n{body.strip()}\n\n" for name, body in sections)
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
